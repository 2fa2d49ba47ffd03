"""Readers and writers of one run directory never mix (docs/run-directory.md, "Readers and writers"); a failed
`evaluate --baselines` changes nothing; points and checkpoints carry the user's umask."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import hf_llpf
from hf_llpf.cli import main
from hf_llpf.errors import RunDirectoryError

torch.set_num_threads(1)

FAST = {"step_r": 0.25, "min_iters": 1, "max_iters": 2, "checkpoint_every": 1, "arrival_tol": 0.05,
        "loss_ceiling": None}  # fmt: skip
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def finished_run(small_cnn_pair, digits, tmp_path_factory):
    """A complete run directory (read-only in tests: copy it with :func:`_copy`)."""
    run = tmp_path_factory.mktemp("readers") / "run"
    hf_llpf.connect(*small_cnn_pair, digits, config=FAST, run_dir=run, progress=False)
    return run


def _copy(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _tree_hash(root) -> str:
    """Every name and every byte under ``root``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


class Holder:
    """A second process holding ``run``: ``writer`` (a run writing it: RunWriter's lock) or ``reader``."""

    def __init__(self, run, kind: str):
        if kind == "writer":
            hold = f"from hf_llpf.run import RunWriter\nw = RunWriter({str(run)!r}, exist='resume')"
        else:
            hold = (
                "from hf_llpf.run.lock import holding\n"
                f"h = holding({str(run)!r}, exclusive=False, action='evaluate')\nh.__enter__()"
            )
        code = textwrap.dedent(hold) + "\nprint('held', flush=True)\nimport sys\nsys.stdin.read()\n"
        env = {**os.environ, "PYTHONPATH": REPO}
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
        line = self.proc.stdout.readline()
        assert line == "held\n", self.proc.stderr.read()
        self.pid = self.proc.pid

    def __enter__(self) -> Holder:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()  # the holder ends, giving the run directory back
        assert self.proc.wait(timeout=60) == 0, self.proc.stderr.read()


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_every_reader_refuses_a_run_that_is_being_written(finished_run, tmp_path, capsys):
    from hf_llpf.comparison import compare_run
    from hf_llpf.evaluation import evaluate_path
    from hf_llpf.hub import push_path
    from hf_llpf.hub.card import build_model_card

    run = _copy(finished_run, tmp_path)
    with Holder(run, "writer") as writer:
        before = _tree_hash(run)
        commands = [
            ("evaluate", ["evaluate", str(run), "--train-subset", "64", "--continuity", "0"]),
            ("evaluate", ["evaluate", str(run), "--baselines", "slerp", "--points", "3"]),
            ("push", ["push", str(run), "org/path"]),
            ("export", ["export", str(run), "--out", str(tmp_path / "mid")]),
        ]
        for action, argv in commands:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"{action} {str(run)!r}: the run directory is still being written by process {writer.pid}" in err
            assert "wait for it to end, then run" in err and "Traceback" not in err
        reads = {
            "evaluate": lambda: evaluate_path(run),
            "evaluate --baselines": lambda: compare_run(run, ["linear"]),
            "push": lambda: push_path(run, repo_id="org/path"),
            "build the card of": lambda: build_model_card(run),
        }
        for action, read in reads.items():
            with pytest.raises(RunDirectoryError) as err:
                read()
            assert str(err.value).startswith(f"{action} {str(run)!r}: the run directory is still being written by "
                                             f"process {writer.pid} on ")  # fmt: skip
        assert _tree_hash(run) == before and not (tmp_path / "mid").exists()
    # Once the writer has ended, the same readers work.
    assert main(["export", str(run), "--out", str(tmp_path / "mid")]) == 0


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_a_run_is_refused_while_a_reader_holds_its_directory(finished_run, small_cnn_pair, digits, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    with Holder(run, "reader") as reader:
        before = _tree_hash(run)
        for exist in ("resume", "overwrite"):
            with pytest.raises(RunDirectoryError, match=f"is being read by process {reader.pid} .*wait for it"):
                hf_llpf.connect(*small_cnn_pair, digits, config=FAST, run_dir=run, exist=exist, progress=False)
        # evaluate writes into the run directory: refused too; other readers share it.
        assert main(["evaluate", str(run), "--train-subset", "64", "--continuity", "0"]) == 2
        assert f"is being read by process {reader.pid}" in capsys.readouterr().err
        assert main(["export", str(run), "--out", str(tmp_path / "mid")]) == 0
        assert _tree_hash(run) == before


CERTIFIED = {"step_r": 0.5, "min_iters": 2, "max_iters": 4, "arrival_tol": 0.05, "checkpoint_every": 2}
COUNTERS = ("ticks", "sgd_iters", "failures", "backtracks")


@pytest.mark.slow
def test_a_killed_and_resumed_run_counts_what_an_uninterrupted_one_does(small_cnn_pair, digits, tmp_path,
                                                                         monkeypatch, caplog):  # fmt: skip
    from conftest import connect_killed_after

    whole = hf_llpf.connect(*small_cnn_pair, digits, config=CERTIFIED, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    assert connect_killed_after(2, monkeypatch, *small_cnn_pair, digits, config=CERTIFIED, run_dir=run,
                                progress=False) == 2  # fmt: skip
    monkeypatch.setattr(hf_llpf, "__version__", "9.9.9")  # the resume is made by another version
    with caplog.at_level("WARNING", logger="hf_llpf"):
        resumed = hf_llpf.connect(*small_cnn_pair, digits, config=CERTIFIED, run_dir=run, exist="resume",
                                  progress=False)  # fmt: skip
    was, now = whole.summary["run"], resumed.summary["run"]
    assert resumed.ticks == whole.ticks
    assert {k: now[k] for k in COUNTERS} == {k: was[k] for k in COUNTERS}
    probes = ("probes", "probes_stopped_early")
    assert {k: now["certification"][k] for k in probes} == {k: was["certification"][k] for k in probes}
    # Two stretches, each with its version; their counts add up to the run's.
    first, second = now["stretches"]
    assert first["version"] == whole.summary["run"]["stretches"][0]["version"] != second["version"] == "9.9.9"
    assert first["ticks"] > 0 and second["ticks"] > 0
    assert first["ticks"] + second["ticks"] == was["stretches"][0]["ticks"]
    assert first["sgd_iters"] + second["sgd_iters"] == was["sgd_iters"] == was["stretches"][0]["sgd_iters"]
    for k in probes:
        assert first[k] + second[k] == now["certification"][k] == was["stretches"][0][k]
    assert now["seconds"] == round(first["seconds"] + second["seconds"], 3)
    notices = [r.getMessage() for r in caplog.records if "--resume: " in r.getMessage()]
    assert len(notices) == 1 and notices[0].endswith(
        f"--resume: {run} was written so far by hf_llpf {first['version']}; this stretch is written by 9.9.9 (each "
        "stretch's version is recorded in summary.run.stretches)"
    )


def _outside(root, skip: str = "baselines") -> str:
    """:func:`_tree_hash` of everything in ``root`` but the folder ``skip``."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] != skip:
            h.update(str(rel).encode() + (p.read_bytes() if p.is_file() else b""))
    return h.hexdigest()


def test_a_failing_baseline_leaves_the_runs_own_evaluation_as_it_was(finished_run, tmp_path, monkeypatch, capsys):
    import hf_llpf.baselines.slerp as slerp
    from hf_llpf.errors import ConfigError

    run = _copy(finished_run, tmp_path)
    metrics = (run / "path_metrics.json").read_bytes()
    argv = ["evaluate", str(run), "--train-subset", "64", "--continuity", "0", "--linear-points", "3", "--points", "3"]
    # A folder of the user's where a baseline would go: refused before anything is judged or written.
    (run / "baselines" / "slerp").mkdir(parents=True)
    (run / "baselines" / "slerp" / "notes.txt").write_text("mine")
    before = _tree_hash(run)
    assert main([*argv, "--baselines", "linear,slerp"]) == 2
    err = capsys.readouterr().err
    assert f"{str(run / 'baselines' / 'slerp')!r}: refusing to overwrite it" in err and "notes.txt" in err
    assert "it is not a run directory of hf_llpf" in err
    assert _tree_hash(run) == before
    # A baseline that fails while it is built (after the run itself was judged): the run's files are unchanged.
    shutil.rmtree(run / "baselines")
    before = _outside(run)

    def broken(*args, **kwargs):
        raise ConfigError("slerp: broken on purpose")

    monkeypatch.setattr(slerp, "slerp_state", broken)
    assert main([*argv, "--baselines", "slerp"]) == 2
    assert "slerp: broken on purpose" in capsys.readouterr().err
    assert (run / "path_metrics.json").read_bytes() == metrics and _outside(run) == before


def test_points_and_checkpoints_carry_the_users_umask(tmp_path):
    import hf_llpf.models.weights as weights
    import hf_llpf.run.rundir as rundir
    from hf_llpf.models.endpoints import as_endpoint, create_model
    from hf_llpf.run import RunWriter

    model = create_model("lenet5")
    old = os.umask(0o022)
    weights._umask.cache_clear(), rundir._umask.cache_clear()  # read once per process: read it under 022
    try:
        with RunWriter(tmp_path / "run") as writer:
            writer.write_point(0, model, as_endpoint(model))
            writer.save_checkpoint({"model": model.state_dict(), "tick": 0})
    finally:
        os.umask(old)
        weights._umask.cache_clear(), rundir._umask.cache_clear()
    files = sorted(p for p in (tmp_path / "run").rglob("*") if p.is_file())
    names = [p.relative_to(tmp_path / "run").as_posix() for p in files]
    assert "points/t_000000/model.safetensors" in names and "checkpoint/tensors-1.safetensors" in names
    assert {n: oct(p.stat().st_mode & 0o777) for n, p in zip(names, files)} == dict.fromkeys(names, "0o644")
