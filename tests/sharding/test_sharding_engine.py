"""``sharding: fsdp``: a whole M2M run with the working model sharded by FSDP2 over two gloo processes, against the
same run data-parallel (docs/distributed.md, "Models larger than one device"); and what it refuses.

The slow test starts ONE torchrun launch (this file as its script) that runs both connects one after the other in
the same two processes, then compares their run directories here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import fsdp_pairs, run_python
from read_spy import ReadSpy
from safetensors.torch import load_file

import hf_llpf
from hf_llpf.algorithms.sharded import check_sharding, repeated_blocks
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError

torch.set_num_threads(1)

# The same settings for both runs, every tensor moving from the first tick (fdf=false) so that the path reaches θ_B
# in a few ticks; the GPT-2 pair without a ceiling (plain LLPF), the CNN pair under a set one (the
# certificate's probes run on the sharded model, every process making the same passes).
SETTINGS = {"method": "m2m", "fdf": False, "step_r": 0.25, "max_ticks": 8, "min_iters": 2, "max_iters": 4,
            "repair_budget": 8, "sync_check_every": 1, "seed": 0}  # fmt: skip
CEILING = {"gpt2": None, "cnn": 0.3}  # the CNN's: generous, so that eight ticks reach θ_B under it
# Per point, per tensor: |sharded − data-parallel| at most this times the tensor's largest magnitude. The two runs
# differ only in how the gradients are averaged (FSDP2's reduce-scatter against DDP's all-reduce) and in the order
# the per-shard sums of the moves and corrections are added: float32 roundings (docs/distributed.md).
REL_TOL = 1e-5


def _run_by_rows(root: Path, name: str, data: str, config: dict) -> None:
    """The sharded connect reading by rows, every safetensors read recorded (``reads_<rank>.json``) and the readers
    that load a file whole (transformers' ``from_pretrained``, ``safetensors.torch.load_file``) refused outright."""
    from unittest import mock

    import safetensors
    import transformers

    def refused(*args, **kwargs):
        raise AssertionError(f"a whole-file read in the rows route: {args[:1]}")

    spy = ReadSpy(safetensors.safe_open)
    with (mock.patch.object(safetensors, "safe_open", spy),
          mock.patch.object(transformers.PreTrainedModel, "from_pretrained", refused),
          mock.patch("safetensors.torch.load_file", refused)):  # fmt: skip
        a, b = str(root / f"{name}_0"), str(root / f"{name}_1")
        hf_llpf.connect(a, b, data, config=config, run_dir=root / f"{name}_fsdp", progress=False)
    rank = torch.distributed.get_rank()
    (root / f"{name}_reads_{rank}.json").write_text(json.dumps(spy.reads))


def _worker(root: Path) -> None:
    """Run inside torchrun: for each pair, the same connect data-parallel, sharded (reading by rows), and sharded
    through the route before rows were read (both endpoints loaded whole in every process)."""
    import logging

    import hf_llpf.preparation

    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the start lines, as the CLI shows them
    for name, data in (("gpt2", str(root / "corpus.txt")), ("cnn", "digits")):
        a, b = str(root / f"{name}_0"), str(root / f"{name}_1")
        for sharding in ("none", "fsdp", "whole"):
            config = {**SETTINGS, "loss_ceiling": CEILING[name], "sharding": "none" if sharding == "none" else "fsdp"}
            if sharding == "fsdp":
                _run_by_rows(root, name, data, config)
                continue
            hf_llpf.preparation._SHARDED_ROWS = sharding != "whole"
            hf_llpf.connect(a, b, data, config=config, run_dir=root / f"{name}_{sharding}", progress=False)
            hf_llpf.preparation._SHARDED_ROWS = True


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, small_cnn_pair):
    """A tiny GPT-2 pair (tied lm_head/wte) with a text file, and the small_cnn pair (BatchNorm) on digits."""
    return fsdp_pairs(tmp_path_factory.mktemp("fsdp"), small_cnn_pair)


def _files(point: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(point.iterdir())}


def _max_rel(x: dict, y: dict) -> float:
    return max(
        float((x[k].double() - y[k].double()).abs().max() / y[k].double().abs().max().clamp_min(1e-30)) for k in y
    )


