"""hf_llpf.sharding: the tick's tensor maths on FSDP2 shards equals the unsharded maths (docs/distributed.md).

One launch of two gloo processes on the CPU checks every sharded function against :mod:`hf_llpf.geometry` on the
whole tensors (synthetic tensors of every kind, uneven splits, a one-row and an empty shard) and on a tiny GPT-2
(tied ``lm_head``/``wte``) and a CNN with BatchNorm under ``fully_shard``; each process writes its measured
errors, which the tests read. On a mesh of one process every function must give the unsharded results bit for
bit.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from hf_llpf import geometry, sharding
from hf_llpf.errors import CorruptCheckpointError, EndpointMismatchError, ShardingError

torch.set_num_threads(1)

TOLERANCE = 1e-6  # relative, sharded against unsharded (docs/distributed.md, "Models larger than one device")


# ------------------------------------------------------------------------------------------------ shared fixtures
def kinds(seed: int) -> dict[str, torch.Tensor]:
    """Tensors of every kind the models have, with row counts that split unevenly over two processes."""
    g = torch.Generator().manual_seed(seed)
    return {
        "conv": torch.randn(17, 3, 3, 3, generator=g) * 0.1,  # 9 + 8 rows
        "linear": torch.randn(33, 20, generator=g) * 0.05,  # 17 + 16
        "layernorm": 1 + 0.002 * torch.randn(37, generator=g),  # near 1: a one-pass E[x²] − E[x]² fails here
        "bias": torch.randn(5, generator=g) * 0.01,  # 3 + 2
        "embedding": torch.randn(61, 16, generator=g) * 0.02,
        "one_row": torch.randn(1, 40, generator=g),  # 1 + 0: an empty shard
        "three_rows": torch.randn(3, 8, generator=g),  # 2 + 1: a one-row shard
        "bn_weight": 1 + 0.1 * torch.randn(6, generator=g),
    }


def tiny_cnn(seed: int) -> nn.Module:
    """A conv block with BatchNorm (wrapped by fully_shard) and a linear head (only in the root's group)."""
    torch.manual_seed(seed)
    block = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU())
    model = nn.Sequential(block, nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    model(torch.randn(4, 3, 6, 6))  # running statistics away from their initial values
    return model


def tiny_gpt(seed: int) -> nn.Module:
    from tiny_models import tiny_gpt2

    return tiny_gpt2(seed, n_embd=32, vocab_size=61)


def shard_model(model: nn.Module) -> nn.Module:
    """fully_shard every GPT-2 block or the CNN's conv block, then the root: GPT-2's root takes the rest (the
    embeddings, the final LayerNorm); the CNN's leaves its linear head out (plain parameters, held whole)."""
    from torch.distributed.fsdp import fully_shard

    gpt = hasattr(model, "transformer")
    for block in model.transformer.h if gpt else [model[0]]:
        fully_shard(block)
    fully_shard(model, ignored_params=None if gpt else set(model[2].parameters()))
    return model


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest difference relative to the reference's largest magnitude (elementwise ulp noise stays ~1e-7)."""
    x, ref = x.detach().double(), ref.detach().double()
    diff = float((x - ref).abs().max()) if ref.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff  # an all-zero reference (a zero-initialised bias): absolute


# ---------------------------------------------------------------------------------------- the two-process worker
def _synthetic_errors(mesh, rank: int) -> dict[str, float]:
    from torch.distributed.tensor import Shard, distribute_tensor

    a, b = kinds(0), kinds(1)
    names = list(a)
    torch.manual_seed(2)
    running_var = 1 + 0.05 * torch.rand(6)  # a BatchNorm buffer: a plain tensor, held whole by every process

    def spread() -> list:
        return [distribute_tensor(a[n].clone(), mesh, [Shard(0)]) for n in names] + [running_var.clone()]

    whole_a, whole_b = [a[n] for n in names] + [running_var], [b[n] for n in names] + [running_var * 1.01]
    err: dict[str, float] = {}
    shards = spread()
    rows = [sharding.row_range(a[n].shape[0], rank=rank, world=2) for n in names]
    err["shard_rows_mismatch"] = float(sum(
        tuple(s.to_local().shape[:1]) != (stop - start,) or not torch.equal(s.to_local(), a[n][start:stop])
        for s, n, (start, stop) in zip(shards, names, rows)))  # fmt: skip
    local_b = [b[n][start:stop] for n, (start, stop) in zip(names, rows)] + [running_var * 1.01]

    var = sharding.variances(shards)
    ref = geometry.variances(whole_a)
    exact = torch.stack([t.double().var() for t in whole_a])
    err["variances"] = float(((var - ref).abs() / ref).max())
    err["variances_vs_fp64"] = float(((var - exact).abs() / exact).max())
    ln = shards[names.index("layernorm")].to_local()  # the naive one-pass formula on the same shards, in float32
    sums = torch.stack([ln.sum(), (ln * ln).sum(), torch.tensor(float(ln.numel()))])
    torch.distributed.all_reduce(sums)
    n = float(sums[2])
    naive = (float(sums[1]) - float(sums[0]) ** 2 / n) / (n - 1)
    err["naive_layernorm"] = abs(naive - float(exact[names.index("layernorm")])) / float(
        exact[names.index("layernorm")]
    )

    dist = sharding.distances(shards, local_b)
    ref_dist = geometry.distances(whole_a, whole_b)
    err["distances"] = float(((dist - ref_dist).abs() / ref_dist).max())
    origin = sharding.distance_to_origin(shards)
    err["distance_to_origin"] = float(((origin - geometry.distance_to_origin(whole_a)).abs() / origin).max())
    total = geometry.total_distance(whole_a, whole_b)
    err["total_distance"] = abs(sharding.total_distance(shards, local_b) - total) / total
    cos = geometry.cosine_similarity(whole_a, whole_b)
    err["cosine_similarity"] = abs(sharding.cosine_similarity(shards, local_b) - cos) / abs(cos)

    ref_moved = [t.clone() for t in whole_a]
    ref_rem = geometry.move_toward_(ref_moved, whole_b, step_a=0.3, step_f=0.05)
    rem = sharding.move_toward_(shards, local_b, step_a=0.3, step_f=0.05)
    err["move_remaining"] = float(((rem - ref_rem).abs() / ref_rem.clamp_min(1e-300)).max())
    full = [s.full_tensor() for s in shards[:-1]] + [shards[-1]]
    err["move"] = max(_rel(x, r) for x, r in zip(full, ref_moved))

    targets = geometry.variances(whole_b)
    geometry.project_to_variance_(ref_moved, targets)
    sharding.project_to_variance_(shards, targets)
    full = [s.full_tensor() for s in shards[:-1]] + [shards[-1]]
    err["correction"] = max(_rel(x, r) for x, r in zip(full, ref_moved))
    reached = geometry.variances(full)
    err["corrected_variance"] = float(((reached - geometry.variances(ref_moved)).abs() / targets).max())

    shards = spread()  # step_a = 1: every tensor lands on its target, bit for bit, on every process
    sharding.move_toward_(shards, local_b, step_a=1.0, step_f=0.0)
    landed = [s.full_tensor() for s in shards[:-1]] + [shards[-1]]
    err["landing_bits_differ"] = float(sum(not torch.equal(x, y) for x, y in zip(landed, whole_b)))
    return err


def _low_precision_errors(mesh, rank: int) -> dict[str, float]:
    """bfloat16 and float16 tensors: the scalars to 1e-6; moves and corrections within one rounding of the dtype."""
    from torch.distributed.tensor import Shard, distribute_tensor

    err = {}
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a = {n: t.to(dtype) for n, t in kinds(0).items()}
        b = {n: t.to(dtype) for n, t in kinds(1).items()}
        whole_a, whole_b = list(a.values()), list(b.values())
        shards = [distribute_tensor(t.clone(), mesh, [Shard(0)]) for t in whole_a]
        local_b = [t[slice(*sharding.row_range(len(t), rank=rank, world=2))] for t in whole_b]
        ref_var, ref_dist = geometry.variances(whole_a), geometry.distances(whole_a, whole_b)
        var_err = ((sharding.variances(shards) - ref_var).abs() / ref_var).max()
        dist_err = ((sharding.distances(shards, local_b) - ref_dist).abs() / ref_dist).max()
        err[f"{label}_scalars"] = max(float(var_err), float(dist_err))
        geometry.move_toward_(whole_a, whole_b, step_a=0.3, step_f=0.05)
        sharding.move_toward_(shards, local_b, step_a=0.3, step_f=0.05)
        err[f"{label}_move"] = max(_rel(s.full_tensor(), r) for s, r in zip(shards, whole_a))
        targets = geometry.variances(whole_b)
        geometry.project_to_variance_(whole_a, targets)
        sharding.project_to_variance_(shards, targets)
        err[f"{label}_correction"] = max(_rel(s.full_tensor(), r) for s, r in zip(shards, whole_a))
    return err


def _model_errors(build, mesh, root: str, label: str) -> dict[str, float]:
    """Move halfway to θ_B then correct, sharded (θ_B read by rows from its file) and on the whole model."""
    a, b = build(0), build(1)
    names = [n for n, _ in a.named_parameters()]  # tied weights once (named_parameters drops the duplicate)
    path = os.path.join(root, f"{label}_b.safetensors")
    if torch.distributed.get_rank() == 0:
        safetensors.torch.save_file({n: p.detach().contiguous() for n, p in b.named_parameters()}, path)
    torch.distributed.barrier()

    ref = {n: p.detach().clone() for n, p in a.named_parameters()}
    target = dict(b.named_parameters())
    geometry.move_toward_([ref[n] for n in names], [target[n] for n in names], step_a=0.5, step_f=0.0)
    var_b = geometry.variances([target[n] for n in names])
    geometry.project_to_variance_([ref[n] for n in names], var_b)

    buffers = {n: t.clone() for n, t in a.named_buffers()}
    model = shard_model(a)
    params = dict(model.named_parameters())
    local_b = sharding.read_local_slices(path, {n: params[n] for n in names})
    b_sharded = dict(shard_model(b).named_parameters())
    err = {f"{label}_slices_differ_from_fully_shard": float(
        sum(not torch.equal(local_b[n], _local(b_sharded[n])) for n in names))}  # fmt: skip
    b_rows = sharding.shards_like([params[n] for n in names], [local_b[n] for n in names])
    # (zero-initialised GPT-2 biases have variance 0 in both: the clamp makes their error 0, not 0/0)
    var_err = (sharding.variances(b_rows) - var_b).abs() / var_b.clamp_min(1e-30)
    err[f"{label}_target_variances"] = float(var_err.max())
    sharding.move_toward_([params[n] for n in names], [local_b[n] for n in names], step_a=0.5, step_f=0.0)
    sharding.project_to_variance_([params[n] for n in names], var_b)
    err[label] = max(_rel(_whole(params[n]), ref[n]) for n in names)
    err[f"{label}_held_whole"] = float(sum(not hasattr(params[n], "to_local") for n in names))
    err[f"{label}_buffers_changed"] = float(sum(not torch.equal(t, buffers[n]) for n, t in model.named_buffers()))
    if label == "gpt2":
        err["gpt2_tie_broken"] = float(model.lm_head.weight is not model.transformer.wte.weight)
        err["gpt2_parameters"] = float(len(names))
    else:  # BatchNorm buffers in a variance call: held whole, counted once
        bufs = [t for n, t in model.named_buffers() if t.is_floating_point()]
        err["cnn_buffer_variances"] = float((sharding.variances(bufs) - geometry.variances(bufs)).abs().max())
    return err


def _m2o_errors(build, example: torch.Tensor, label: str) -> dict[str, float]:
    """One M2O move (docs/algorithm.md §6: the clamped shrink, the norm-layer compensation, the AngleConformal rates)
    on the sharded model against the whole model; the steps make some tensors land on their target variance."""
    from types import SimpleNamespace

    from hf_llpf.algorithms.base import Context
    from hf_llpf.algorithms.m2o import M2O
    from hf_llpf.algorithms.repair import RepairTrainer
    from hf_llpf.config import ConnectConfig
    from hf_llpf.config import build as build_config
    from hf_llpf.stages import build_stages

    config = build_config(ConnectConfig, {"m2o": {"step_a": 0.05, "step_f": 0.05, "target_variance": 0.85}})
    whole = build(0)
    plan = build_stages(whole, example)
    walks = []
    for model in (whole, shard_model(build(0))):  # (neither is wrapped: no repair runs here)
        group = SimpleNamespace(num_processes=2, process_index=torch.distributed.get_rank())
        trainer = RepairTrainer(model, [], lr=0.1, momentum=0.9, weight_decay=0.0, min_iters=1, max_iters=1,
                                loss_threshold=0.0, per_tensor_lr=True, sharded=True, accelerator=group)  # fmt: skip
        walks.append(M2O(Context(model, trainer, plan, config, progress=False), None))
    factors = [w._shrink() for w in walks]
    for w, f in zip(walks, factors):
        w._compensate(f)
        w._set_learning_rates()
    ref, mine = walks
    lr = [[g["lr"] for g in w.trainer.optimizer.param_groups] for w in walks]
    return {
        f"{label}_m2o_factors": float(((factors[1] - factors[0]).abs() / factors[0]).max()),
        f"{label}_m2o_reached_differ": float(ref._reached_now != mine._reached_now),
        f"{label}_m2o_reached": float(sum(ref._reached_now)),
        f"{label}_m2o_clamped": float(sum(r and 0 < f < 1 for r, f in zip(ref._reached_now, factors[0].tolist()))),
        f"{label}_m2o_moved": float(len(ref.moved)),
        f"{label}_m2o_params": max(_rel(_whole(p), r) for p, r in zip(mine.moved + mine.norms, ref.moved + ref.norms)),
        f"{label}_m2o_lr": max(abs(x - y) / y for x, y in zip(*lr)),
        f"{label}_m2o_lr_set": float(sum(x != 0.1 for x in lr[0])),
        f"{label}_m2o_held_whole": float(sum(not hasattr(p, "to_local") for p in mine.moved)),
    }


def _refusals(root: str) -> dict[str, str]:
    """The messages of a read from a file that is not safetensors, and of a tensor of another shape."""
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    weight = distribute_tensor(torch.zeros(5, 4), mesh, [Shard(0)])
    out = {}
    bad = os.path.join(root, "bad.safetensors")
    other = os.path.join(root, "other.safetensors")
    if torch.distributed.get_rank() == 0:
        with open(bad, "wb") as f:
            f.write(b"PK\x03\x04 a zip archive, as torch.save writes")
        safetensors.torch.save_file({"w": torch.zeros(4, 4)}, other)
    torch.distributed.barrier()
    for label, path, error in (
        ("not_safetensors", bad, CorruptCheckpointError),
        ("shape", other, EndpointMismatchError),
    ):
        try:
            sharding.read_local_slices(path, {"w": weight})
            out[label] = "not refused"
        except error as err:
            out[label] = str(err)
    try:  # a placement fully_shard does not make (replicated DTensors) is refused, not summed twice
        from torch.distributed.tensor import Replicate

        sharding.variances([distribute_tensor(torch.ones(4), mesh, [Replicate()])])
        out["replicated"] = "not refused"
    except ShardingError as err:
        out["replicated"] = str(err)
    return out


def _one_process_bits(root: str, rank: int) -> dict[str, float]:
    """A mesh of this process alone under fully_shard: every function must be the unsharded one, bit for bit."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.device_mesh import init_device_mesh

    alone = init_device_mesh("cpu", (2, 1), mesh_dim_names=("replicate", "shard"))["shard"]  # (a size-1 mesh)
    model, whole, b = tiny_gpt(0), tiny_gpt(0), tiny_gpt(1)
    names = [n for n, _ in whole.named_parameters()]
    path = os.path.join(root, f"alone_b{rank}.safetensors")
    safetensors.torch.save_file({n: p.detach().contiguous() for n, p in b.named_parameters()}, path)
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block, mesh=alone)
    params = dict(fully_shard(model, mesh=alone).named_parameters())
    local_b = list(sharding.read_local_slices(path, {n: params[n] for n in names}).values())
    mine, ref = [params[n] for n in names], [whole.get_parameter(n).detach() for n in names]
    goal = [b.get_parameter(n).detach() for n in names]
    differ = [
        not torch.equal(sharding.variances(mine), geometry.variances(ref)),
        not torch.equal(sharding.distances(mine, local_b), geometry.distances(ref, goal)),
        not torch.equal(
            sharding.move_toward_(mine, local_b, step_a=0.3, step_f=0.01),
            geometry.move_toward_(ref, goal, step_a=0.3, step_f=0.01),
        ),
    ]
    targets = geometry.variances(goal)
    sharding.project_to_variance_(mine, targets)
    geometry.project_to_variance_(ref, targets)
    differ += [not torch.equal(p.to_local(), r) for p, r in zip(mine, ref)]
    return {"one_process_bits_differ": float(sum(differ)),
            "one_process_sharded": float(sum(isinstance(p, DTensor) for p in mine))}  # fmt: skip


def _point_files(build, root: str, label: str, dtype, max_shard_size) -> dict[str, float]:
    """A point written from the shards against the unsharded writer's folder: file names and bytes."""
    from hf_llpf.models.endpoints import save_model

    whole, model = build(0), shard_model(build(0))
    mine, ref = os.path.join(root, f"{label}_from_shards"), os.path.join(root, f"{label}_whole")
    written = sharding.write_weights_from_shards(model.state_dict(), mine, max_shard_size=max_shard_size, dtype=dtype)
    out = {f"{label}_files_written": float(len(written))}
    if torch.distributed.get_rank() == 0:
        save_model(whole, ref, kind="module", arch={}, dtype=dtype, max_shard_size=max_shard_size)
        names = sorted(os.listdir(ref))
        out[f"{label}_file_names_differ"] = float(names != sorted(os.listdir(mine)))
        out[f"{label}_files"] = float(len(names))
        differ = [Path(ref, n).read_bytes() != Path(mine, n).read_bytes() for n in names]
        out[f"{label}_bytes_differ"] = float(sum(differ))
    torch.distributed.barrier()  # the unsharded folder is written: each process reads its rows of it back
    params = dict(model.named_parameters())
    rows = sharding.read_local_slices(ref, params)
    stored = [_local(p).to(dtype or p.dtype).to(p.dtype) for p in params.values()]
    out[f"{label}_folder_rows_differ"] = float(sum(not torch.equal(rows[n], t) for n, t in zip(params, stored)))
    return out


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.tensor.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2,))
        result = {"errors": _synthetic_errors(mesh, rank), "refusals": _refusals(root)}
        result["errors"].update(_low_precision_errors(mesh, rank))
        result["errors"].update(_model_errors(tiny_gpt, mesh, root, "gpt2"))
        result["errors"].update(_model_errors(tiny_cnn, mesh, root, "cnn"))
        result["errors"].update(_one_process_bits(root, rank))
        result["errors"].update(_m2o_errors(tiny_gpt, torch.randint(0, 61, (2, 8)), "gpt2"))
        result["errors"].update(_m2o_errors(tiny_cnn, torch.randn(4, 3, 6, 6), "cnn"))
        result["points"] = _point_files(tiny_gpt, root, "gpt2", torch.bfloat16, 20_000)  # an index and shards
        result["points"].update(_point_files(tiny_cnn, root, "cnn", None, "5GB"))  # one file, an int64 buffer
        with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    """Each process's measured errors and refusal messages, from one launch of two gloo processes.

    The two processes are started directly (no launcher process importing torch first); each imports this file.
    """
    root = tmp_path_factory.mktemp("sharding")
    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    port = _free_port()
    script = (
        "import sys; from tests.sharding.test_sharding import _worker; "
        "_worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])"
    )
    logs = [open(root / f"rank{r}.log", "w") for r in range(2)]  # files, not pipes: neither process can block
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(r), str(port), str(root)],
            env=env,
            stdout=logs[r],
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for r in range(2)
    ]
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc, log in zip(procs, logs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    tails = "\n".join((root / f"rank{r}.log").read_text()[-3000:] for r in range(2))
    assert [p.returncode for p in procs] == [0, 0], tails
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]


