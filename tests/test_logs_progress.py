"""Logs and progress as Hugging Face users expect (docs/cli.md#progress-and-logs), and launch settings respected
(docs/distributed.md): bars only on a terminal, TQDM_DISABLE, the -v/-q logger, the precision of the launch."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import sys
import termios
import threading

import pytest
import torch

import hf_llpf
from hf_llpf.cli import build_parser
from hf_llpf.config import ConnectConfig
from hf_llpf.models.endpoints import as_endpoint, create_model
from hf_llpf.progress import progress_enabled

torch.set_num_threads(1)

FAST = ["step_r=0.25", "min_iters=1", "max_iters=2", "arrival_tol=0.05", "max_ticks=12", "repair_budget=4"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "ACCELERATE_MIXED_PRECISION")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _train_cmd(out) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hf_llpf.cli",
        "train",
        "small_cnn",
        "--data",
        "digits",
        "--out",
        str(out),
        "epochs=1",
    ]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_enabled_needs_request_terminal_and_no_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr(sys, "stderr", _Tty())
    assert progress_enabled(True) is True
    assert progress_enabled(False) is False
    for value, expected in (("1", False), ("true", False), ("YES", False), ("0", True), ("", True)):
        monkeypatch.setenv("TQDM_DISABLE", value)
        assert progress_enabled(True) is expected, value
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # redirected: no terminal
    assert progress_enabled(True) is False


@pytest.mark.slow
def test_redirected_train_writes_no_carriage_return_progress(tmp_path):
    result = subprocess.run(_train_cmd(tmp_path / "m"), capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    assert "\r" not in result.stdout and "\r" not in result.stderr
    assert "train small_cnn seed" not in result.stderr  # the bar's description never appears
    assert len(result.stderr) < 2000, result.stderr[-2000:]


def _train_on_a_terminal(out, env) -> str:
    """``hf-llpf train`` with stderr on a pseudo-terminal; returns what reached the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a 0-column pty gets empty bars
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc = subprocess.run(_train_cmd(out), stdout=subprocess.PIPE, stderr=slave, timeout=300, env=env)
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_train_bar_shows_on_a_terminal_unless_tqdm_disable(tmp_path):
    shown = _train_on_a_terminal(tmp_path / "a", _env())
    assert "train small_cnn seed 0" in shown and "\r" in shown
    hidden = _train_on_a_terminal(tmp_path / "b", _env(TQDM_DISABLE="1"))
    assert "train small_cnn seed" not in hidden and "\r" not in hidden


def test_verbosity_flags_set_the_log_level_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["train", "--out", "x"]).log_level == "info"
    assert parser.parse_args(["train", "--out", "x", "-q"]).log_level == "warning"
    assert parser.parse_args(["-q", "train", "--out", "x"]).log_level == "warning"
    assert parser.parse_args(["connect", "a", "b", "--out", "x", "--verbose"]).log_level == "debug"
    assert parser.parse_args(["-v", "spheres", "a", "b"]).log_level == "debug"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--out", "x", "-q", "-v"])


def _cross_sphere_pair():
    torch.manual_seed(0)
    a = create_model("small_cnn")
    b = create_model("small_cnn")
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(3.0)  # Var × 9: |ln 9| ≈ 2.2 > 0.5, another sphere
    return as_endpoint(a, source="a"), as_endpoint(b, source="b")


@pytest.mark.parametrize(("level", "shown"), [("info", True), ("warning", False), ("debug", True)])
def test_the_cross_sphere_decision_reaches_stderr_at_info(level, shown, capsys):
    from accelerate import PartialState

    from hf_llpf.algorithms.spheres import choose_method
    from hf_llpf.reporting.logging import configured

    PartialState()  # accelerate's logger needs its state (connect has created the Accelerator by then)
    ea, eb = _cross_sphere_pair()
    capsys.readouterr()
    with configured(level):
        assert choose_method(ea, eb, ConnectConfig(method="auto")) == "cross-sphere"
    err = capsys.readouterr().err
    line = "the endpoints are on different variance spheres"
    assert (line in err) is shown, err
    if shown:
        assert "cross-sphere M2O then M2M" in err and "2.2 > 0.5" in err
        assert err.count(line) == 1  # one handler, no duplicate through the root logger


