"""Variances and the variance correction (docs/algorithm.md §2.2) on tensors spread over processes.

Each process reduces its own shard to three float64 scalars per tensor, its count ``n``, mean ``μ`` and sum of
squared deviations ``M2`` (each accurate: the mean is accumulated in float64, ``M2`` by ``torch.var``, which
measures deviations from the shard's own mean). The shards' triples are merged with Chan et al.'s parallel
formula in float64:

    n = n_a + n_b,  δ = μ_b − μ_a,  μ = μ_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n

Every term is a sum of non-negative parts, so nothing cancels: a one-pass ``E[x²] − E[x]²`` would lose most
of its digits on tensors whose spread is small next to their mean (LayerNorm weights near 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hf_llpf import geometry
from hf_llpf.errors import ConfigError
from hf_llpf.sharding.collectives import gather_scalars, sum_scalars
from hf_llpf.sharding.layout import ShardGroup, local_parts

__all__ = ["merge_moments", "moments", "project_to_variance_", "variances"]


def _local_moments(t: Tensor, owned: bool) -> Tensor:
    """``(n, μ, M2)`` of this process's part; zeros when another process accounts for it (a whole tensor)."""
    n = t.numel() if owned else 0
    if n == 0:
        return torch.zeros(3, dtype=torch.float64, device=t.device)
    f = t.detach().reshape(-1)
    if f.dtype not in (torch.float32, torch.float64):
        f = f.float()
    mean = torch.sum(f, dtype=torch.float64) / n
    m2 = torch.var(f, correction=0).to(torch.float64) * n if n > 1 else torch.zeros((), dtype=torch.float64)
    return torch.stack([torch.tensor(float(n), dtype=torch.float64, device=t.device), mean, m2.to(t.device)])


def merge_moments(rows: Tensor) -> Tensor:
    """Chan's parallel merge of per-process ``(n, μ, M2)`` rows, in rank order.

    Args:
        rows: ``(processes, K, 3)`` float64: each process's count, mean and sum of squared deviations per tensor.

    Returns:
        ``(K, 3)`` float64: the whole tensors' count, mean and sum of squared deviations. A process with count 0
        leaves the others' figures untouched, bit for bit.
    """
    n, mean, m2 = rows[0, :, 0].clone(), rows[0, :, 1].clone(), rows[0, :, 2].clone()
    for r in range(1, rows.shape[0]):
        nb, mb, m2b = rows[r, :, 0], rows[r, :, 1], rows[r, :, 2]
        total = n + nb
        safe = total.clamp_min(1.0)
        delta = mb - mean
        merged_mean = mean + delta * nb / safe
        merged_m2 = m2 + m2b + delta * delta * n * nb / safe
        mean = torch.where(nb == 0, mean, torch.where(n == 0, mb, merged_mean))
        m2 = torch.where(nb == 0, m2, torch.where(n == 0, m2b, merged_m2))
        n = total
    return torch.stack([n, mean, m2], dim=1)


def _merged(parts: list[Tensor], sharded: list[bool], group: ShardGroup) -> Tensor:
    """``(K, 3)``: count, mean and sum of squared deviations of each whole tensor (one gather for all)."""
    device = parts[0].device if parts else torch.device("cpu")
    local = [_local_moments(t, s or group.rank == 0) for t, s in zip(parts, sharded, strict=True)]
    stacked = torch.stack(local) if local else torch.zeros(0, 3, dtype=torch.float64, device=device)
    return merge_moments(gather_scalars(stacked, group))


def moments(tensors: Sequence[Tensor]) -> Tensor:
    """Count, mean and sum of squared deviations of each whole tensor, from this process's shards.

    Args:
        tensors: DTensors placed ``Shard(0)`` (FSDP2's parameters) or plain tensors held whole.

    Returns:
        ``(K, 3)`` float64, the same on every process. Collective: every process of the group must call it.
    """
    parts, sharded, group = local_parts(list(tensors))
    return _merged(parts, sharded, group)