# ---------------------------------------------------------------------------------------------------- the tests
def test_row_range_is_fsdp2_dim0_chunking():
    for rows in (0, 1, 2, 3, 5, 17, 61):
        for world in (1, 2, 3, 4):
            sizes = [len(c) for c in torch.arange(rows).chunk(world)] if rows else []
            sizes += [0] * (world - len(sizes))  # chunk returns fewer pieces; FSDP2 gives the rest empty shards
            got = [sharding.row_range(rows, rank=r, world=world) for r in range(world)]
            assert [stop - start for start, stop in got] == sizes
            assert [start for start, _ in got] == [sum(sizes[:r]) for r in range(world)]


def test_chan_merge_of_uneven_splits_equals_the_whole_in_fp64():
    x = kinds(0)["layernorm"].double()
    for cuts in ([37], [19, 18], [36, 1], [37, 0], [0, 37], [10, 0, 27]):
        parts = x.split(cuts)
        rows = torch.tensor([[[len(p), float(p.mean()) if len(p) else 0.0,
                               float(((p - p.mean()) ** 2).sum()) if len(p) else 0.0]] for p in parts],
                            dtype=torch.float64)  # fmt: skip
        n, mean, m2 = sharding.merge_moments(rows)[0].tolist()
        assert n == 37
        assert abs(mean - float(x.mean())) <= 1e-15
        assert abs(m2 / 36 - float(x.var())) <= 1e-12 * float(x.var())
    whole = torch.tensor([[[37.0, 2.5, 4.0]], [[0.0, 0.0, 0.0]]], dtype=torch.float64)
    assert sharding.merge_moments(whole)[0].tolist() == [37.0, 2.5, 4.0]  # an empty shard changes no bit