def test_configure_is_for_python_users_and_replaces_its_handler():
    import logging

    import hf_llpf.reporting.logging as llpf_logging

    logger = logging.getLogger("hf_llpf")
    saved = logger.level, list(logger.handlers), logger.propagate
    try:
        stream = io.StringIO()
        llpf_logging.configure("warning")
        llpf_logging.configure("info", stream=stream)
        assert logger.level == logging.INFO
        assert sum(getattr(h, "_hf_llpf_handler", False) for h in logger.handlers) == 1
        logging.getLogger("hf_llpf.algorithms.spheres").info("hello")
        logging.getLogger("hf_llpf.algorithms.spheres").debug("hidden")
        assert stream.getvalue() == "hf-llpf: hello\n"
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_library_modules_attach_no_handler_at_import():
    code = "import logging, hf_llpf.api, hf_llpf.algorithms.spheres; print(len(logging.getLogger('hf_llpf').handlers))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()).stdout
    assert out.strip() == "0"


@pytest.mark.slow
@pytest.mark.parametrize(("env", "expected"), [({"ACCELERATE_MIXED_PRECISION": "bf16"}, "bf16"), ({}, "no")])
def test_connect_records_the_precision_of_the_launch(env, expected, tmp_path, trained_endpoint):
    a, b = trained_endpoint(0, epochs=1), trained_endpoint(1, epochs=1)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hf_llpf.cli", "connect", str(a), str(b), "--data", "digits", "--out", str(run)]
    cmd += ["--threads", "1", *FAST]  # no --no-progress: redirected, the bar stays off anyway
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(**env))
    assert result.returncode == 0, result.stderr[-3000:]
    path = hf_llpf.RunPath(run)
    assert path.config["devices"]["mixed_precision"] == expected
    assert path.summary["run"]["mixed_precision"] == expected
    assert "\r" not in result.stderr and "llpf m2m stages" not in result.stderr  # no bar ...
    done = len(path.summary["run"]["stage_starts"]) - 1  # every stage started before the last one was done
    lines = [line for line in result.stderr.splitlines() if line.startswith("hf-llpf: llpf m2m: ")]
    assert len(lines) >= done  # ... but a line for every stage done (max_ticks may stop the run first)
    assert [line.split(": ")[2].split("/")[0] for line in lines[:done]] == [str(k) for k in range(1, done + 1)]
    log = (run / "hf_llpf.log").read_text()
    assert "INFO 1 process(es) on cpu" in log.splitlines()[0] and all(line[9:] in log for line in lines)


class _RecordingBar:
    """Stands in for tqdm in hf_llpf.algorithms.m2m: records the total, each position and each postfix."""

    made: list[_RecordingBar] = []

    def __init__(self, total=None, initial=0, disable=False, **kwargs):
        self.total, self.n, self.disable, self.kwargs = total, initial, disable, kwargs
        self.positions, self.postfixes = [initial], []
        _RecordingBar.made.append(self)

    def update(self, k=1):
        self.n += k
        self.positions.append(self.n)

    def set_postfix(self, **kw):
        self.postfixes.append(kw)

    def close(self):
        pass

    @staticmethod
    def write(text, *a, **k):
        print(text, file=sys.stderr)


def test_the_m2m_bar_counts_stages_with_the_ticks_of_the_current_stage(
    tmp_path, digits, trained_endpoint, monkeypatch
):
    import hf_llpf.algorithms.m2m as m2m

    _RecordingBar.made = []
    monkeypatch.setattr(m2m, "tqdm", _RecordingBar)
    monkeypatch.setattr(m2m, "progress_enabled", lambda requested: requested)  # as on a terminal
    config = {"step_r": 0.25, "min_iters": 1, "max_iters": 2, "arrival_tol": 0.05, "max_ticks": 200}
    config |= {"repair_budget": 4, "method": "m2m"}
    a, b = trained_endpoint(0, epochs=1), trained_endpoint(1, epochs=1)
    path = hf_llpf.connect(a, b, digits, config=config, run_dir=tmp_path / "run", progress=True)
    (bar,) = _RecordingBar.made
    stages = len(path.layer_groups["stages"])
    assert stages > 1 and len(path.summary["run"]["stage_starts"]) == stages  # every stage started
    assert bar.total == stages and bar.total != config["max_ticks"]
    assert bar.disable is False and bar.kwargs["unit"] == "stage"
    assert bar.positions[0] == 1 and bar.positions[-1] == stages  # starts on stage 1, ends with every stage
    assert all(x <= y for x, y in zip(bar.positions, bar.positions[1:], strict=False))
    ticks = [p["stage_ticks"] for p in bar.postfixes]
    assert len(ticks) == path.summary["run"]["ticks"] - 1  # one postfix per loop tick (not the final snap)
    assert ticks[0] == 1 and all(t >= 0 for t in ticks)
    assert ticks.count(0) == stages - 1  # each newly started stage shows 0 of its ticks, once


