"""Which part of each tensor this process holds: a dim-0 chunk (FSDP2's ``Shard(0)``) or the whole tensor.

``torch.distributed.fsdp.fully_shard`` turns every parameter of a wrapped module into a DTensor placed
``Shard(0)`` on a one-dimensional device mesh: process ``r`` of ``W`` holds rows ``[r·c, (r+1)·c)`` of the
tensor's first dimension, ``c = ceil(rows / W)``, cut at the end (the split of ``torch.chunk``): the last
processes may hold fewer rows, one row, or none (an empty shard). Buffers (BatchNorm running statistics) are
not sharded: every process holds them whole, as it holds any plain tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hf_llpf.errors import ShardingError

__all__ = ["ShardGroup", "local_parts", "local_state", "row_range", "shards_like"]


def row_range(rows: int, *, rank: int, world: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` of a tensor's first dimension that process ``rank`` of ``world`` holds.

    FSDP2 and DTensor's ``Shard(0)`` split like ``torch.chunk``: ``ceil(rows / world)`` rows per process, the
    last processes shorter or empty (3 rows over 2 processes: 2 and 1; 1 row: 1 and 0).

    Raises:
        ShardingError: ``rank`` outside ``[0, world)``, or a negative row count.
    """
    if world < 1 or not 0 <= rank < world or rows < 0:
        raise ShardingError(f"rank={rank}, world={world}, rows={rows}: allowed 0 <= rank < world and rows >= 0")
    chunk = -(-rows // world)
    start = min(rank * chunk, rows)
    return start, min(start + chunk, rows)


@dataclass(frozen=True)
class ShardGroup:
    """The processes a list of tensors is spread over.

    Attributes:
        group: the process group of their device mesh (``None`` when no tensor is sharded).
        rank: this process's rank in it.
        world: its number of processes (1: everything is whole here, the unsharded functions apply).
    """

    group: Any = None
    rank: int = 0
    world: int = 1

    @property
    def alone(self) -> bool:
        """True when one process holds every tensor whole."""
        return self.world == 1


def _dtensor_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


def _check_placement(t: Any, k: int) -> None:
    from torch.distributed.tensor import Shard

    mesh = t.device_mesh
    if mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
        raise ShardingError(
            f"tensor #{k} (shape {tuple(t.shape)}) is placed {tuple(t.placements)} on a {mesh.ndim}-D mesh; "
            "allowed: Shard(0) on a one-dimensional mesh (what fully_shard makes), or a plain tensor held whole"
        )


def local_parts(tensors: Sequence[Tensor]) -> tuple[list[Tensor], list[bool], ShardGroup]:
    """This process's part of each tensor, whether that part is a shard, and the group the shards are spread over.

    A DTensor gives its local shard (``to_local()``, a view: in-place updates change the parameter); a plain
    tensor is held whole by every process.

    Args:
        tensors: model tensors (DTensors placed ``Shard(0)`` on one mesh, or plain tensors).

    Returns:
        ``(locals, sharded, group)``: the local tensors, one flag per tensor, and the :class:`ShardGroup`.

    Raises:
        ShardingError: a DTensor placed otherwise than ``Shard(0)`` on a 1-D mesh, or DTensors on different meshes.
    """
    dtensor = _dtensor_class()
    parts, sharded, mesh = [], [], None
    for k, t in enumerate(tensors):
        if dtensor is not None and isinstance(t, dtensor):
            _check_placement(t, k)
            if mesh is None:
                mesh = t.device_mesh
            elif t.device_mesh != mesh:
                raise ShardingError(f"tensor #{k} is on another device mesh than tensor #0; allowed: one mesh")
            parts.append(t.to_local())
            sharded.append(True)
        else:
            parts.append(t)
            sharded.append(False)
    if mesh is None or mesh.size() == 1:
        return parts, sharded, ShardGroup()
    return parts, sharded, ShardGroup(mesh.get_group(), mesh.get_local_rank(), mesh.size())


def local_state(model: Any) -> list[Tensor]:
    """This process's part of every tensor of ``model.state_dict()``, in its order, detached (the whole tensors of a
    model that is not sharded): what a copy of the model's state, taken or put back with ``_foreach`` calls, is."""
    return [t.detach() for t in local_parts(list(model.state_dict().values()))[0]]


def shards_like(model_tensors: Sequence[Tensor], parts: Sequence[Tensor]) -> list[Tensor]:
    """``parts`` (this process's rows of other tensors, e.g. θ_B's from :func:`read_local_slices`) as tensors laid
    out like ``model_tensors``: a DTensor of the same mesh, placement and global shape where the model's is one.

    The functions that read one list of tensors only (:func:`variances`) take their layout from it: rows given as
    plain tensors would count as whole tensors.

    Raises:
        ShardingError: a part whose shape is not the model tensor's local shape.
    """
    local, sharded, _ = local_parts(list(model_tensors))
    out = []
    for k, (t, mine, part, split) in enumerate(zip(model_tensors, local, parts, sharded, strict=True)):
        if part.shape != mine.shape:
            raise ShardingError(
                f"tensor #{k}: this process holds a part of shape {tuple(mine.shape)} but was given "
                f"{tuple(part.shape)}; allowed: the same rows of the same tensor"
            )
        if not split:
            out.append(part)
            continue
        from torch.distributed.tensor import DTensor

        out.append(DTensor.from_local(part, t.device_mesh, t.placements, run_check=False, shape=t.shape,
                                      stride=t.stride()))  # fmt: skip
    return out