@pytest.mark.slow  # one launch of two gloo processes, shared by the tests of this file
def test_two_processes_agree_with_the_unsharded_maths(two_processes):
    for result in two_processes:
        err = result["errors"]
        for key in ("variances", "variances_vs_fp64", "distances", "distance_to_origin", "total_distance",
                    "cosine_similarity", "move_remaining", "move", "correction", "corrected_variance"):  # fmt: skip
            assert err[key] <= TOLERANCE, (key, err[key])
        assert err["shard_rows_mismatch"] == 0  # distribute_tensor's rows are row_range's
        assert err["landing_bits_differ"] == 0  # a step that covers the distance lands bit for bit
        assert err["naive_layernorm"] > 100 * TOLERANCE  # the test tensor does catch a one-pass variance
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):  # within one rounding of the dtype
            assert err[f"{label}_scalars"] <= TOLERANCE, (label, err[f"{label}_scalars"])
            eps = torch.finfo(dtype).eps
            assert err[f"{label}_move"] <= eps and err[f"{label}_correction"] <= eps, (label, err)
    assert two_processes[0]["errors"] == two_processes[1]["errors"]  # the same scalars on every process


def test_an_m2o_move_on_shards_is_the_whole_models(two_processes):
    """The shrink factors (‖θ‖ from the shards' summed squares, the clamp from the merged variances), the moved and
    compensated tensors and the AngleConformal rates: within TOLERANCE of the whole model's, the same on every
    process; the same tensors land on their target (some, not all) on both."""
    for result in two_processes:
        err = result["errors"]
        for label in ("gpt2", "cnn"):
            for key in ("factors", "params", "lr"):
                assert err[f"{label}_m2o_{key}"] <= TOLERANCE, (label, key, err[f"{label}_m2o_{key}"])
            assert err[f"{label}_m2o_reached_differ"] == 0
            assert 0 < err[f"{label}_m2o_reached"] < err[f"{label}_m2o_moved"], (label, err[f"{label}_m2o_reached"])
            assert err[f"{label}_m2o_clamped"] > 0  # a last step that lands on the target variance
            assert err[f"{label}_m2o_lr_set"] > 0  # the weight matrices' rates follow their variance
        assert err["gpt2_m2o_held_whole"] == 0 and err["cnn_m2o_held_whole"] == 2  # the CNN's head: whole, once
    keys = [k for k in two_processes[0]["errors"] if "_m2o_" in k]
    assert [two_processes[0]["errors"][k] for k in keys] == [two_processes[1]["errors"][k] for k in keys]