def _compare(root: Path, name: str, files: list[str]) -> None:
    """The sharded run's points against the data-parallel run's: the same files, the same companions byte for
    byte, exact endpoints written with the unsharded writer's very bytes. Without a ceiling: the same decisions, the
    points between within REL_TOL, the repair losses within 1e-5 relative. Under the ceiling: both certified, their
    largest probe losses within 10% (the paths may take different decisions: docs/distributed.md)."""
    metrics = {s: json.loads((root / f"{name}_{s}" / "path_metrics.json").read_text()) for s in ("none", "fsdp")}
    points, ticks = {s: metrics[s]["points"] for s in metrics}, {s: metrics[s]["ticks"] for s in metrics}
    tight = CEILING[name] is None
    assert len(points["fsdp"]) >= 4 and points["fsdp"][-1]["phase"] == "end" and points["none"][-1]["phase"] == "end"
    ends = {0: (0, root / f"{name}_0"), -1: (-1, root / f"{name}_1")}
    stored = load_file(ends[0][1] / "model.safetensors")
    pairs = [(points["fsdp"][i], points["none"][i], i) for i in ends]
    if tight:
        assert len(points["fsdp"]) == len(points["none"])
        pairs += [(pf, pn, None) for pf, pn in zip(points["fsdp"][1:-1], points["none"][1:-1], strict=True)]
    for pf, pn, end in pairs:
        sharded, plain = root / f"{name}_fsdp" / pf["point"], root / f"{name}_none" / pn["point"]
        fs, fn = _files(sharded), _files(plain)
        assert sorted(fs) == files == sorted(fn)
        ws, wn = load_file(sharded / "model.safetensors"), load_file(plain / "model.safetensors")
        assert sorted(ws) == sorted(stored)  # the endpoint's own tensors (GPT-2: lm_head.weight left to the tie)
        if end is not None:  # exact endpoints, and the very bytes of the unsharded writer
            assert fs == fn
            assert all(torch.equal(ws[k], v) for k, v in load_file(ends[end][1] / "model.safetensors").items())
        else:
            assert all(fs[f] == fn[f] for f in files if f != "model.safetensors")
            assert _max_rel(ws, wn) <= REL_TOL, (name, pf["point"], _max_rel(ws, wn))
    if tight:
        decisions = {s: [(t["iters"], t.get("step_scale")) for t in ticks[s]] for s in ticks}
        assert decisions["fsdp"] == decisions["none"]  # SGD iterations tick by tick
        # The repair losses (ticks that repaired; the last is the snap onto θ_B) within 1e-5, at their maximum 10%.
        losses = {s: [t["train_loss"] for t in ticks[s] if t["iters"]] for s in ticks}
        assert max(losses["fsdp"]) == pytest.approx(max(losses["none"]), rel=0.10)
        assert losses["fsdp"] == pytest.approx(losses["none"], rel=1e-5)
    else:
        for s in metrics:
            assert metrics[s]["summary"]["run"]["certification"]["certified"] is True, metrics[s]["summary"]["run"]
        probes = {s: max(t["probe_loss"] for t in ticks[s] if "probe_loss" in t) for s in ticks}
        assert probes["fsdp"] == pytest.approx(probes["none"], rel=0.10)


def _same_as_whole_load(root: Path, name: str) -> None:
    """Reading by rows changes nothing: every point, tensor for tensor (torch.equal) and byte for byte, and
    endpoints.json (its sha256 streamed from the files) are those of the route that loaded both endpoints whole.
    The final check's losses are the same on the GPT-2; on the CNN they may differ by rounding (the whole-load route
    evaluated in a channels-last copy, the rows route evaluates in the sharded model: docs/distributed.md)."""
    runs = {r: root / f"{name}_{r}" for r in ("fsdp", "whole")}
    metrics = {r: json.loads((runs[r] / "path_metrics.json").read_text()) for r in runs}
    names = {r: [p["point"] for p in metrics[r]["points"]] for r in runs}
    assert names["fsdp"] == names["whole"] and len(names["fsdp"]) >= 4
    for point in names["fsdp"]:
        rows, whole = (load_file(runs[r] / point / "model.safetensors") for r in ("fsdp", "whole"))
        assert rows.keys() == whole.keys() and all(torch.equal(rows[k], whole[k]) for k in whole), (name, point)
        assert _files(runs["fsdp"] / point) == _files(runs["whole"] / point)
    assert (runs["fsdp"] / "endpoints.json").read_bytes() == (runs["whole"] / "endpoints.json").read_bytes()
    ticks = {r: [(t["iters"], t.get("probe_loss"), t.get("train_loss")) for t in metrics[r]["ticks"]] for r in runs}
    assert ticks["fsdp"] == ticks["whole"]
    final = {r: [p.get("full_loss") for p in metrics[r]["points"]] for r in runs}
    if name == "gpt2":
        assert final["fsdp"] == final["whole"]


