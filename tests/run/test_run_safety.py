"""Nothing lost or mixed: --overwrite, the run lock, resume checks, kills at every checkpoint, the divergence
guard's advice, `train`'s output folder, temporary files, non-finite endpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from conftest import connect_killed_after, state_equal

import hf_llpf
from hf_llpf.cli import main
from hf_llpf.config import TrainRecipe
from hf_llpf.errors import ConfigError, CorruptCheckpointError, DivergenceError, RunDirectoryError
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run.lock import LOCK, RunLock
from hf_llpf.run.resume import read_checkpoint
from hf_llpf.training.endpoint import train_endpoint

torch.set_num_threads(1)

FAST = {
    "step_r": 0.25,
    "min_iters": 1,
    "max_iters": 2,
    "checkpoint_every": 1,
    "arrival_tol": 0.05,
    "loss_ceiling": None,  # run-directory mechanics: plain LLPF (certified resume: test_certify.py)
}


@pytest.fixture()
def pair(small_cnn_pair, tmp_path):
    """Private copies of the two endpoints, in one parent folder with an unrelated file."""
    parent = tmp_path / "P"
    for name, src in zip("AB", small_cnn_pair, strict=True):
        shutil.copytree(src, parent / name)
    (parent / "notes.txt").write_text("keep me")
    return parent


def _tree(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_overwrite_never_deletes_what_is_not_a_run_directory(pair, digits):
    before = _tree(pair)
    with pytest.raises(RunDirectoryError, match="holds .*which this command reads"):
        hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=pair, exist="overwrite", progress=False)
    with pytest.raises(RunDirectoryError, match="holds .*which this command reads"):
        hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=pair / "A", exist="overwrite")
    other = pair.parent / "other"
    other.mkdir()
    (other / "data.csv").write_text("1,2\n")
    with pytest.raises(RunDirectoryError, match="not a run directory of hf_llpf.*data.csv"):
        hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=other, exist="overwrite", progress=False)
    assert _tree(pair) == before and (other / "data.csv").is_file()


def test_overwrite_replaces_a_run_directory(pair, digits, tmp_path):
    run = tmp_path / "run"
    hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=run, progress=False)
    (run / "points" / "t_999999").mkdir()  # a point of the layout, left by the first run: deleted with it
    (run / "points" / "t_999999" / "model.safetensors").write_bytes(b"from the first run")
    hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=run, exist="overwrite", progress=False)
    assert not (run / "points" / "t_999999").exists() and not (run / LOCK).exists()


@pytest.mark.slow
def test_a_second_run_into_a_locked_directory_is_refused(pair, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lock = RunLock(run).acquire()  # this test process is the first run, alive
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hf_llpf.cli", "connect", str(pair / "A"), str(pair / "B"), "--data", "digits",
             "--out", str(run), "--no-progress", "--overwrite",
             *(f"{k}={'null' if v is None else v}" for k, v in FAST.items())],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr
    assert f"in use by process {os.getpid()}" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == []


def test_a_stale_lock_is_taken_over(pair, digits, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    path = hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=run, exist="overwrite", progress=False)
    assert path.metrics[-1]["phase"] == "end" and not (run / LOCK).exists()


def test_resume_with_another_endpoint_is_refused(pair, digits, tmp_path):
    run = tmp_path / "run"
    hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=run, progress=False)
    with pytest.raises(ConfigError, match="endpoint B .* is not the one this run started with"):
        hf_llpf.connect(pair / "A", pair / "A", digits, config=FAST, run_dir=run, exist="resume", progress=False)


def _run_killed_after(n_saves, pair, digits, run, monkeypatch):
    return connect_killed_after(n_saves, monkeypatch, pair / "A", pair / "B", digits, config=FAST, run_dir=run,
                                progress=False)  # fmt: skip


def _comparable(path):
    strip = {"point"}
    return [{k: v for k, v in r.items() if k not in strip} for r in path.metrics]


@pytest.mark.slow
def test_resume_after_a_kill_at_every_checkpoint_equals_the_whole_run(pair, digits, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    total = _run_killed_after(10**9, pair, digits, whole, monkeypatch)  # never killed: counts the checkpoints
    reference = hf_llpf.RunPath(whole)
    assert total == reference.metrics[-1]["tick"] + 1  # one per tick with checkpoint_every=1, plus the start
    for k in range(1, total + 1):
        run = tmp_path / f"killed_{k}"
        _run_killed_after(k, pair, digits, run, monkeypatch)
        resumed = hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=run, exist="resume")
        assert resumed.ticks == reference.ticks, f"killed after checkpoint {k}"
        assert _comparable(resumed) == _comparable(reference), f"killed after checkpoint {k}"
        for i in range(len(reference)):
            assert state_equal(resumed.state_dict_at(i), reference.state_dict_at(i)), (k, i)
        assert resumed.summary["run"]["sgd_iters"] == reference.summary["run"]["sgd_iters"]


@pytest.mark.slow
def test_the_divergence_guards_advice_works(pair, digits, tmp_path):
    run = tmp_path / "run"
    config = {**FAST, "loss_limit": 1e-9, "max_failures": 2}
    with pytest.raises(DivergenceError, match="2 times") as caught:
        hf_llpf.connect(pair / "A", pair / "B", digits, config=config, run_dir=run, progress=False)
    advice = str(caught.value)
    assert "lower m2m.step_r (now 0.25)" in advice and "raise repair.max_iters (now 2)" in advice  # no ceiling
    assert "lower repair.lr (now 0.02)" in advice and "--resume refuses a changed repair.lr" in advice
    assert "step_a" not in advice and "step_f" not in advice  # 0: not in force, lowering them does nothing
    ckpt = read_checkpoint(run)["state"]
    # Rolled back exactly: no momentum buffer of the failed first tick survives.
    assert ckpt["trainer"]["optimizer"]["state"] == {}
    # The advice: change a step/iteration setting and --resume. The change is recorded in the run.
    path = hf_llpf.connect(
        pair / "A",
        pair / "B",
        digits,
        config={**config, "loss_limit": 1e9},
        run_dir=run,
        exist="resume",
        progress=False,
    )
    assert path.metrics[-1]["phase"] == "end"
    assert path.summary["run"]["resumed_with"] == [{"at_tick": 0, "changed": {"loss_limit": [1e-9, 1e9]}}]
    assert path.summary["run"]["failures"] == 0
    with pytest.raises(ConfigError, match="seed was 0.*may change only"):
        hf_llpf.connect(pair / "A", pair / "B", digits, config={**config, "seed": 1}, run_dir=run, exist="resume")


def test_the_divergence_advice_names_only_settings_that_act():
    from hf_llpf.algorithms.guard import Advice, divergence_advice
    from hf_llpf.config import ConnectConfig

    config = ConnectConfig(step_a=0.1, step_r=0.0)
    certified = divergence_advice(config, Advice(resumable=("step_a", "step_r")), loss=float("nan"), certified=True)
    assert "lower m2m.step_a (now 0.1)" in certified and "step_r" not in certified
    # Under a loss ceiling the certifier's repair rounds replace max_iters: their budget is what a resume may raise.
    assert "max_iters" not in certified
    assert "raise repair.budget (now 150) so a tick's repair may train longer before it backtracks" in certified
    assert "loss_limit" not in certified  # a non-finite loss: raising the limit does nothing
    assert "lower repair.lr (now 0.02)" in certified and "--resume refuses a changed repair.lr" in certified
    m2o = divergence_advice(config, Advice(new_run=("m2o.step_a",)), loss=12.5, certified=False)
    assert "raise repair.max_iters (now 50)" in m2o and "repair.budget" not in m2o
    assert "raise guard.loss_limit (now 10) if a loss of 12.5 is acceptable" in m2o
    assert "--resume refuses a changed m2o.step_a or repair.lr" in m2o and "lower m2o.step_a (now 0.01)" in m2o


def test_resume_cleans_temporary_files_of_killed_writes(pair, digits, tmp_path, monkeypatch):
    run = tmp_path / "run"
    _run_killed_after(3, pair, digits, run, monkeypatch)
    (run / "points" / ".tmp_t_000099").mkdir()
    (run / "points" / ".tmp_t_000099" / "model.safetensors").write_bytes(b"half")
    (run / ".path_metrics.json.x1y2.tmp").write_text("{")
    hf_llpf.connect(pair / "A", pair / "B", digits, config=FAST, run_dir=run, exist="resume", progress=False)
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp_") or p.name.endswith(".tmp")]


def test_train_checks_its_output_folder_first_and_never_saves_nan(digits, tmp_path, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert main(["train", "small_cnn", "--data", "digits", "--out", str(out), "epochs=1"]) == 2
    assert "already exists" in capsys.readouterr().err and not (out / "metrics.json").exists()
    assert main(["train", "small_cnn", "--data", "digits", "--out", str(out), "--overwrite", "epochs=1"]) == 2
    assert "more than a model folder" in capsys.readouterr().err
    with pytest.raises(CorruptCheckpointError, match="non-finite"):
        train_endpoint(TrainRecipe(epochs=1, lr=1e12, momentum=0.0), out_dir=tmp_path / "nan", data=digits)
    assert not (tmp_path / "nan").exists()


def test_non_finite_endpoints_are_named_before_any_work(pair, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(pair / "B", bad)
    state = safetensors.torch.load_file(str(bad / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)
    state[name][0] = float("nan")
    safetensors.torch.save_file(state, str(bad / "model.safetensors"))
    assert main(["spheres", str(pair / "A"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"endpoint B ({bad}): tensor {name!r} has 1 non-finite value" in err
    out = tmp_path / "run"
    assert main(["connect", str(bad), str(pair / "B"), "--data", "digits", "--out", str(out), "--no-progress"]) == 2
    assert f"endpoint A ({bad}): tensor {name!r}" in capsys.readouterr().err and not out.exists()
    assert load_endpoint(pair / "A").model is not None


def test_run_files_carry_the_usual_permissions(tmp_path):
    from hf_llpf.run import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
