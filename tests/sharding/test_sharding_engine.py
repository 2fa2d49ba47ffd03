"""``sharding: fsdp``: whole M2M runs, and a cross-sphere run (M2O, then M2M), with the working model sharded by
FSDP2 over two gloo processes, against the same runs data-parallel (docs/distributed.md, "Models larger than one
device"); and what it refuses.

The slow test starts ONE torchrun launch (this file as its script) that runs both connects one after the other in
the same two processes, then compares their run directories here.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import fsdp_pairs, run_python
from read_spy import ReadSpy
from safetensors.torch import load_file

import hf_llpf
from hf_llpf import geometry
from hf_llpf.algorithms.cross_sphere import larger_variances_are_a
from hf_llpf.algorithms.sharded import check_sharding, repeated_blocks
from hf_llpf.algorithms.spheres import choose_method, sphere_report, sphere_rows
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import Endpoint

torch.set_num_threads(1)

# The same settings for both runs, every tensor moving from the first tick (fdf=false) so that the path reaches θ_B
# in a few ticks; the GPT-2 pair without a ceiling (plain LLPF), the CNN pair under a set one (the
# certificate's probes run on the sharded model, every process making the same passes).
SETTINGS = {"method": "m2m", "fdf": False, "step_r": 0.25, "max_ticks": 8, "min_iters": 2, "max_iters": 4,
            "repair_budget": 8, "sync_check_every": 1, "seed": 0}  # fmt: skip
CEILING = {"gpt2": None, "cnn": 0.3, "sphere": None}  # the CNN's: generous, so that eight ticks reach θ_B under it
# The cross-sphere run ("sphere"): the GPT-2 pair with B's weight matrices scaled by SPHERE_SCALE (B on the larger
# sphere: B walks inward onto A's sphere, published reversed), chosen by method: auto's sphere check; M2O's step long
# enough that it reaches its target within a few ticks.
SPHERE_SCALE = 1.6
SPHERE = {**SETTINGS, "method": "auto", "loss_ceiling": None, "m2o": {"step_a": 0.2, "max_ticks": 6},
          "checkpoint_every": 2}  # fmt: skip
# The sharded cross-sphere run is also killed right after one of its checkpoints and resumed, once in each phase.
# They come after M2O's point 0, its tick 2 and its end, then M2M's point 0 and tick 2: the 2nd is inside the M2O
# phase (the walker's state carried), the 5th inside the M2M phase (M2O's state and its end carried).
KILLED_AFTER = {"m2o": 2, "m2m": 5}
ENDS = {"gpt2": ("gpt2_0", "gpt2_1"), "cnn": ("cnn_0", "cnn_1"), "sphere": ("gpt2_0", "gpt2_big")}
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
        a, b = (str(root / e) for e in ENDS[name])
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
    a, b = (str(root / e) for e in ENDS["sphere"])
    hf_llpf.connect(a, b, str(root / "corpus.txt"), config=SPHERE, run_dir=root / "sphere_none", progress=False)
    _run_by_rows(root, "sphere", str(root / "corpus.txt"), {**SPHERE, "sharding": "fsdp"})
    for phase in KILLED_AFTER:
        _killed_and_resumed(a, b, str(root / "corpus.txt"), {**SPHERE, "sharding": "fsdp"}, root, phase)


class _Killed(Exception):
    """Stands for the processes' death right after a checkpoint."""


