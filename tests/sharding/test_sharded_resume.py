"""``sharding: fsdp`` checkpoints and ``--resume`` (docs/distributed.md, "Models larger than one device"): a sharded
run killed right after its 2nd checkpoint and resumed gives, bit for bit, the path of the uninterrupted sharded run.

The slow test starts ONE torchrun launch of two gloo processes (this file as its script) that runs the uninterrupted
run, the killed one (a copy of it kept as it was killed) and its resume, then compares the run directories here.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import fsdp_pairs, run_python
from safetensors.torch import load_file

import hf_llpf
from hf_llpf.errors import CorruptCheckpointError, RunDirectoryError
from hf_llpf.run.ownership import survey
from hf_llpf.run.state import decode
from hf_llpf.sharding import row_range

torch.set_num_threads(1)

# A tiny GPT-2 (lm_head tied to wte) without a ceiling, and the small CNN with BatchNorm on digits under a set ceiling
# (the certificate's probes and the sequential draws carried over); a checkpoint every 2 ticks, so that each run is
# killed at tick 2 (the 1st checkpoint follows point 0) with ticks left to walk.
SETTINGS = {"method": "m2m", "fdf": False, "step_r": 0.25, "max_ticks": 8, "min_iters": 2, "max_iters": 4,
            "repair_budget": 8, "sync_check_every": 1, "seed": 0, "checkpoint_every": 2,
            "sharding": "fsdp"}  # fmt: skip
CEILING = {"gpt2": None, "cnn": 0.3}


class _Killed(Exception):
    """Stands for the processes' death right after a checkpoint."""


def _worker(root: Path) -> None:
    """Run inside torchrun, for each pair: the uninterrupted run, the same run killed after its 2nd checkpoint (every
    process, once the checkpoint is complete; a copy of it kept as it was then), and its ``--resume``."""
    for name, data in (("gpt2", str(root / "corpus.txt")), ("cnn", "digits")):
        a, b, config = str(root / f"{name}_0"), str(root / f"{name}_1"), {**SETTINGS, "loss_ceiling": CEILING[name]}
        hf_llpf.connect(a, b, data, config=config, run_dir=root / f"{name}_whole", progress=False)
        _killed_after_2nd_checkpoint(a, b, data, config, root / f"{name}_resumed")
        if torch.distributed.get_rank() == 0:
            shutil.copytree(root / f"{name}_resumed", root / f"{name}_killed")
        torch.distributed.barrier()
        hf_llpf.connect(a, b, data, config=config, run_dir=root / f"{name}_resumed", exist="resume", progress=False)


def _killed_after_2nd_checkpoint(a: str, b: str, data: str, config: dict, run_dir: Path) -> None:
    from unittest import mock

    from hf_llpf.run import sharded_state

    real, count = sharded_state.save, {"n": 0}

    def save(*args, **kwargs):
        real(*args, **kwargs)
        count["n"] += 1
        if count["n"] == 2:
            raise _Killed

    with mock.patch.object(sharded_state, "save", save):
        try:
            hf_llpf.connect(a, b, data, config=config, run_dir=run_dir, progress=False)
        except _Killed:
            return
    raise AssertionError("the run wrote fewer than 2 checkpoints")


@pytest.fixture(scope="module")
def launched(tmp_path_factory, small_cnn_pair):
    """The root of the launch's run directories (``<pair>_whole``, ``<pair>_killed``, ``<pair>_resumed``)."""
    root = fsdp_pairs(tmp_path_factory.mktemp("fsdp_resume"), small_cnn_pair)
    run_python([__file__, str(root)], processes=2, timeout=900)
    return root


def _rows(metrics: dict) -> list[dict]:
    """The ticks' rows without their timings (which differ from run to run)."""
    return [{k: v for k, v in t.items() if "time" not in k and "seconds" not in k} for t in metrics["ticks"]]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "cnn"])