def test_quiet_libraries_silences_transformers_and_hub_then_restores_them():
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tf_logging

    from hf_llpf.progress import progress_requested, quiet_libraries

    before = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity(), hub_utils.are_progress_bars_disabled()
    with quiet_libraries(True):
        assert tf_logging.is_progress_bar_enabled() is False
        assert tf_logging.get_verbosity() == tf_logging.ERROR
        assert hub_utils.are_progress_bars_disabled() is True
    after = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity(), hub_utils.are_progress_bars_disabled()
    assert after == before
    with quiet_libraries(False):
        assert tf_logging.get_verbosity() == before[1]
    # Around a point's save or load: quiet under progress=False (the CLI's --no-progress), even on a terminal.
    from hf_llpf.progress import library_bars

    with progress_requested(False), library_bars():
        assert tf_logging.is_progress_bar_enabled() is False and tf_logging.get_verbosity() == tf_logging.ERROR


def test_saving_and_loading_a_transformers_point_prints_no_transformers_bar(tmp_path, capsys):
    from tiny_models import tiny_bert

    from hf_llpf.models.endpoints import load_endpoint, save_model

    model = tiny_bert()
    capsys.readouterr()
    model.save_pretrained(tmp_path / "raw")  # the control: transformers' own bar, redirected or not
    assert "Writing model shards" in capsys.readouterr().err
    save_model(model, tmp_path / "point", kind="transformers", arch={})
    load_endpoint(tmp_path / "point")
    err = capsys.readouterr().err
    assert "Writing model shards" not in err and "Loading weights" not in err and "\r" not in err, err


def test_the_m2o_bar_counts_the_tensors_at_their_target_variance(tmp_path, digits, trained_endpoint, monkeypatch):
    import hf_llpf.algorithms.m2o as m2o
    from hf_llpf.api import walk_to_origin

    _RecordingBar.made = []
    monkeypatch.setattr(m2o, "tqdm", _RecordingBar)
    monkeypatch.setattr(m2o, "progress_enabled", lambda requested: requested)  # as on a terminal
    config = {"min_iters": 1, "max_iters": 2, "m2o": {"step_a": 0.1, "target_variance": 0.5, "max_ticks": 300}}
    path = walk_to_origin(trained_endpoint(0, epochs=1), digits, config=config, run_dir=tmp_path / "w", progress=True)
    (bar,) = _RecordingBar.made
    assert 1 < bar.total < config["m2o"]["max_ticks"] and bar.kwargs["unit"] == "tensor"  # not the cap on ticks
    assert bar.positions[0] == 0 and bar.positions[-1] == bar.total  # the walk ends with every tensor at target
    assert all(x <= y for x, y in zip(bar.positions, bar.positions[1:], strict=False))
    assert [p["tick"] for p in bar.postfixes] == list(range(1, len(bar.postfixes) + 1))
    assert len(bar.postfixes) == path.summary["run"]["ticks"]


class _IterBar(list):
    """tqdm stand-in for :func:`hf_llpf.progress.counting_bar`: records what it wraps."""

    made: list = []

    def __init__(self, items, **kwargs):
        super().__init__(items)
        self.kwargs = kwargs
        _IterBar.made.append(self)


