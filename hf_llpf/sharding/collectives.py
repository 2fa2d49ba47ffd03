"""The only communication the sharded tensor maths needs: a few float64 scalars per tensor, from every process.

Every process receives every process's scalars and combines them in rank order, so all processes compute the
same bits (an all-reduce gives no such promise across backends).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hf_llpf.sharding.layout import ShardGroup

__all__ = ["gather_scalars", "sum_scalars"]


def gather_scalars(local: Tensor, group: ShardGroup) -> Tensor:
    """Every process's ``local`` statistics, stacked in rank order: shape ``(world, *local.shape)``.

    Args:
        local: this process's float64 scalars (e.g. ``(K, 3)``: one row per tensor), on the tensors' device.
        group: the processes to gather from; with one process, ``local[None]``.
    """
    local = local.to(torch.float64).contiguous()
    if group.alone:
        return local.unsqueeze(0)
    parts = [torch.empty_like(local) for _ in range(group.world)]
    torch.distributed.all_gather(parts, local, group=group.group)
    return torch.stack(parts)


def sum_scalars(local: Tensor, group: ShardGroup) -> Tensor:
    """The sum over processes of ``local``, added in rank order (the same bits on every process)."""
    return gather_scalars(local, group).sum(0)
