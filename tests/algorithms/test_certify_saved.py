"""Certified segments join *saved* points (``save_every`` > 1), and a walk to the origin is certified too."""

import copy

import pytest
import torch
from conftest import connect_killed_after, linear_m2m, state_equal
from test_certify import QUICK, own_probe_loss, probe_examples

import hf_llpf
from hf_llpf.algorithms.certify import Certifier
from hf_llpf.api import walk_to_origin
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run import read_metrics

torch.set_num_threads(1)

EVERY3 = {**QUICK, "step_r": 0.25, "save_every": 3}


def midpoint_loss_between(template, sa, sb, x, y):
    """The probe loss at the midpoint of two saved points, measured here (floating tensors averaged)."""
    mid = copy.deepcopy(template)
    mid.load_state_dict({k: (sa[k] + sb[k]) / 2 if sa[k].is_floating_point() else sb[k] for k in sa})
    return own_probe_loss(mid, x, y)


def assert_saved_segments_certified(path, template, x, y):
    """Every saved point and every segment between consecutive saved points is under the run's ceiling, and
    each point's recorded segment loss is the midpoint of *its* segment (from the previous saved point)."""
    cert = path.summary["run"]["certification"]
    ceiling = cert["ceiling"]
    assert cert["certified"] and cert["uncertified"] == [], cert["uncertified"]
    for i in range(len(path)):
        assert own_probe_loss(path.model_at(i), x, y) <= ceiling * (1 + 1e-5), f"point {i}"
    for i in range(1, len(path)):
        mine = midpoint_loss_between(template, path.state_dict_at(i - 1), path.state_dict_at(i), x, y)
        assert mine <= ceiling * (1 + 1e-5), f"segment {i - 1}-{i}: {mine} > {ceiling}"
        assert path.metrics[i]["segment_loss"] == pytest.approx(mine, rel=1e-4, abs=1e-6), f"segment {i - 1}-{i}"


@pytest.mark.slow
def test_with_save_every_the_segments_between_saved_points_are_certified(small_cnn_pair, digits, tmp_path):
    path = hf_llpf.connect(*small_cnn_pair, digits, config=EVERY3, run_dir=tmp_path / "r", progress=False)
    a, b = (load_endpoint(p).model for p in small_cnn_pair)
    assert path.summary["run"]["ticks"] > len(path) >= 3  # some ticks' points are not saved
    assert_saved_segments_certified(path, a, *probe_examples(digits))
    assert state_equal(path.state_dict_at(0), a.state_dict())
    assert state_equal(path.state_dict_at(-1), b.state_dict())


@pytest.mark.slow
def test_a_long_segment_from_the_last_saved_point_saves_the_previous_tick(
    small_cnn_pair, digits, tmp_path, monkeypatch
):
    real, calls = Certifier.midpoint_loss, {"n": 0}

    def second_segment_fails(self, model, previous, **kwargs):
        if kwargs.get("first") is not None:  # the far-segment check after a repair round: not the certificate
            return real(self, model, previous, **kwargs)
        calls["n"] += 1  # the 2nd probe is tick 2's segment, from point 0 (tick 1 was not saved)
        return 10.0 if calls["n"] == 2 else real(self, model, previous, **kwargs)

    monkeypatch.setattr(Certifier, "midpoint_loss", second_segment_fails)
    config = {**EVERY3, "save_every": 1000}  # only stage boundaries, inserted points and the ends are saved
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    ticks = [r["tick"] for r in path.metrics]
    assert ticks[:2] == [0, 1]  # tick 1's point joined the path; the tick was retried from it
    assert path.metrics[1]["probe_loss"] == read_metrics(path.root)["ticks"][0]["probe_loss"]
    a = load_endpoint(small_cnn_pair[0]).model
    assert_saved_segments_certified(path, a, *probe_examples(digits))


@pytest.mark.slow
def test_a_run_with_save_every_killed_mid_way_resumes_bit_identically(small_cnn_pair, digits, tmp_path, monkeypatch):
    config = {**EVERY3, "checkpoint_every": 2}  # checkpoints fall between saved points
    whole = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    connect_killed_after(3, monkeypatch, *small_cnn_pair, digits, config=config, run_dir=run, progress=False)
    resumed = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=run, exist="resume", progress=False)
    assert resumed.ticks == whole.ticks
    assert [r["tick"] for r in resumed.metrics] == [r["tick"] for r in whole.metrics]
    for i in range(len(whole)):
        assert state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)), i


def test_a_walk_to_the_origin_is_certified(small_cnn_pair, digits, tmp_path):
    config = {"save_every": 2, "m2o": {"step_a": 0.1, "max_ticks": 12, "target_variance": 0.5}}
    walked = walk_to_origin(small_cnn_pair[0], digits, config=config, run_dir=tmp_path / "w", progress=False)
    cert = walked.summary["run"]["certification"]
    x, y = probe_examples(digits)
    a = load_endpoint(small_cnn_pair[0]).model
    assert cert["endpoint_probe_losses"] == pytest.approx([own_probe_loss(a, x, y)], rel=1e-5)
    assert cert["ceiling"] > cert["endpoint_probe_losses"][0] and len(walked) >= 3
    assert_saved_segments_certified(walked, a, x, y)
    assert all(r["probe_loss"] is not None for r in read_metrics(walked.root)["ticks"])


def test_a_walk_with_a_ceiling_below_its_endpoint_is_refused_before_writing(small_cnn_pair, digits, tmp_path):
    from hf_llpf.errors import ConfigError

    config = {"loss_ceiling": 1e-6, "m2o": {"target_variance": 0.5}}
    with pytest.raises(ConfigError, match=r"loss_ceiling=1e-06 is below endpoint A's own probe loss 0\.0\d+"):
        walk_to_origin(small_cnn_pair[0], digits, config=config, run_dir=tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()


def test_a_point_kept_above_the_ceiling_can_be_inserted_later():
    # A tick whose point was kept above the ceiling has no segment figure in its row (nothing was measured); saving
    # that point later, when its successor's segment from an older saved point is above, must not need one.
    from hf_llpf.run.records import TickRecord

    method, _, _ = linear_m2m({"save_every": 3})
    row = TickRecord(1, 0, 0.5, 4, 4, dist_a=0.1, dist_b=0.2, probe_loss=0.9, step_scale=1.0).row()
    assert "segment_loss" not in row
    method.state.ticks.append(row)
    method.state.tick = 1
    method.insert_previous_point()
    point = method.state.points[-1]
    assert (point["tick"], point["probe_loss"], point["segment_loss"], point["sgd_iters"]) == (1, 0.9, None, 4)
