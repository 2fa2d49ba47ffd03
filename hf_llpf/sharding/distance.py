"""Distances and the move toward a target (docs/algorithm.md §2.1) on tensors spread over processes.

A norm over a whole tensor is the square root of the sum over processes of each shard's sum of squares: each
process sends one float64 scalar per tensor and all add them in rank order, so every process gets the same
distances and takes the same decisions (which tensors land, which stage has arrived). The arrival test of the
tick loop reads only these per-tensor distances, so it needs nothing more to run sharded.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hf_llpf import geometry
from hf_llpf.errors import ShardingError
from hf_llpf.sharding.collectives import sum_scalars
from hf_llpf.sharding.layout import ShardGroup, local_parts

__all__ = ["cosine_similarity", "distance_to_origin", "distances", "move_toward_", "total_distance"]


def _sqnorm(t: Tensor) -> Tensor:
    f = t.detach().reshape(-1)
    if f.dtype not in (torch.float32, torch.float64):
        f = f.float()
    return torch.dot(f, f).to(torch.float64)  # dot accumulates accurately (hf_llpf.geometry's docstring)


def _locals(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The local part of each tensor: a target may come as a DTensor or as this process's slice already."""
    parts, _, _ = local_parts(list(tensors))
    return parts


def _check_shapes(model: list[Tensor], other: list[Tensor]) -> None:
    if len(model) != len(other):
        raise ShardingError(f"tensor lists differ in length: {len(model)} vs {len(other)}")
    for k, (x, y) in enumerate(zip(model, other)):
        if x.shape != y.shape:
            raise ShardingError(
                f"tensor #{k}: this process holds a part of shape {tuple(x.shape)} but was given {tuple(y.shape)}; "
                "allowed: the same rows of the same tensor (hf_llpf.sharding.read_local_slices reads them)"
            )


def _summed(values: list[Tensor], sharded: list[bool], group: ShardGroup, device: torch.device) -> Tensor:
    """Per tensor, the sum over processes of a per-part scalar; a whole tensor counts once (from rank 0)."""
    if not values:
        return torch.zeros(0, dtype=torch.float64, device=device)
    local = torch.stack([v if s or group.rank == 0 else torch.zeros_like(v) for v, s in zip(values, sharded)])
    return sum_scalars(local, group)


def _device(parts: list[Tensor]) -> torch.device:
    return parts[0].device if parts else torch.device("cpu")


def distance_to_origin(tensors: Sequence[Tensor]) -> Tensor:
    """‖θ[k]‖₂ of each whole tensor, as :func:`hf_llpf.geometry.distance_to_origin` (which it is, with one process)."""
    parts, sharded, group = local_parts(list(tensors))
    if group.alone:
        return geometry.distance_to_origin(parts)
    return torch.sqrt(_summed([_sqnorm(t) for t in parts], sharded, group, _device(parts)))


def distances(a: Sequence[Tensor], b: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> Tensor:
    """‖b[k] − a[k]‖₂ of each whole tensor, as :func:`hf_llpf.geometry.distances` (itself, with one process).

    Args:
        a: the model's tensors (DTensors placed ``Shard(0)``, or plain tensors held whole); they set the layout.
        b: the other point's tensors: DTensors of the same layout, or this process's parts of them.
        dtype: the dtype of the differences, as in :func:`hf_llpf.geometry.distances`.

    Returns:
        1-D float64 tensor, the same on every process. Collective over the tensors' mesh.
    """
    parts, sharded, group = local_parts(list(a))
    other = _locals(b)
    _check_shapes(parts, other)
    if group.alone:
        return geometry.distances(parts, other, dtype=dtype)

    def diff(x: Tensor, y: Tensor) -> Tensor:
        return y.detach() - x.detach() if dtype is None else y.detach().to(dtype) - x.detach().to(dtype)

    sq = [_sqnorm(diff(x, y)) for x, y in zip(parts, other)]
    return torch.sqrt(_summed(sq, sharded, group, _device(parts)))


def total_distance(a: Sequence[Tensor], b: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> float:
    """sqrt(Σ_k ‖b[k] − a[k]‖₂²) over the whole tensors, as :func:`hf_llpf.geometry.total_distance`."""
    d = distances(a, b, dtype=dtype)
    return float(torch.sqrt((d * d).sum()))


def cosine_similarity(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """The cosine of the angle between two whole points, as :func:`hf_llpf.geometry.cosine_similarity`."""
    parts, sharded, group = local_parts(list(a))
    other = _locals(b)
    _check_shapes(parts, other)
    if group.alone:
        return geometry.cosine_similarity(parts, other)
    dev = _device(parts)
    rows = []
    for x, y in zip(parts, other):
        fx = x.detach().reshape(-1)
        fx = fx if fx.dtype in (torch.float32, torch.float64) else fx.float()
        rows.append(torch.stack([torch.dot(fx, y.detach().reshape(-1).to(fx.dtype)).to(torch.float64),
                                 _sqnorm(x), _sqnorm(y)]))  # fmt: skip
    dot, na, nb = _summed(rows, sharded, group, dev).sum(0).tolist() if rows else (0.0, 0.0, 0.0)
    denom = (na * nb) ** 0.5
    return float("nan") if denom == 0.0 else max(-1.0, min(1.0, dot / denom))


@torch.no_grad()
def move_toward_(
    current: Sequence[Tensor], target: Sequence[Tensor], *, step_a: float, step_f: float | Tensor
) -> Tensor:
    """Move each whole tensor toward its target by the clamped step, each process on its rows, in place.

    :func:`hf_llpf.geometry.move_toward_` with one process; over several, ‖d‖ is summed over the processes and
    :func:`hf_llpf.geometry.apply_move_` (the same update) moves each process's rows, so a tensor lands (its
    target rows copied) on every process at once. Collective over the tensors' mesh.

    Args:
        current: the model's tensors (DTensors placed ``Shard(0)``, or plain tensors held whole), moved in place.
        target: their targets: DTensors of the same layout, or this process's parts of them.
        step_a: fraction of the remaining distance per move.
        step_f: fixed L2 step length (a scalar or one value per tensor).

    Returns:
        1-D float64 tensor of the remaining distances, the same on every process.
    """
    parts, sharded, group = local_parts(list(current))
    goal = _locals(target)
    _check_shapes(parts, goal)
    if group.alone:
        return geometry.move_toward_(parts, goal, step_a=step_a, step_f=step_f)
    if not parts:
        return torch.zeros(0, dtype=torch.float64)
    diffs = torch._foreach_sub([t.detach() for t in goal], [c.detach() for c in parts])  # this process's rows of d
    dist = torch.sqrt(_summed([_sqnorm(d) for d in diffs], sharded, group, _device(parts)))
    return geometry.apply_move_(parts, goal, diffs, dist, step_a=step_a, step_f=step_f)
