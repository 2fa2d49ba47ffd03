"""Two CPU processes (gloo) through Accelerate: same weights everywhere, one writer, same path quality."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import state_equal

import hf_llpf
from hf_llpf.evaluation import score

torch.set_num_threads(1)

# A set ceiling well above the endpoints: these tests check that processes stay in step and agree, not how hard a
# certificate is to reach. (At the auto ceiling, every decision on the whole training set and these small repair
# budgets keep most points just above it, and the run wanders with shortened steps until max_ticks.)
GENEROUS_CEILING = 0.3
CONFIG = {
    "loss_ceiling": GENEROUS_CEILING,
    "step_r": 0.05,
    "min_iters": 2,
    "max_iters": 20,
    "save_every": 10,
    "sync_check_every": 1,
    "checkpoint_every": 10,
    "repair_budget": 20,
    "max_backtracks": 2,
}


def _worker():
    """Runs in each of the two processes (debug_launcher): connect, and record who wrote the run directory."""
    import torch

    torch.set_num_threads(1)
    import torch.distributed as dist

    import hf_llpf.api as connect_module
    from hf_llpf.run import RunWriter

    rank = dist.get_rank()  # the launcher set up the process group

    root = os.environ["HF_LLPF_TEST_ROOT"]

    class CountingWriter(RunWriter):
        def __init__(self, *args, **kwargs):
            with open(os.path.join(root, f"writer_rank{rank}"), "a") as f:
                f.write("x")
            super().__init__(*args, **kwargs)

    connect_module.RunWriter = CountingWriter
    path = hf_llpf.connect(
        os.path.join(root, "a"),
        os.path.join(root, "b"),
        "digits",
        config=CONFIG,
        run_dir=os.path.join(root, "run2"),
        progress=False,
    )
    weights = torch.cat([p.flatten() for p in path.model_at(-1).parameters()])
    with open(os.path.join(root, f"done_rank{rank}.json"), "w") as f:
        json.dump({"points": len(path), "sum": float(weights.double().sum())}, f)


def _eval_worker():
    """Each of two processes evaluates its share of the points; every process gets the gathered result."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    from hf_llpf.evaluation import evaluate_path

    root = os.environ["HF_LLPF_TEST_ROOT"]
    result = evaluate_path(os.path.join(root, "run1"), train_subset=300, continuity_k=2, linear_points=5)
    with open(os.path.join(root, f"eval_rank{dist.get_rank()}.json"), "w") as f:
        json.dump(result, f)


REPEATS_CONFIG = {
    "loss_ceiling": GENEROUS_CEILING,
    "step_r": 0.25,
    "min_iters": 2,
    "max_iters": 10,
    "save_every": 2,
    "repair_budget": 10,
}
REPEATS_EVAL = {"train_subset": 300, "continuity_k": 0, "linear_points": 2}


def _repeats_worker():
    """Both processes call run_repeats: each builds its own repeats (0 and 2 on rank 0, 1 on rank 1)."""
    import torch

    torch.set_num_threads(1)
    from hf_llpf.repeats import run_repeats

    root = os.environ["HF_LLPF_TEST_ROOT"]
    run_repeats(
        os.path.join(root, "a"),
        os.path.join(root, "b"),
        "digits",
        config=REPEATS_CONFIG,
        run_dir=os.path.join(root, "repeats2"),
        repeats=3,
        evaluate_options=REPEATS_EVAL,
    )


def _interrupted_worker():
    """The two-process run of ``_worker``, stopped by an exception right after its tick-10 checkpoint."""
    from hf_llpf.algorithms.m2m import M2M

    checkpoint = M2M._checkpoint

    def checkpoint_then_stop(self, done=False):
        checkpoint(self, done)
        self.trainer.accelerator.wait_for_everyone()  # the checkpoint is on disk before anyone stops
        if self.state.tick >= 10 and not done:
            raise RuntimeError(
                "simulated interruption after the tick-10 checkpoint"
            )  # (spawn swallows KeyboardInterrupt)

    M2M._checkpoint = checkpoint_then_stop
    _connect_in_two("run_resumed", exist="error")


def _resume_worker():
    _connect_in_two("run_resumed", exist="resume")


def _connect_in_two(name: str, *, exist: str) -> None:
    import torch

    torch.set_num_threads(1)
    root = os.environ["HF_LLPF_TEST_ROOT"]
    a, b = os.path.join(root, "a"), os.path.join(root, "b")
    hf_llpf.connect(a, b, "digits", config=CONFIG, run_dir=os.path.join(root, name), exist=exist, progress=False)


# The workers are imported from this file in fresh interpreters: the repository root (for ``tests.``) and
# tests/ (for ``conftest``), as pytest's pythonpath setting gives this process.
_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TEST_PATH = os.pathsep.join([os.path.dirname(_TESTS), _TESTS])