def variances(tensors: Sequence[Tensor]) -> Tensor:
    """Unbiased element variance of each whole tensor, as :func:`hf_llpf.geometry.variances` gives it.

    With one process (no tensor sharded) this is :func:`hf_llpf.geometry.variances` itself; over several, the
    shards' moments merged (module docstring). Collective over the tensors' mesh.

    Returns:
        1-D float64 tensor, one entry per tensor (0.0 for tensors of at most one element).
    """
    tensors = list(tensors)
    parts, sharded, group = local_parts(tensors)
    if group.alone:
        return geometry.variances(parts)
    stats = _merged(parts, sharded, group)
    n = stats[:, 0]
    return torch.where(n > 1, stats[:, 2] / (n - 1).clamp_min(1.0), torch.zeros_like(n))


def _reduction_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the unsharded correction measures a tensor's mean in (bfloat16/float16 are reduced in float32)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _rounded(values: list[float], dtypes: list[torch.dtype]) -> list[float]:
    """Each value as the unsharded correction holds its mean: rounded to the tensor's reduction dtype."""
    return [float(torch.tensor(v, dtype=torch.float64).to(_reduction_dtype(d))) for v, d in zip(values, dtypes)]


@torch.no_grad()
def project_to_variance_(tensors: Sequence[Tensor], targets: Tensor) -> None:
    """Rescale each whole tensor about its mean onto the variance ``targets[k]``, each process on its shard.

    The same correction as :func:`hf_llpf.geometry.project_to_variance_` (``x ← μ + (x − μ)·sqrt(v/var)``;
    which tensors are left alone is decided the same way, from the whole tensors' figures) and, with one
    process, that function itself. Over several, μ and var come from the merged moments, so every process
    scales its rows by the same factor, and the deviations' remainder that geometry measures is summed over the
    processes (two gathers of scalars in all). Collective over the tensors' mesh.

    Args:
        tensors: the tensors to correct (DTensors placed ``Shard(0)`` or plain tensors), changed in place.
        targets: 1-D tensor of target variances, one per tensor.
    """
    tensors = list(tensors)
    if len(targets) != len(tensors):
        raise ConfigError(f"targets has {len(targets)} entries for {len(tensors)} tensors")
    parts, sharded, group = local_parts(tensors)
    if group.alone:
        geometry.project_to_variance_(parts, targets)
        return
    idx = [i for i, t in enumerate(tensors) if t.numel() > 1 and t.is_floating_point()]
    if not idx:
        return
    stats = _merged([parts[i] for i in idx], [sharded[i] for i in idx], group)
    current = stats[:, 2] / (stats[:, 0] - 1)
    v = targets.detach().to(device=current.device, dtype=torch.float64)[torch.tensor(idx, device=current.device)]
    ok = (current > 0) & (v > 0)
    scales = torch.sqrt(v / current.clamp_min(1e-300))
    flags, means, factors = torch.stack([ok.to(torch.float64), stats[:, 1], scales]).tolist()  # one host sync
    keep = [k for k, flag in enumerate(flags) if flag]
    if not keep:
        return
    xs = [parts[idx[k]] for k in keep]
    mu = [means[k] for k in keep]
    s = [factors[k] for k in keep]
    m = _rounded(mu, [x.dtype for x in xs])  # the mean as geometry holds it (float32 for bfloat16/float16)
    torch._foreach_sub_(xs, m)
    # As in geometry, the deviations' own mean r (what rounding m, and the deviations in a low-precision dtype,
    # left over) is measured and added back as m + r·(1 − s), in the tensor's dtype: the mean stays exact even
    # when s is large. One more scalar per tensor from every process.
    owned = [sharded[idx[k]] or group.rank == 0 for k in keep]
    sums = [torch.sum(x, dtype=torch.float64) if o else torch.zeros((), dtype=torch.float64, device=x.device)
            for x, o in zip(xs, owned, strict=True)]  # fmt: skip
    r = (sum_scalars(torch.stack(sums), group) / stats[keep, 0]).tolist()
    offsets = [
        torch.tensor(rk * (1.0 - sk) + mk, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        for x, rk, sk, mk in zip(xs, r, s, m, strict=True)
    ]
    torch._foreach_mul_(xs, s)
    torch._foreach_add_(xs, offsets)
