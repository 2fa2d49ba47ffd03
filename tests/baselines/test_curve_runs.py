"""A curve through ``connect`` (docs/baselines.md, "Curves through connect"): ``connect --method bezier`` (and
autoneb, slerp, weight-matching) writes a run directory through the one run preparation, certified by the trained
curves' certifier, that evaluate, export and push accept; a trained curve resumes after a kill bit for bit."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import Killed, connect_killed_after, state_equal
from hub_fixtures import tree_digest

import hf_llpf
from hf_llpf.baselines.pathdir import state_of
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import load_endpoint

GENEROUS = 0.5  # above the pair's ends (about 0.02), reached by the bent curve within a few rounds
FAST = {"points": 5, "settings": {"lr": 0.05}}


def _points(path) -> list[dict]:
    return [path.state_dict_at(i) for i in range(len(path))]


def _same_points(a, b) -> bool:
    pa, pb = _points(a), _points(b)
    return len(pa) == len(pb) and all(
        x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(pa, pb)
    )


def _saves(run_dir) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoint").iterdir())


@pytest.mark.slow  # a whole CLI connect, evaluate and export: the curve runner itself is in the fast tests below
def test_connect_method_bezier_from_the_cli_writes_a_run_that_evaluate_export_and_push_accept(
    small_cnn_pair, tmp_path, capsys
):
    from hf_llpf.cli import main
    from hf_llpf.hub.push import published_files

    run = tmp_path / "bz"
    argv = ["connect", *map(str, small_cnn_pair), "--method", "bezier", "--data", "digits", "--out", str(run),
            "--points", "5", "--certify-round", "20", "bezier.lr=0.05",
            f"certify.loss_ceiling={GENEROUS}"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"path written to {run} (bezier): 5 points at fixed t, 20 SGD iterations; ")
    line = f"training loss <= {GENEROUS} over all 1437 training examples (exact; final check"
    assert out[-1].startswith(f"certified: every saved point and every segment at t = 0.5 has mean eval-mode {line}")
    path = hf_llpf.RunPath(run)
    cert = path.summary["run"]["certification"]
    assert cert["certified"] is True and cert["ceiling"] == GENEROUS and cert["ceiling_source"] == "set"
    assert [r["sgd_iters"] for r in cert["rounds"]] == [0, 20] and cert["checked_points"] == 5
    assert path.config["method"] == "bezier" and path.config["baseline"]["bezier"]["lr"] == 0.05
    assert path.config["baseline"]["certify"] == {"round_iters": 20, "cap": 3000}
    assert json.loads((run / "endpoints.json").read_text())["command"].startswith("hf-llpf ")  # sys.argv's
    # The same data config on both ends and the same format as the endpoints: the ends are the endpoints, exactly.
    ends = [state_of(load_endpoint(p).model) for p in small_cnn_pair]
    assert state_equal(path.state_dict_at(0), ends[0]) and state_equal(path.state_dict_at(-1), ends[1])
    assert main(["evaluate", str(run), "--train-subset", "200", "--continuity", "0", "--no-progress"]) == 0
    assert "verdict: certified: " in capsys.readouterr().out
    assert (run / "plots").is_dir() and "linear" in json.loads((run / "path_metrics.json").read_text())
    assert main(["export", str(run), "--out", str(tmp_path / "mid")]) == 0
    assert (tmp_path / "mid" / "model.safetensors").is_file() and (tmp_path / "mid" / "config.json").is_file()
    files, _ = published_files(run, repo_id="org/bezier-path")
    assert "README.md" in files and any(f.startswith("points/t_000002/") for f in files)
    assert not any(f.startswith("checkpoint") for f in files)  # the resume state is never published
    before = tree_digest(run)
    assert main(["push", str(run), "org/bezier-path"]) == 2  # offline (conftest): refused before anything is sent
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err and tree_digest(run) == before


@pytest.mark.slow  # certification rounds on the whole training set; the fixed-budget resume tests below stay fast
def test_a_bezier_run_killed_between_rounds_resumes_bit_for_bit(small_cnn_pair, digits, tmp_path, monkeypatch):
    kw = {"config": {"loss_ceiling": 0.1}, "certify": {"round_iters": 20, "cap": 60}, "method": "bezier", **FAST}
    whole = hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "whole", **kw)
    cert = whole.summary["run"]["certification"]
    assert [r["sgd_iters"] for r in cert["rounds"]] == [0, 20, 40, 60]  # three rounds of training: three saves
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, *small_cnn_pair, digits, run_dir=run, **kw) == 2
    assert not (run / "path_metrics.json").exists() and _saves(run)[0] == "state.json"
    resumed = hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, exist="resume", **kw)
    assert _same_points(whole, resumed)
    again = resumed.summary["run"]["certification"]
    for key in ("certified", "stopped", "uncertified", "full_set_max", "point_sha256", "probes", "final_check"):
        if key == "final_check":
            assert {k: v for k, v in again[key].items() if k != "seconds"} == {
                k: v for k, v in cert[key].items() if k != "seconds"
            }
        else:
            assert again.get(key) == cert.get(key), key
    assert [(r["sgd_iters"], r["highest"]) for r in again["rounds"]] == [
        (r["sgd_iters"], r["highest"]) for r in cert["rounds"]
    ]
    assert resumed.summary["run"]["bezier"] == whole.summary["run"]["bezier"]  # the losses' tail was carried
    # A resume of the finished run changes nothing.
    before = tree_digest(run)
    hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, exist="resume", **kw)
    assert tree_digest(run) == before
    # Started with a lower cap and killed after its first round, resumed with the cap raised: the run started with it.
    low = {**kw, "certify": {"round_iters": 20, "cap": 40}}
    assert connect_killed_after(1, monkeypatch, *small_cnn_pair, digits, run_dir=tmp_path / "low", **low) == 1
    raised = hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "low", exist="resume", **kw)
    assert _same_points(whole, raised) and raised.config["baseline"]["certify"]["cap"] == 60
    rounds = raised.summary["run"]["certification"]["rounds"]
    assert [(r["sgd_iters"], r["highest"]) for r in rounds] == [(r["sgd_iters"], r["highest"]) for r in cert["rounds"]]
    changed = {"changed": {"baseline.certify.cap": [40, 60]}, "at_sgd_iters": 20}
    assert raised.summary["run"]["resumed_with"] == [changed]


@pytest.mark.parametrize("method", ["bezier", "autoneb"])
def test_a_fixed_budget_curve_killed_between_chunks_resumes_bit_for_bit(method, small_cnn_pair, digits, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    own = {"bezier": {"iters": 120, "lr": 0.05}, "autoneb": {"iters": 90, "cycles": 3, "lr": 0.05}}[method]
    kw = {"config": {"loss_ceiling": None}, "method": method, "points": 5, "settings": own}
    whole = hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "whole", **kw)
    run = tmp_path / "killed"
    assert connect_killed_after(1, monkeypatch, *small_cnn_pair, digits, run_dir=run, **kw) == 1
    resumed = hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, exist="resume", **kw)
    assert _same_points(whole, resumed)
    assert resumed.summary["run"]["sgd_iters"] == whole.summary["run"]["sgd_iters"] > 0
    assert resumed.summary["run"][method] == whole.summary["run"][method]
    assert "certification" not in resumed.summary["run"]


def test_python_batches_resume_by_replaying_what_was_drawn(small_cnn_pair, digits, tmp_path, monkeypatch):
    batches = list(digits.loader("train", batch_size=32, seed=3))[:7]  # a list: the same batches every pass
    kw = {"config": {"loss_ceiling": None}, "method": "bezier", "points": 3, "settings": {"iters": 110}}
    whole = hf_llpf.connect(*small_cnn_pair, batches, run_dir=tmp_path / "whole", **kw)
    assert whole.config["data"] is None  # Python batches: the run says it needs data= to be evaluated
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, *small_cnn_pair, batches, run_dir=run, **kw) == 2
    assert _same_points(whole, hf_llpf.connect(*small_cnn_pair, batches, run_dir=run, exist="resume", **kw))


def test_a_closed_form_curve_rewrites_what_a_kill_left_and_skips_a_finished_run(small_cnn_pair, digits, tmp_path,
                                                                                monkeypatch):  # fmt: skip
    from hf_llpf.run.rundir import RunWriter

    whole = hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "whole", method="slerp", points=5)
    assert _saves(tmp_path / "whole")[0] == "state.json"  # the done checkpoint: a resume has nothing to do
    real, written = RunWriter.write_point, []

    def write_point(self, tick, *a, **k):
        if tick == 2:
            raise Killed
        written.append(tick)
        return real(self, tick, *a, **k)

    monkeypatch.setattr(RunWriter, "write_point", write_point)
    with pytest.raises(Killed):
        hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "killed", method="slerp", points=5)
    monkeypatch.setattr(RunWriter, "write_point", real)
    assert written == [0, 1] and not (tmp_path / "killed" / "checkpoint").exists()
    resumed = hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "killed", method="slerp", points=5,
                              exist="resume")  # fmt: skip
    assert _same_points(whole, resumed) and resumed.summary["run"]["method"] == "slerp"
    before = tree_digest(tmp_path / "killed")
    hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "killed", method="slerp", points=5, exist="resume")
    assert tree_digest(tmp_path / "killed") == before


def test_a_resume_with_other_settings_or_method_is_refused(small_cnn_pair, digits, tmp_path):
    from hf_llpf.errors import RunDirectoryError

    run = tmp_path / "s"
    hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, method="slerp", points=3)
    before = tree_digest(run)
    with pytest.raises(ConfigError) as err:
        hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, method="slerp", points=4, exist="resume")
    said = (f"--resume: baseline.points was 3 in {run}, now 4 (a curve resumes with its settings; it may raise only "
            "baseline.certify.cap, baseline.bezier.iters)")  # fmt: skip
    assert err.value.problems == [said]
    with pytest.raises(RunDirectoryError, match="holds a 'slerp' run, this one is 'weight-matching'"):
        hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, method="weight-matching", points=3, exist="resume")
    assert tree_digest(run) == before


def test_curve_options_are_refused_for_llpf_and_checked_before_any_work(small_cnn_pair, tmp_path):
    with pytest.raises(ConfigError, match=r"method='auto': settings=, points= and certify= are a curve method's"):
        hf_llpf.connect(*small_cnn_pair, "digits", run_dir=tmp_path / "x", points=5)
    with pytest.raises(ConfigError) as err:  # before the endpoints load
        hf_llpf.connect("no/such", "no/such", run_dir=tmp_path / "x", method="bezier", points=1,
                        settings={"lr": -1.0})  # fmt: skip
    assert err.value.problems == ["points=1: must be a whole number of at least 2 (the two ends)"]
    with pytest.raises(ConfigError, match="bezier lr=-1.0: must be > 0"):
        hf_llpf.connect("no/such", "no/such", run_dir=tmp_path / "x", method="bezier", settings={"lr": -1.0})
    assert not (tmp_path / "x").exists()


def test_a_finished_curve_says_so_before_the_preparation(small_cnn_pair, digits, tmp_path, monkeypatch, caplog):
    import hf_llpf.baselines.curve_run as curve_run

    real, prepared = curve_run.prepare_run, []

    def spy(*args, **kwargs):
        prepared.append(1)
        return real(*args, **kwargs)

    bezier = {"config": {"loss_ceiling": None}, "method": "bezier", "points": 3, "settings": {"iters": 20}}
    for name, data, kw in (("bz", digits, bezier), ("sl", "digits", {"method": "slerp", "points": 3})):
        run = tmp_path / name
        hf_llpf.connect(*small_cnn_pair, data, run_dir=run, **kw)
        before, prepared[:] = tree_digest(run), []
        monkeypatch.setattr(curve_run, "prepare_run", spy)
        with caplog.at_level(logging.INFO, logger="hf_llpf"):
            path = hf_llpf.connect(*small_cnn_pair, data, run_dir=run, exist="resume", **kw)
        assert prepared == [] and len(path) == 3 and tree_digest(run) == before
        assert f"{run} is already complete; nothing to resume" in caplog.text
        caplog.clear()
        # What cannot be told without loading (the endpoints swapped here) goes through the preparation and its check.
        with pytest.raises(ConfigError, match="endpoint A is not the one this run started with"):
            hf_llpf.connect(*reversed(small_cnn_pair), data, run_dir=run, exist="resume", **kw)
        assert prepared == [1] and tree_digest(run) == before
        monkeypatch.setattr(curve_run, "prepare_run", real)


def test_a_resume_may_raise_the_budget_and_continues_as_one_run_with_it(small_cnn_pair, digits, tmp_path, monkeypatch):
    kw = {"config": {"loss_ceiling": None}, "method": "bezier", "points": 3}
    whole = hf_llpf.connect(*small_cnn_pair, digits, run_dir=tmp_path / "whole", settings={"iters": 130}, **kw)
    run = tmp_path / "killed"
    killed = connect_killed_after(1, monkeypatch, *small_cnn_pair, digits, run_dir=run, settings={"iters": 80}, **kw)
    assert killed == 1
    with pytest.raises(ConfigError) as err:  # lower: the training may have spent it already
        hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, exist="resume", settings={"iters": 40}, **kw)
    assert err.value.problems == [f"--resume: baseline.bezier.iters was 80 in {run}, now 40 (it may only be raised: "
                                  "the training may have spent it already)"]  # fmt: skip
    resumed = hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, exist="resume", settings={"iters": 130}, **kw)
    # The chunks after the first are those of the run started with the raised budget: the same points, bit for bit.
    assert _same_points(whole, resumed) and resumed.summary["run"]["sgd_iters"] == 130
    assert resumed.config["baseline"]["bezier"]["iters"] == 130
    assert resumed.summary["run"]["resumed_with"] == [
        {"changed": {"baseline.bezier.iters": [80, 130]}, "at_sgd_iters": 50}
    ]
    # A finished run has no training left to continue: a raised budget is refused, nothing is written.
    before = tree_digest(run)
    with pytest.raises(ConfigError, match=r"is complete, so a raised limit cannot continue it \(baseline.bezier"):
        hf_llpf.connect(*small_cnn_pair, digits, run_dir=run, exist="resume", settings={"iters": 200}, **kw)
    assert tree_digest(run) == before