def _killed_and_resumed(a: str, b: str, data: str, config: dict, root: Path, phase: str) -> None:
    """The sharded run killed right after its ``KILLED_AFTER[phase]``-th checkpoint (``sphere_resumed_<phase>``, a
    copy of it kept as it was: ``sphere_killed_<phase>``), then its ``--resume``."""
    from unittest import mock

    from hf_llpf.run import sharded_state

    real, count, run_dir = sharded_state.save, {"n": 0}, root / f"sphere_resumed_{phase}"

    def save(*args, **kwargs):
        real(*args, **kwargs)
        count["n"] += 1
        if count["n"] == KILLED_AFTER[phase]:
            raise _Killed

    with mock.patch.object(sharded_state, "save", save), pytest.raises(_Killed):
        hf_llpf.connect(a, b, data, config=config, run_dir=run_dir, progress=False)
    if torch.distributed.get_rank() == 0:
        shutil.copytree(run_dir, root / f"sphere_killed_{phase}")
    torch.distributed.barrier()
    hf_llpf.connect(a, b, data, config=config, run_dir=run_dir, exist="resume", progress=False)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, small_cnn_pair):
    """A tiny GPT-2 pair (tied lm_head/wte) with a text file, the small_cnn pair (BatchNorm) on digits, and
    ``gpt2_big``: the GPT-2 B with its weight matrices scaled by SPHERE_SCALE (on a larger sphere)."""
    from safetensors.torch import save_file

    root = fsdp_pairs(tmp_path_factory.mktemp("fsdp"), small_cnn_pair)
    shutil.copytree(root / "gpt2_1", root / "gpt2_big")  # the config and the tokenizer with it
    weights = load_file(root / "gpt2_1" / "model.safetensors")  # (the tied lm_head is stored as wte alone)
    scaled = {k: v * SPHERE_SCALE if v.ndim > 1 else v for k, v in weights.items()}
    save_file(scaled, root / "gpt2_big" / "model.safetensors", metadata={"format": "pt"})
    return root


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
    ends = {0: (0, root / ENDS[name][0]), -1: (-1, root / ENDS[name][1])}
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
        # The phases point by point (M2O's sharded distance columns with them), and the same path.
        assert [p["phase"] for p in points["fsdp"]] == [p["phase"] for p in points["none"]]
        for column in ("dist_a", "dist_b"):
            assert [p[column] for p in points["fsdp"]] == pytest.approx([p[column] for p in points["none"]], rel=1e-5)
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

    shapes = {k: tuple(v.shape) for k, v in load_file(root / ENDS[name][0] / "model.safetensors").items()}
    buffers = {k for k in shapes if "running_" in k or k.endswith("num_batches_tracked")}
    for rank in (0, 1):
        reads = json.loads((root / f"{name}_reads_{rank}.json").read_text())
        ends = [r for r in reads if Path(r[0]).parent.name in ENDS[name]]
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
    for name in ("gpt2", "cnn", "sphere"):
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
    # The main process speaks, once per run (the cross-sphere pair: data-parallel, sharded, then killed and resumed
    # in each phase).
    assert starts == [line["none"], line["fsdp"], line["fsdp"]] * 2 + [line["none"], *[line["fsdp"]] * 5], starts
    for name in ("gpt2", "cnn"):
        _same_as_whole_load(root, name)
    for name in ("gpt2", "cnn", "sphere"):
        _read_by_rows_only(root, name)
    # The final check takes every pass the sharded run made on the same bits (every process holds them: the points
    # on disk, the buffers shared), as a single process does; none is measured again.
    final = hf_llpf.RunPath(root / "cnn_fsdp").summary["run"]["certification"]["final_check"]
    assert final["reused"] == final["points"] + final["segments"] == 19 and final["examples_run"] == 0
    _compare(root, "gpt2", ["config.json", "generation_config.json", "model.safetensors"])
    _compare(root, "cnn", ["config.json", "model.safetensors"])  # BatchNorm's running statistics included
    _compare(root, "sphere", ["config.json", "generation_config.json", "model.safetensors"])
    # method: auto chose cross-sphere from the rows under fsdp as from the whole models data-parallel: B walked inward.
    chosen = [x.rsplit("] ", 1)[-1] for x in result.stderr.splitlines() if "cross-sphere M2O then M2M" in x]
    assert len(chosen) == 6 and len(set(chosen)) == 1, chosen  # the same figure from the rows as from whole models
    sphere = {s: json.loads((root / f"sphere_{s}" / "path_metrics.json").read_text()) for s in ("none", "fsdp")}
    for metrics in sphere.values():
        assert metrics["summary"]["run"]["method"] == "cross-sphere"
        phases = [p["phase"] for p in metrics["points"]]
        assert phases[0] == "start" and "m2m" in phases and "m2o_reversed" in phases and phases[-1] == "end", phases
    for phase in KILLED_AFTER:
        _resumed_bit_for_bit(root, phase)
    for point in sorted([*(root / "gpt2_fsdp" / "points").iterdir(), *(root / "sphere_fsdp" / "points").iterdir()]):
        model = AutoModelForCausalLM.from_pretrained(point)  # plain transformers, the tie kept
        assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
        weights = load_file(point / "model.safetensors")
        assert torch.equal(model.transformer.wte.weight.detach(), weights["transformer.wte.weight"])


