"""Mixed precision and experiment tracking through Accelerate, in a fresh process (its state is per process)."""

import os
import subprocess
import sys

import pytest
import safetensors.torch
import torch

import hf_llpf
from hf_llpf.models.endpoints import load_endpoint

torch.set_num_threads(1)


@pytest.mark.slow
def test_bf16_training_steps_keep_points_fp32_and_tensorboard_logs_every_tick(tmp_path, trained_endpoint):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).symlink_to(trained_endpoint(seed, epochs=4), target_is_directory=True)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hf_llpf.cli", "connect", str(tmp_path / "a"), str(tmp_path / "b")]
    cmd += ["--data", "digits", "--out", str(run), "--no-progress", "--threads", "1"]
    cmd += ["step_r=0.34", "max_iters=5", "repair_budget=8", "mixed_precision=bf16", "report_to=tensorboard"]
    # A set ceiling above these endpoints' straight line (m2m forced, so the path is walked and repaired): this tests
    # precision and logging. A ceiling under the straight line makes this small repair budget shrink the moves for
    # many ticks.
    cmd += ["method=m2m", "loss_ceiling=0.6"]
    result = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]

    path = hf_llpf.RunPath(run)
    assert path.config["devices"]["mixed_precision"] == "bf16"
    assert path.summary["run"]["sgd_iters"] > 0  # repair steps were taken, under bf16 autocast
    # The training steps ran under bf16 autocast; the points (and so moves and corrections) stay fp32.
    for i in (0, len(path) // 2, -1):
        tensors = safetensors.torch.load_file(str(next(path.point_dir(i).glob("*.safetensors"))))
        assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float32}
    b = load_endpoint(tmp_path / "b").model.state_dict()
    assert all(torch.equal(path.state_dict_at(-1)[k], v) for k, v in b.items())  # exact end

    events = list((run / "hf_llpf").glob("events.out.tfevents.*"))  # the scalars (hparams go to a subfolder)
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    ticks = path.summary["run"]["ticks"]
    for tag in ("train_loss", "stage", "dist_b", "sgd_iters"):
        steps = [e.step for e in acc.Scalars(tag)]
        # one value per tick of the loop; the last tick (the snap onto θ_B) has no training loss
        assert steps[: ticks - 1] == list(range(1, ticks)), tag
    assert acc.Scalars("run/sgd_iters")[-1].value == path.summary["run"]["sgd_iters"]
    ceiling = path.summary["run"]["certification"]["ceiling"]
    assert all(e.value == pytest.approx(ceiling, rel=1e-6) for e in acc.Scalars("loss_ceiling"))
    probed = {e.step: e.value for e in acc.Scalars("probe_loss")}
    recorded = {t["tick"]: t["probe_loss"] for t in path.tick_log if t.get("probe_loss") is not None}
    assert probed.keys() == recorded.keys() and len(probed) > 0


def test_report_to_takes_one_name_as_the_trainer_does():
    from hf_llpf.config import ConnectConfig
    from hf_llpf.recipes import apply_overrides

    assert ConnectConfig(report_to="tensorboard").report_to == ["tensorboard"]
    assert ConnectConfig(report_to="tensorboard, wandb").report_to == ["tensorboard", "wandb"]
    assert ConnectConfig(report_to="none").report_to == [] == ConnectConfig().report_to
    assert ConnectConfig(**apply_overrides({}, ["report_to=tensorboard"])).report_to == ["tensorboard"]