def test_evaluation_shows_bars_over_the_points_and_the_baseline_only_when_asked(
    tmp_path, digits, small_cnn_pair, monkeypatch
):
    import tqdm.auto

    import hf_llpf.progress as progress
    from hf_llpf.evaluation import evaluate_path

    monkeypatch.setattr(tqdm.auto, "tqdm", _IterBar)
    monkeypatch.setattr(progress, "progress_enabled", lambda requested=True: requested)  # as on a terminal
    run = tmp_path / "line"
    hf_llpf.connect(*small_cnn_pair, digits, config={"method": "linear"}, run_dir=run, progress=False)
    _IterBar.made = []
    evaluate_path(run, data=digits, train_subset=64, linear_points=3, continuity_k=0)
    assert [(len(bar), bar.kwargs["desc"]) for bar in _IterBar.made] == [
        (9, "evaluate path points"),
        (3, "evaluate linear baseline"),
    ]
    _IterBar.made = []
    evaluate_path(run, data=digits, train_subset=64, linear_points=3, continuity_k=0, progress=False)
    assert _IterBar.made == []


def test_a_lone_process_logs_without_the_rank_prefix_and_several_keep_it(capsys, monkeypatch):
    from accelerate import PartialState
    from accelerate.logging import get_logger

    from hf_llpf.reporting.logging import configured

    PartialState()
    logger = get_logger("hf_llpf.test_logs_progress")
    capsys.readouterr()
    with configured("info"):
        monkeypatch.delenv("WORLD_SIZE", raising=False)
        logger.info("ceiling %.3g", 0.04218)
        monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun and accelerate launch set for each process
        logger.info("ceiling %.3g", 0.04218)
    assert capsys.readouterr().err.splitlines() == ["hf-llpf: ceiling 0.0422", "hf-llpf: [RANK 0] ceiling 0.0422"]


def test_the_start_line_states_processes_device_and_sharding_and_a_launch_that_started_fewer(monkeypatch):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from hf_llpf.devices.accelerator import describe_launch, launch_line

    one = SimpleNamespace(num_processes=1, device=torch.device("cpu"), distributed_type=DistributedType.NO,
                          mixed_precision="no")  # fmt: skip
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    launch = describe_launch(one)
    assert launch_line(launch) == (
        "1 process(es) on cpu (one process), sharding: none (every process holds the whole model), mixed precision: no"
    )
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what `accelerate launch --num_processes 2` sets
    assert "one process started: accelerate launch runs one process without a GPU" in launch_line(describe_launch(one))
    two = SimpleNamespace(num_processes=2, device=torch.device("cpu"), distributed_type=DistributedType.MULTI_CPU,
                          mixed_precision="no")  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert launch_line(describe_launch(two)).startswith("2 process(es) on cpu (data-parallel, multi_cpu)")


def test_progress_lines_come_per_stage_and_at_least_every_interval_with_an_eta(monkeypatch):
    import hf_llpf.progress as progress

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    said: list[str] = []
    lines = progress.ProgressLines("llpf m2m", total=4, done=1, log=said.append, enabled=True, interval=60)
    for t, done in ((10, 1), (30, 2), (50, 2), (95, 2), (120, 3), (130, 4)):
        clock[0] = 100.0 + t
        lines.update(done, {"tick": t})
    assert said == [
        "llpf m2m: 2/4 stages done, tick 30; 30 s so far, ETA ~60 s",  # a stage in 30 s, two to go
        # A minute of silence at most; the stage under way has outrun the 30 s a stage took: nearly done.
        "llpf m2m: 2/4 stages done, tick 95; 1.6 min so far, ETA ~30 s",
        # Per stage, the geometric mean of the last stage's 90 s and the session's 60 s a stage.
        "llpf m2m: 3/4 stages done, tick 120; 2.0 min so far, ETA ~73 s",
        "llpf m2m: 4/4 stages done, tick 130; 2.2 min so far, last stage arriving",
    ]
    quiet = progress.ProgressLines("x", total=2, done=0, log=said.append, enabled=False)
    quiet.update(1, {})
    assert len(said) == 4


def test_the_eta_prices_the_stages_left_between_the_recent_half_and_all_of_those_done(monkeypatch):
    """A first stage that costs many times the others (a text model's embeddings) is not carried whole to the end."""
    import hf_llpf.progress as progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    said: list[str] = []
    lines = progress.ProgressLines("llpf m2m", total=16, done=0, log=said.append, enabled=True, interval=60)
    for t, done in ((30, 1), (32, 2), (36, 3), (38, 4)):  # 30 s, then 2, 4 and 2 s a stage
        clock[0] = float(t)
        lines.update(done, {})
    etas = [line.rsplit("ETA ~", 1)[1] for line in said]
    # Per stage: the geometric mean of the recent half's mean (30; the last one, 2; the last two, 3 and 3 s) and
    # the session's (30, 16, 12, 9.5 s); times the stages left.
    per_stage = [30.0, (2.0 * 16) ** 0.5, (3.0 * 12) ** 0.5, (3.0 * 9.5) ** 0.5]
    assert etas == [_dur(p * left) for p, left in zip(per_stage, (15, 14, 13, 12), strict=True)]
    assert etas == ["7.5 min", "79 s", "78 s", "64 s"]