def _launch(worker: str, root, *, expect_failure: bool = False) -> None:
    # A fresh interpreter: processes forked from pytest would inherit its single-process Accelerate state.
    script = (
        f"from accelerate import debug_launcher; from tests.devices.test_distributed import {worker}; "
        f"debug_launcher({worker}, num_processes=2)"
    )
    env = {**os.environ, "HF_LLPF_TEST_ROOT": str(root), "OMP_NUM_THREADS": "1", "PYTHONPATH": _TEST_PATH}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=os.path.dirname(_TESTS),
    )
    if expect_failure:
        assert result.returncode != 0 and "simulated interruption" in result.stderr, result.stderr[-3000:]
    else:
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def root(tmp_path_factory, small_cnn_pair):
    root = tmp_path_factory.mktemp("dist")
    for name, folder in zip("ab", small_cnn_pair, strict=True):
        (root / name).symlink_to(folder, target_is_directory=True)
    return root


def _max_loss(path, digits):
    loader = digits.loader("train", batch_size=512, seed=0, shuffle=False, augment=False)
    return max(score(path.model_at(i), loader)["loss"] for i in range(len(path)))  # model_at: eval mode


@pytest.mark.slow
def test_two_processes_stay_in_step_write_once_and_match_one_process(root, digits):
    _launch("_worker", root)
    # sync_check_every=1: a weight checksum was compared across the processes after every tick (else it raised)
    done = [json.loads((root / f"done_rank{r}.json").read_text()) for r in (0, 1)]
    assert done[0] == done[1]
    assert (root / "writer_rank0").read_text() == "x" and not (root / "writer_rank1").exists()
    two = hf_llpf.RunPath(root / "run2")
    one = hf_llpf.connect(root / "a", root / "b", digits, config=CONFIG, run_dir=root / "run1", progress=False)
    assert torch.equal(two.state_dict_at(-1)["head.weight"], one.state_dict_at(-1)["head.weight"])  # both end on B
    # Same global batch (each process takes half of every batch; gradients averaged). BatchNorm statistics are
    # per process, so the paths differ in detail: the stated tolerance on the max eval loss is 0.05.
    assert abs(_max_loss(two, digits) - _max_loss(one, digits)) < 0.05
    # Certified alike: the same probe examples on every process, so the same ceiling from the same endpoint losses,
    # and every point the two processes kept is under it or listed as kept above it.
    cert2, cert1 = (p.summary["run"]["certification"] for p in (two, one))
    assert cert2["ceiling"] == pytest.approx(cert1["ceiling"], rel=1e-6) and cert2["probe_examples"] == 1437
    listed = {u["tick"] for u in cert2["uncertified"] if u["what"] == "point"}
    for row in two.metrics[1:-1]:
        assert row["probe_loss"] <= cert2["ceiling"] or row["tick"] in listed, row


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(root, digits):
    from hf_llpf.evaluation import evaluate_path

    if not (root / "run1").exists():
        hf_llpf.connect(root / "a", root / "b", digits, config=CONFIG, run_dir=root / "run1", progress=False)
    _launch("_eval_worker", root)
    single = json.loads(json.dumps(evaluate_path(root / "run1", train_subset=300, continuity_k=2, linear_points=5)))
    for rank in (0, 1):
        sharded = json.loads((root / f"eval_rank{rank}.json").read_text())
        sharded["summary"].pop("evaluation"), single["summary"].pop("evaluation", None)
        assert sharded == single  # the same numbers, bit for bit, whichever process evaluated each point


# Loaded first by every process of a launch (on PYTHONPATH): stderr says it is a terminal, so each process draws
# the bars it was asked for, and every bar drawn is recorded per rank (tqdm bars carry no rank to count them by).
_BAR_RECORDER = """
import json, os, sys

class _Terminal:
    def __init__(self, stream):
        self._stream = stream

    def isatty(self):
        return True

    def __getattr__(self, name):
        return getattr(self._stream, name)

sys.stderr = _Terminal(sys.stderr)

import tqdm.std

_init = tqdm.std.tqdm.__init__

def _recorded(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if not self.disable and "RANK" in os.environ:
        with open(os.path.join(os.environ["HF_LLPF_BARS"], "rank" + os.environ["RANK"]), "a") as f:
            f.write(json.dumps(str(self.desc)) + "\\n")

tqdm.std.tqdm.__init__ = _recorded
"""


def _torchrun(args: list[str], tmp_path, *, bars: bool = False) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m hf_llpf.cli ARGS`` (with ``bars``: every bar drawn is recorded
    in ``tmp_path/bars/rank<N>``, stderr passing for a terminal)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hf_llpf.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if bars:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(_BAR_RECORDER)
        (tmp_path / "bars").mkdir()
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")])
        env["HF_LLPF_BARS"] = str(tmp_path / "bars")
        env.pop("TQDM_DISABLE", None)
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=600, env=env)