def _resumed_bit_for_bit(root: Path, phase: str) -> None:
    """The sharded cross-sphere run killed inside its ``phase`` and resumed is the uninterrupted one: every point
    (both phases, M2O's published reversed) bit for bit, the same ticks; two stretches."""
    killed = root / f"sphere_killed_{phase}"
    doc = json.loads((killed / "checkpoint" / "state.json").read_text())
    assert doc["format"] == "sharded-1" and doc["world"] == 2
    held = doc["ranks"][0]["state"]["state"]  # the cross-sphere state: each phase's, None before it began
    if phase == "m2m":
        stopped = json.loads((killed / "path_metrics.json").read_text())["points"]
        assert [p["phase"] for p in stopped] == ["start", "m2m", "m2m"]  # killed at M2M's tick 2, M2O's points aside
        assert held["m2o"] is not None and held["m2m"] is not None
    else:  # killed at M2O's tick 2: no point is published yet (M2O's are published reversed, after its end)
        assert not (killed / "points").exists() and not (killed / "path_metrics.json").exists()
        assert held["m2o"] is not None and held["walked"] is None and held["m2m"] is None
    names = {"fsdp": root / "sphere_fsdp", "resumed": root / f"sphere_resumed_{phase}"}
    runs = {r: json.loads((d / "path_metrics.json").read_text()) for r, d in names.items()}
    whole, resumed = runs["fsdp"], runs["resumed"]
    assert [p["point"] for p in resumed["points"]] == [p["point"] for p in whole["points"]]
    rows = {r: [{k: v for k, v in t.items() if "time" not in k} for t in m["ticks"]] for r, m in runs.items()}
    assert rows["resumed"] == rows["fsdp"]
    assert len(resumed["summary"]["run"]["stretches"]) == 2
    for p in whole["points"]:
        x, y = (load_file(names[r] / p["point"] / "model.safetensors") for r in ("resumed", "fsdp"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in y), (phase, p["point"])


def test_refusals_name_the_setting_the_value_and_what_is_allowed(tmp_path):
    config = ConnectConfig(sharding="fsdp", method="linear", point_dtype="bf16", mixed_precision="bf16")
    with pytest.raises(ConfigError) as err:
        check_sharding(config, SimpleNamespace(num_processes=1), exist="resume")
    text = str(err.value)
    for part in ("sharding='fsdp': this run has 1 process(es) and no process group; allowed: processes started by "
                 "torchrun",
                 "method='linear' under sharding='fsdp': allowed: 'auto', 'm2m', 'cross-sphere'",
                 "mixed_precision='bf16' under sharding='fsdp': allowed: 'no'",
                 "point_dtype='bf16' under sharding='fsdp': allowed: 'auto'"):  # fmt: skip
        assert part in text, text
    assert "--resume" not in text  # a sharded run is resumable (tests/sharding/test_sharded_resume.py)
    # The walk to the origin alone (m2o, which connect refuses anyway) stays refused; M2O runs sharded in cross-sphere.
    allowed = "allowed: 'auto', 'm2m', 'cross-sphere'"
    with pytest.raises(ConfigError, match=f"method='m2o' under sharding='fsdp': {allowed}"):
        check_sharding(ConnectConfig(sharding="fsdp", method="m2o"), SimpleNamespace(num_processes=1))
    fine = SimpleNamespace(num_processes=2)
    with mock.patch.object(torch.distributed, "is_initialized", return_value=True):
        for method in ("auto", "m2m", "cross-sphere"):  # with two processes in a group: nothing to refuse
            check_sharding(ConnectConfig(sharding="fsdp", method=method), fine)
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


def test_the_sphere_check_takes_a_given_report_and_the_walker_the_larger_variances():
    """What the sharded route feeds the sphere check: rows built from each tensor's variances (merged from the shards
    there) are :func:`sphere_report`'s; a given report is measured only when ``auto`` asks for it."""
    from tiny_models import tiny_gpt2

    a, b = tiny_gpt2(0), tiny_gpt2(1)
    with torch.no_grad():
        for p in b.parameters():
            if p.ndim > 1:
                p.mul_(SPHERE_SCALE)
    report = sphere_report(a, b)
    names = [r["name"] for r in report]
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    va, vb = (geometry.variances([p[n] for n in names]) for p in (pa, pb))
    assert sphere_rows(names, [pa[n].ndim for n in names], [pa[n].numel() for n in names], va, vb) == report
    ea, eb, asked = Endpoint(a, "transformers", "a"), Endpoint(b, "transformers", "b"), []

    def given() -> list[dict]:
        asked.append(True)
        return report

    assert choose_method(ea, eb, ConnectConfig(method="m2m"), report=given) == "m2m" and asked == []
    assert choose_method(ea, eb, ConnectConfig(method="auto"), report=given) == "cross-sphere" and asked == [True]
    weights = [i for i, n in enumerate(names) if pa[n].ndim > 1]
    assert larger_variances_are_a(va[weights], vb[weights]) is False  # B, scaled up, walks
    assert larger_variances_are_a(vb[weights], va[weights]) is True


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))


def test_the_cli_leaves_a_sharded_runs_endpoints_to_connect_which_reads_them_by_rows(small_cnn_pair, monkeypatch):
    """Under devices.sharding=fsdp (or accelerate launch --use_fsdp) `hf-llpf connect` hands connect the two folders,
    which it reads by rows; loaded here, each process would hold both endpoints whole (the whole-load route)."""
    import argparse

    from hf_llpf.cli.connect import _endpoints

    a, b = (str(folder) for folder in small_cnn_pair)
    args = argparse.Namespace(a=a, b=b, arch=None, repeats=1)
    assert _endpoints(args, ConnectConfig(sharding="fsdp")) == (a, b)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert _endpoints(args, ConnectConfig()) == (a, b)
    loaded = _endpoints(args, ConnectConfig(sharding="none"))  # a sharding the settings name is kept
    assert all(isinstance(e, Endpoint) for e in loaded)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert all(isinstance(e, Endpoint) for e in _endpoints(args, ConnectConfig()))
    repeats = argparse.Namespace(a=a, b=b, arch=None, repeats=2)  # repeats run unsharded: loaded once here
    assert all(isinstance(e, Endpoint) for e in _endpoints(repeats, ConnectConfig(sharding="fsdp")))