@pytest.mark.slow  # one launch of two gloo processes, shared by the tests of this file
def test_fully_shard_models_move_and_correct_as_the_whole_model(two_processes):
    for result in two_processes:
        err = result["errors"]
        assert err["gpt2"] <= TOLERANCE and err["cnn"] <= TOLERANCE, (err["gpt2"], err["cnn"])
        assert err["gpt2_target_variances"] <= TOLERANCE and err["cnn_target_variances"] <= TOLERANCE  # θ_B's rows
        assert err["gpt2_slices_differ_from_fully_shard"] == 0 and err["cnn_slices_differ_from_fully_shard"] == 0
        assert err["gpt2_tie_broken"] == 0 and err["gpt2_parameters"] == 28  # lm_head is wte: moved once
        assert err["gpt2_buffers_changed"] == 0 and err["cnn_buffers_changed"] == 0
        assert err["cnn_buffer_variances"] == 0  # held whole by every process, counted once
        assert err["gpt2_held_whole"] == 0 and err["cnn_held_whole"] == 2  # the CNN's head is outside fully_shard


@pytest.mark.slow  # one launch of two gloo processes, shared by the tests of this file
def test_refusals_name_the_file_the_tensor_and_what_is_allowed(two_processes):
    for result in two_processes:
        bad, shape = result["refusals"]["not_safetensors"], result["refusals"]["shape"]
        assert "bad.safetensors: not a readable safetensors file" in bad and "only safetensors" in bad
        assert "other.safetensors: tensor 'w' has shape (4, 4); the model's has shape (5, 4)" in shape
        assert (
            "is placed (Replicate(),) on a 1-D mesh; allowed: Shard(0) on a one-dimensional mesh"
            in (result["refusals"]["replicated"])
        )
    assert "rows 0:3 of it" in two_processes[0]["refusals"]["shape"]
    assert "rows 3:5 of it" in two_processes[1]["refusals"]["shape"]


@pytest.mark.slow  # one launch of two gloo processes, shared by the tests of this file
def test_one_process_gives_the_unsharded_results_bit_for_bit(two_processes):
    for result in two_processes:
        assert result["errors"]["one_process_bits_differ"] == 0
        assert result["errors"]["one_process_sharded"] == 28  # every GPT-2 parameter was a DTensor (on one process)


@pytest.mark.slow  # one launch of two gloo processes, shared by the tests of this file
def test_a_point_written_from_shards_has_the_unsharded_writers_bytes_and_reads_back_by_rows(two_processes):
    main, other = (result["points"] for result in two_processes)
    assert main["gpt2_files"] > 2 and main["cnn_files"] == 1  # shards and an index; one model.safetensors
    for label in ("gpt2", "cnn"):
        assert main[f"{label}_file_names_differ"] == 0 and main[f"{label}_bytes_differ"] == 0
        assert main[f"{label}_files_written"] == main[f"{label}_files"] and other[f"{label}_files_written"] == 0
        assert main[f"{label}_folder_rows_differ"] == 0 and other[f"{label}_folder_rows_differ"] == 0