def test_a_killed_sharded_run_resumes_bit_for_bit(launched, name):
    root = launched
    # Killed after its tick-2 checkpoint: a complete sharded checkpoint, every process's own file.
    killed = root / f"{name}_killed" / "checkpoint"
    doc = json.loads((killed / "state.json").read_text())
    assert doc["format"] == "sharded-1" and doc["world"] == 2
    names = [f"tensors-2-rank-{r}-of-2.safetensors" for r in (0, 1)]
    assert sorted(p.name for p in killed.iterdir()) == sorted(["state.json", *names])  # the 1st's files removed
    stopped = json.loads((root / f"{name}_killed" / "path_metrics.json").read_text())["points"]
    whole = json.loads((root / f"{name}_whole" / "path_metrics.json").read_text())
    assert stopped[-1]["tick"] == 2 < whole["points"][-1]["tick"]
    _holds_its_own_shards(root, name, doc)
    assert survey(root / f"{name}_killed").foreign == []  # the layout's own files: --overwrite may delete them
    # The resumed run is the uninterrupted one: every point bit for bit, the same ticks; two stretches.
    resumed = json.loads((root / f"{name}_resumed" / "path_metrics.json").read_text())
    assert [p["point"] for p in resumed["points"]] == [p["point"] for p in whole["points"]]
    assert len(whole["points"]) >= 4 and _rows(resumed) == _rows(whole)
    assert [s["ticks"] for s in resumed["summary"]["run"]["stretches"]] == [2, whole["points"][-1]["tick"] - 2]
    if CEILING[name] is not None:
        assert resumed["summary"]["run"]["certification"]["certified"] is True
    for p in whole["points"]:
        x, y = (load_file(root / f"{name}_{run}" / p["point"] / "model.safetensors") for run in ("resumed", "whole"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in y), p["point"]


def _holds_its_own_shards(root: Path, name: str, doc: dict) -> None:
    """Each process's file holds its own rows of every parameter (never the whole model) and buffers whole; the two
    processes' momentum is one part each of every parameter's (the tied weight's once), adding up to it."""
    shapes = {k: tuple(v.shape) for k, v in load_file(root / f"{name}_0" / "model.safetensors").items()}
    buffers = {k for k in shapes if "running_" in k or k.endswith("num_batches_tracked")}
    momentum = []
    for rank in (0, 1):
        entry = doc["ranks"][rank]
        state = decode(entry["state"], load_file(root / f"{name}_killed" / "checkpoint" / entry["tensors"]))
        assert state["state"]["loop"]["tick"] == 2
        model = state["state"]["model"]
        for k, shape in shapes.items():
            start, stop = (0, shape[0] if shape else None) if k in buffers else row_range(shape[0], rank=rank, world=2)
            assert tuple(model[k].shape) == ((stop - start, *shape[1:]) if shape else ()), (rank, k, model[k].shape)
        moments = state["state"]["trainer"]["optimizer"]["state"].values()
        momentum.append(sum(m["momentum_buffer"].numel() for m in moments))
    assert momentum == [
        sum(
            math.prod(s[1:]) * (b - a)
            for k, s in shapes.items()
            if k not in buffers
            for a, b in [row_range(s[0], rank=r, world=2)]
        )  # fmt: skip
        for r in (0, 1)
    ]


@pytest.mark.slow
def test_a_sharded_checkpoint_is_refused_with_another_number_of_processes(launched):
    root = launched
    before = {p: p.read_bytes() for p in sorted((root / "gpt2_killed" / "checkpoint").iterdir())}
    a, b, data = str(root / "gpt2_0"), str(root / "gpt2_1"), str(root / "corpus.txt")
    with pytest.raises(RunDirectoryError) as err:  # one process, data-parallel settings otherwise the same
        hf_llpf.connect(a, b, data, config={**SETTINGS, "sharding": "none", "loss_ceiling": None},
                        run_dir=root / "gpt2_killed", exist="resume", progress=False)  # fmt: skip
    text = str(err.value)
    assert "is a sharded run's of 2 processes; this run has 1 process(es)" in text, text
    assert "torchrun --nproc_per_node 2" in text, text
    assert {p: p.read_bytes() for p in sorted((root / "gpt2_killed" / "checkpoint").iterdir())} == before


@pytest.fixture
def group_of_one(tmp_path):
    """A gloo process group of this one process (the collectives of a sharded checkpoint run), destroyed after."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one(tmp_path, group_of_one):
    from hf_llpf.run import sharded_state
    from hf_llpf.run.rundir import atomic_write_text

    folder = tmp_path / "checkpoint"
    first = {"loop": {"tick": 2}, "model": {"w": torch.arange(6.0).reshape(3, 2)}, "rng": (1, [2, 3])}
    sharded_state.save(folder, first, write_text=atomic_write_text)
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "tensors-1-rank-0-of-1.safetensors"]

    def killed(path, text):  # every process's tensor file is in, the state file not yet
        raise KeyboardInterrupt

    second = {**first, "loop": {"tick": 4}, "model": {"w": torch.zeros(3, 2)}}
    with pytest.raises(KeyboardInterrupt):
        sharded_state.save(folder, second, write_text=killed)
    loaded = sharded_state.load(folder)
    assert loaded["loop"] == {"tick": 2} and loaded["rng"] == (1, [2, 3])
    assert torch.equal(loaded["model"]["w"], first["model"]["w"])
    # The next checkpoint goes on from there and removes what the killed one left, and nothing it did not write:
    # another name, or a link named as its own files are (its target untouched).
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"theirs")
    (folder / "tensors-notes.safetensors").write_bytes(b"mine")
    (folder / "tensors-9-rank-0-of-1.safetensors").symlink_to(outside)
    sharded_state.save(folder, second, write_text=atomic_write_text)
    assert sorted(p.name for p in folder.iterdir()) == [
        "state.json", "tensors-10-rank-0-of-1.safetensors", "tensors-9-rank-0-of-1.safetensors",
        "tensors-notes.safetensors"]  # fmt: skip
    assert outside.read_bytes() == b"theirs" and (folder / "tensors-notes.safetensors").read_bytes() == b"mine"
    (folder / "tensors-notes.safetensors").unlink()
    (folder / "tensors-9-rank-0-of-1.safetensors").unlink()
    sharded_state.save(folder, second, write_text=atomic_write_text)
    assert sorted(p.name for p in folder.iterdir()) == ["state.json", "tensors-11-rank-0-of-1.safetensors"]
    assert torch.equal(sharded_state.load(folder)["model"]["w"], torch.zeros(3, 2))
    # A damaged tensor file is refused, naming the folder and the process.
    (folder / "tensors-11-rank-0-of-1.safetensors").write_bytes(b"x")
    with pytest.raises(CorruptCheckpointError, match="is damaged for process 0 .*does not match the hash"):
        sharded_state.load(folder)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
