"""The repair's headroom: the repair first aims below the ceiling, relaxing to it as the budget is spent (all
of it under a set ceiling, its first quarter under the auto one)."""

import pytest
import torch
from test_certify import QUICK, own_probe_loss, probe_examples

import hf_llpf
from hf_llpf.algorithms.certify import Certifier, headroom_span, resolve_headroom
from hf_llpf.config import HEADROOM_AUTO, HEADROOM_AUTO_SPAN, HEADROOM_SET, ConnectConfig
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run import read_metrics

torch.set_num_threads(1)


def test_auto_headroom_is_larger_under_a_set_ceiling_than_under_the_auto_one():
    assert resolve_headroom(ConnectConfig(loss_ceiling=0.05)) == HEADROOM_SET == 0.3
    assert resolve_headroom(ConnectConfig(loss_ceiling=1)) == HEADROOM_SET  # an int ceiling is a set one too
    assert resolve_headroom(ConnectConfig()) == HEADROOM_AUTO == 0.1  # loss_ceiling: auto
    assert resolve_headroom(ConnectConfig(repair_headroom=0.35)) == 0.35
    assert resolve_headroom(ConnectConfig(loss_ceiling=0.05, repair_headroom=0)) == 0.0


@pytest.mark.parametrize("value", [1.0, -0.1, "more"])
def test_a_headroom_outside_0_1_is_refused_naming_the_field(value, small_cnn_pair, digits, tmp_path):
    with pytest.raises(ConfigError, match=r"repair\.headroom"):  # given flat, named as a recipe writes it
        hf_llpf.connect(*small_cnn_pair, digits, config={"repair_headroom": value}, run_dir=tmp_path / "r",
                        progress=False)  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_the_target_relaxes_linearly_from_the_headroom_to_the_ceiling():
    config = ConnectConfig(loss_ceiling=0.05, repair_budget=100, repair_headroom=0.5)
    cert = Certifier(object(), 0.05, config, [0.01, 0.002])  # the room is 0.05 - 0.01 = 0.04
    assert cert.target(0) == pytest.approx(0.03)
    assert cert.target(50) == pytest.approx(0.04)
    assert cert.target(100) == cert.target(150) == 0.05
    no_budget = Certifier(object(), 0.05, ConnectConfig(loss_ceiling=0.05, repair_budget=0), [0.01])
    assert no_budget.target(0) == 0.05  # nothing to spend: the ceiling is the target at once


def test_under_the_auto_ceiling_the_target_relaxes_over_the_first_quarter_of_the_budget():
    config = ConnectConfig(repair_budget=100)  # loss_ceiling: auto, repair_headroom: auto
    cert = Certifier(object(), 0.0422, config, [0.0022, 0.0021])  # the room is 0.1 * (0.0422 - 0.0022) = 0.004
    assert headroom_span(config) == 100 * HEADROOM_AUTO_SPAN == 25
    assert cert.target(0) == pytest.approx(0.0382)
    assert cert.target(12.5) == pytest.approx(0.0402)
    assert cert.target(25) == cert.target(100) == 0.0422
    assert headroom_span(ConnectConfig(loss_ceiling=0.05, repair_budget=100)) == 100  # a set ceiling: all of it


def _run(small_cnn_pair, digits, tmp_path, headroom):
    ends = [own_probe_loss(load_endpoint(p).model, *probe_examples(digits)) for p in small_cnn_pair]
    config = {**QUICK, "loss_ceiling": max(ends) + 0.04, "repair_headroom": headroom}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / f"h{headroom}", progress=False)
    return path, read_metrics(path.root)["ticks"], max(ends)


@pytest.mark.slow
def test_each_point_repaired_within_its_budget_is_under_its_target(small_cnn_pair, digits, tmp_path):
    path, ticks, top = _run(small_cnn_pair, digits, tmp_path, 0.5)
    cert = path.summary["run"]["certification"]
    ceiling, budget = cert["ceiling"], ConnectConfig().repair_budget
    assert cert["certified"]
    repaired = [r for r in ticks if 0 < r["iters"] < budget]
    assert len(repaired) >= 3
    for r in ticks:
        if r["iters"] < budget:  # the target after the tick's repair (a longer repair only relaxes it)
            target = ceiling - 0.5 * (ceiling - top) * (1 - r["iters"] / budget)
            assert r["probe_loss"] <= target * (1 + 1e-6), r
    # Without the headroom some repaired point stops above where the headroom would have kept it.
    _, plain, _ = _run(small_cnn_pair, digits, tmp_path, 0.0)
    above = [r for r in plain if 0 < r["iters"] < budget and r["probe_loss"] > ceiling - 0.5 * (ceiling - top)]
    assert above
    assert max(r["probe_loss"] for r in repaired) < max(r["probe_loss"] for r in plain if r["iters"] > 0)