def _read_by_rows_only(root: Path, name: str) -> None:
    """No process read a whole endpoint tensor of a parameter sharded over several rows: each read of θ_A's or θ_B's
    files was that process's rows (FSDP2's chunks), or a tensor of one row, or a buffer (held whole)."""
    from hf_llpf.sharding import row_range

    shapes = {k: tuple(v.shape) for k, v in load_file(root / f"{name}_0" / "model.safetensors").items()}
    buffers = {k for k in shapes if "running_" in k or k.endswith("num_batches_tracked")}
    for rank in (0, 1):
        reads = json.loads((root / f"{name}_reads_{rank}.json").read_text())
        ends = [r for r in reads if Path(r[0]).parent.name in (f"{name}_0", f"{name}_1")]
        assert len(ends) >= 2 * len(shapes)  # every tensor of both endpoints was read
        for _, tensor, how, start, stop in ends:
            rows = shapes[tensor][0] if shapes[tensor] else 1
            if tensor in buffers or rows == 1:
                continue
            assert how == "rows", (rank, tensor)
            # Its own rows; the main process also hashes each tensor (endpoints.json) a shard's rows at a time.
            allowed = [row_range(rows, rank=r, world=2) for r in ((0, 1) if rank == 0 else (rank,))]
            assert (start, stop) in allowed, (rank, tensor, start, stop)


@pytest.mark.slow
def test_sharded_paths_equal_data_parallel_paths(pairs):
    from transformers import AutoModelForCausalLM

    root = pairs
    result = run_python([__file__, str(root)], processes=2, timeout=600)
    for name in ("gpt2", "cnn"):
        launch = {s: hf_llpf.RunPath(root / f"{name}_{s}").summary["run"]["launch"] for s in ("none", "fsdp")}
        assert launch["fsdp"]["sharding"] == "fsdp (each process holds 1/N of every parameter)"
        assert launch["none"]["sharding"] == "none (every process holds the whole model)"
    starts = [x.rsplit("] ", 1)[-1] for x in result.stderr.splitlines() if "process(es) on cpu" in x]
    line = {
        "none": "2 process(es) on cpu (data-parallel, multi_cpu), sharding: none (every process holds the whole "
        "model), mixed precision: no",
        "fsdp": "2 process(es) on cpu (sharded, multi_cpu), sharding: fsdp (each process holds 1/N of every "
        "parameter), mixed precision: no",
    }
    assert starts == [line["none"], line["fsdp"], line["fsdp"]] * 2, starts  # the main process speaks, once per run
    for name in ("gpt2", "cnn"):
        _same_as_whole_load(root, name)
        _read_by_rows_only(root, name)
    # The final check takes every pass the sharded run made on the same bits (every process holds them: the points
    # on disk, the buffers shared), as a single process does; none is measured again.
    final = hf_llpf.RunPath(root / "cnn_fsdp").summary["run"]["certification"]["final_check"]
    assert final["reused"] == final["points"] + final["segments"] == 19 and final["examples_run"] == 0
    _compare(root, "gpt2", ["config.json", "generation_config.json", "model.safetensors"])
    _compare(root, "cnn", ["config.json", "model.safetensors"])  # BatchNorm's running statistics included
    for point in sorted((root / "gpt2_fsdp" / "points").iterdir()):
        model = AutoModelForCausalLM.from_pretrained(point)  # plain transformers, the tie kept
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
        weights = load_file(point / "model.safetensors")
        assert torch.equal(model.transformer.wte.weight.detach(), weights["transformer.wte.weight"])


def test_refusals_name_the_setting_the_value_and_what_is_allowed(tmp_path):
    config = ConnectConfig(sharding="fsdp", method="auto", point_dtype="bf16", mixed_precision="bf16")
    with pytest.raises(ConfigError) as err:
        check_sharding(config, SimpleNamespace(num_processes=1), exist="resume")
    text = str(err.value)
    for part in ("sharding='fsdp': this run has 1 process(es) and no process group; allowed: processes started by "
                 "torchrun",
                 "method='auto' under sharding='fsdp': allowed: 'm2m'",
                 "mixed_precision='bf16' under sharding='fsdp': allowed: 'no'",
                 "point_dtype='bf16' under sharding='fsdp': allowed: 'auto'"):  # fmt: skip
        assert part in text, text
    assert "--resume" not in text  # a sharded run is resumable (tests/sharding/test_sharded_resume.py)
    check_sharding(ConnectConfig(method="auto"), SimpleNamespace(num_processes=1))  # none: no check
    # connect refuses it before anything is read or written (the endpoints named here do not even exist).
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="sharding='fsdp': this run has 1 process"):
        settings = {"sharding": "fsdp", "method": "m2m", "loss_ceiling": None}
        hf_llpf.connect(tmp_path / "nope_a", tmp_path / "nope_b", "digits", config=settings, run_dir=run_dir)
    assert not run_dir.exists()
    with pytest.raises(ConfigError, match="sharding='fsdp': the walk to the origin runs unsharded; allowed: 'none'"):
        hf_llpf.walk_to_origin(tmp_path / "nope_a", "digits", config={"sharding": "fsdp"}, run_dir=run_dir)
    assert not run_dir.exists()
    # What fully_shard wraps on its own: the outermost lists of like blocks (GPT-2's layers), then the root.
    from tiny_models import tiny_gpt2

    model = tiny_gpt2()
    assert repeated_blocks(model) == list(model.transformer.h)
    assert repeated_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2))) == []


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
