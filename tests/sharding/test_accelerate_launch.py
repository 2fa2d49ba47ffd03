"""``accelerate launch --use_fsdp`` switches a connect's sharded mode on (docs/distributed.md, "Models larger than one
device"): the same path, byte for byte, as ``torchrun ... sharding=fsdp``; settings that name a sharding keep it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT, run_python
from safetensors.torch import load_file

import hf_llpf
from hf_llpf.config import ConnectConfig, build
from hf_llpf.devices.accelerator import launched_sharding

torch.set_num_threads(1)

# A short plain M2M walk of the tiny GPT-2 pair (tied lm_head/wte), every tensor moving from the first tick.
SETTINGS = ["method=m2m", "fdf=false", "step_r=0.5", "max_ticks=4", "min_iters=2", "max_iters=2",
            "loss_ceiling=null", "sync_check_every=1", "seed=0"]  # fmt: skip


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_the_launchs_fsdp_switches_an_unset_sharding_on(monkeypatch, value):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", value)
    config = launched_sharding(build(ConnectConfig, {"data": {"source": "digits"}, "method": "m2m"}))
    assert config.sharding == "fsdp"
    assert config.method == "m2m" and config.data.source == "digits"  # the rest untouched


@pytest.mark.parametrize("given", [{"sharding": "none"}, {"devices": {"sharding": "none"}}])
def test_a_sharding_the_settings_name_is_kept_under_the_launchs_fsdp(monkeypatch, given):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert launched_sharding(build(ConnectConfig, {"data": {"source": "digits"}, **given})).sharding == "none"


@pytest.mark.parametrize("value", [None, "false", "0", ""])
def test_without_the_launchs_fsdp_nothing_changes(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", value)
    config = build(ConnectConfig, {"data": {"source": "digits"}})
    assert launched_sharding(config) is config


def _accelerate_launch(args: list[str]) -> subprocess.CompletedProcess:
    """``accelerate launch --use_fsdp`` of two processes on this machine's CPU (its FSDP plugin is not used)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{REPO_ROOT / 'tests'}"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    done = subprocess.run([*launch, *args], capture_output=True, text=True, timeout=600, env=env, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_accelerate_launch_use_fsdp_gives_the_torchrun_sharded_path(tmp_path):
    from text_fixtures import gpt2_endpoints, write_text_file

    a, b = gpt2_endpoints(tmp_path, steps=20)
    corpus = write_text_file(tmp_path / "corpus.txt")
    common = ["-m", "hf_llpf.cli", "connect", str(a), str(b), "--data", str(corpus), "--no-progress", *SETTINGS]
    done = _accelerate_launch([*common, "--out", str(tmp_path / "accelerate")])
    run_python([*common, "--out", str(tmp_path / "torchrun"), "sharding=fsdp"], processes=2, timeout=600)

    made = hf_llpf.RunPath(tmp_path / "accelerate")
    assert made.summary["run"]["launch"]["sharding"] == "fsdp (each process holds 1/N of every parameter)"
    assert made.summary["run"]["launch"]["processes"] == 2
    assert "2 process(es) on cpu (sharded, multi_cpu), sharding: fsdp" in done.stderr
    assert "sharding: fsdp" in (tmp_path / "accelerate" / "llpf_config.yaml").read_text()
    points = sorted(p.name for p in (tmp_path / "accelerate" / "points").iterdir())
    assert points == sorted(p.name for p in (tmp_path / "torchrun" / "points").iterdir()) and len(points) >= 3
    for name in points:
        ours = load_file(tmp_path / "accelerate" / "points" / name / "model.safetensors")
        theirs = load_file(tmp_path / "torchrun" / "points" / name / "model.safetensors")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