def _dur(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def test_the_run_log_holds_what_was_said_before_and_after_the_folder_opened(tmp_path):
    import logging

    from hf_llpf.reporting.logging import RunLog

    logger = logging.getLogger("hf_llpf.test")
    saved = logging.getLogger("hf_llpf").level
    logging.getLogger("hf_llpf").setLevel(logging.INFO)
    try:
        log = RunLog()
        logger.info("before the run directory exists")
        log.open(tmp_path / "hf_llpf.log")
        logger.warning("after")
        log.close()
        logger.info("not written: the run is over")
    finally:
        logging.getLogger("hf_llpf").setLevel(saved)
    lines = (tmp_path / "hf_llpf.log").read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in lines] == ["INFO before the run directory exists", "WARNING after"]
    assert oct((tmp_path / "hf_llpf.log").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    (tmp_path / "target").write_text("someone's file\n")
    (tmp_path / "link.log").symlink_to(tmp_path / "target")
    other = RunLog()
    with pytest.raises(OSError):  # never written through a link
        other.open(tmp_path / "link.log")
    other.close()
    assert (tmp_path / "target").read_text() == "someone's file\n"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_library_s_repeated_messages_are_said_once_with_their_count(capsys):
    import logging

    from hf_llpf.reporting.logging import configured, folded

    library, api = logging.getLogger("huggingface_hub"), logging.getLogger("huggingface_hub.hf_api")
    before = (list(library.handlers), library.propagate)
    with configured("info"), folded("huggingface_hub"):
        for _ in range(3):
            api.warning("No files have been modified since last commit.")
        api.warning("another message")
        assert capsys.readouterr().err == ""  # held until the block ends
    assert capsys.readouterr().err.splitlines() == [
        "hf-llpf: huggingface_hub (3 times): No files have been modified since last commit.",
        "hf-llpf: huggingface_hub: another message",
    ]
    assert (library.handlers, library.propagate) == before  # the library's own handlers are back


class _Written:
    """What ``connected`` reads of a path: its length and run summary."""

    summary = {"run": {"method": "m2m", "ticks": 40, "sgd_iters": 300, "stage_starts": [0, 12]}}

    def __len__(self) -> int:
        return 7


def test_the_end_line_states_the_wall_time_against_an_endpoint_s_training(tmp_path):
    import json

    from hf_llpf.cli.render import connected, endpoint_training

    a, b, damaged, untimed = (tmp_path / n for n in ("a", "b", "damaged", "untimed"))
    for folder, text in ((a, json.dumps({"seconds": 20.0, "iterations": 500})), (b, json.dumps({"seconds": 8})),
                         (damaged, "{not json"), (untimed, json.dumps({"seconds": 0})),):  # fmt: skip
        folder.mkdir()
        (folder / "metrics.json").write_text(text)
    assert endpoint_training(str(a), str(b)) == ("A", {"seconds": 20.0, "iterations": 500})
    assert endpoint_training("org/a", str(b)) == ("B", {"seconds": 8})
    for pair in (("org/a", "org/b"), (str(damaged), str(untimed)), (str(tmp_path / "none"), "org/b")):
        assert endpoint_training(*pair) is None, pair
    base = "path written to runs/x (m2m): 7 points, 40 ticks, 300 SGD iterations, stages started at ticks [0, 12]"
    assert connected("runs/x", _Written(), wall=50.0, training=endpoint_training(str(a), str(b))) == (
        base + "; 50.0 s wall time, 2.5× the training of endpoint A (20.0 s for 500 iterations, as its metrics.json "
        "records)"
    )
    assert connected("runs/x", _Written(), wall=50.0, training=("B", {"seconds": 8})) == (
        base + "; 50.0 s wall time, 6.2× the training of endpoint B (8.0 s, as its metrics.json records)"
    )
    assert connected("runs/x", _Written(), wall=50.0, training=None) == base  # not known: nothing said