def _bars(tmp_path) -> dict[str, list[str]]:
    return {f.name: [json.loads(x) for x in f.read_text().splitlines()] for f in sorted((tmp_path / "bars").iterdir())}


@pytest.mark.slow
def test_cli_under_torchrun(root, tmp_path):
    args = ["connect", str(root / "a"), str(root / "b"), "--data", "digits", "--out", str(tmp_path / "run")]
    args += ["step_r=0.2", "max_iters=5", "repair_budget=8", f"loss_ceiling={GENEROUS_CEILING}", "sync_check_every=1"]
    result = _torchrun(args, tmp_path, bars=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("path written to") == 1  # printed by the main process only
    # The endpoints were trained by `hf-llpf train`: the end line sets the run's wall time against A's training.
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("path written to")]
    assert re.search(r"; \d+\.\d s wall time, \d+\.\d× the training of endpoint A \(\d+\.\d s for \d+ iterations, "
                     r"as its metrics.json records\)$", line), line  # fmt: skip
    # Both processes were asked for bars and see a terminal: only the main one draws them.
    bars = _bars(tmp_path)
    assert list(bars) == ["rank0"] and "llpf m2m stages" in bars["rank0"], bars
    path = hf_llpf.RunPath(tmp_path / "run")
    assert path.metrics[-1]["phase"] == "end" and len(path) > 2
    assert path.summary["run"]["launch"]["processes"] == 2 and "note" not in path.summary["run"]["launch"]
    starts = [line for line in result.stderr.splitlines() if "process(es) on cpu" in line]
    assert [line.rsplit("\r", 1)[-1] for line in starts] == [
        "hf-llpf: [RANK 0] 2 process(es) on cpu (data-parallel, multi_cpu), sharding: none (every "
        "process holds the whole model), mixed precision: no"
    ]  # fmt: skip (rank named: 2 processes)


@pytest.mark.slow
def test_evaluate_under_torchrun_speaks_once(root, digits, tmp_path):
    import shutil

    if not (root / "run1").exists():
        hf_llpf.connect(root / "a", root / "b", digits, config=CONFIG, run_dir=root / "run1", progress=False)
    run = shutil.copytree(root / "run1", tmp_path / "run")
    args = ["evaluate", str(run), "--train-subset", "200", "--linear-points", "3", "--continuity", "0"]
    result = _torchrun(args, tmp_path, bars=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    # The table, the written line and the verdict, once each (both processes judged their share of the points).
    assert out.count("points evaluated on 200 train") == 1 and out.count("| figure | LLPF | linear |") == 1
    assert out.count(f"written: {run / 'path_metrics.json'}, plots/, README.md") == 1
    assert out.count("verdict: ") == 1 and out.rstrip("\n").splitlines()[-1].startswith("verdict: ")
    assert list(_bars(tmp_path)) == ["rank0"]  # the evaluation's bars: the main process only


@pytest.mark.slow
def test_repeats_are_spread_over_processes_and_equal_single_process_runs(root, digits):
    from hf_llpf.repeats import run_repeats

    _launch("_repeats_worker", root)
    spread = json.loads((root / "repeats2" / "consistency.json").read_text())
    assert spread["repeats"] == 3 and spread["seeds"] == [0, 1, 2]
    # Repeat 1 was built by process 1 alone; a one-process run of the same seed builds the same path, bit for bit.
    one = run_repeats(
        root / "a",
        root / "b",
        digits,
        config=REPEATS_CONFIG,
        run_dir=root / "repeats1",
        repeats=2,
        evaluate_options=REPEATS_EVAL,
    )
    for r in (0, 1):
        two, single = (
            hf_llpf.RunPath(root / "repeats2" / f"repeat_{r:02d}"),
            hf_llpf.RunPath(root / "repeats1" / f"repeat_{r:02d}"),
        )
        assert len(two) == len(single)
        assert all(_state_equal(two.state_dict_at(i), single.state_dict_at(i)) for i in range(len(two)))
        assert (
            spread["figures"]["llpf.max_train_loss"]["values"][r] == one["figures"]["llpf.max_train_loss"]["values"][r]
        )


@pytest.mark.slow
def test_resume_under_two_processes_equals_an_uninterrupted_run(root):
    if not (root / "run2").exists():
        _launch("_worker", root)
    _launch("_interrupted_worker", root, expect_failure=True)
    stopped = json.loads((root / "run_resumed" / "path_metrics.json").read_text())
    assert 0 < stopped["points"][-1]["tick"] < hf_llpf.RunPath(root / "run2").ticks[-1]  # really stopped mid-run
    _launch("_resume_worker", root)
    resumed, uninterrupted = hf_llpf.RunPath(root / "run_resumed"), hf_llpf.RunPath(root / "run2")
    assert resumed.ticks == uninterrupted.ticks
    for i in range(len(resumed)):
        assert _state_equal(resumed.state_dict_at(i), uninterrupted.state_dict_at(i)), f"point {i} differs"


_state_equal = state_equal
