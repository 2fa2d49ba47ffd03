"""Variance-sphere geometry: pure tensor maths on lists of tensors (docs/algorithm.md §2 and §6).

Every function takes a list of tensors (one per model tensor, e.g. ``[p for p in model.parameters()]``) and
returns per-tensor results as a 1-D float64 tensor on the tensors' device, so callers never loop in Python
over ``.item()`` calls. Reductions run per tensor without host synchronisation (reduction kernels cannot be
batched across tensors of different sizes); element-wise updates go through ``torch._foreach_*`` after a
single host sync per call that decides which tensors to touch.

Accuracy: float32 reductions use ``torch.var``/``torch.mean``/``torch.dot``, which accumulate accurately
(relative error ~1e-7 on 25M-element tensors, measured), and are converted to float64 for the scalar maths.
(``torch.linalg.vector_norm`` on float32 was measured 2e-3 off on 25M elements, so it is not used.)
bfloat16/float16 tensors are reduced in float32; their updates are as exact as their own precision allows.

This module imports only torch (and hf_llpf.errors, which imports nothing but the standard library).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from hf_llpf.errors import ConfigError

__all__ = [
    "LR_POLICIES",
    "angle_conformal_factor",
    "apply_move_",
    "cosine_similarity",
    "distance_to_origin",
    "distances",
    "interpolate_variance",
    "move_toward_",
    "project_to_variance_",
    "step_sizes",
    "total_distance",
    "variances",
]

LR_POLICIES = ("var", "std")

# Division guard only (never a regulariser of the variance itself); far below any real tensor variance.
_TINY = 1e-300


def _device_of(tensors: Sequence[Tensor]) -> torch.device:
    return tensors[0].device if len(tensors) else torch.device("cpu")


def _flat(t: Tensor) -> Tensor:
    """A 1-D view (or copy) of ``t`` in a dtype whose reductions are accurate (float32 or float64)."""
    f = t.detach().reshape(-1)
    if f.dtype not in (torch.float32, torch.float64):
        f = f.float()
    return f


def _sqnorm(t: Tensor) -> Tensor:
    # torch.dot accumulates accurately on CPU and GPU; vector_norm on float32 does not (see module docstring).
    f = _flat(t)
    return torch.dot(f, f)


def _stack64(values: list[Tensor], device: torch.device) -> Tensor:
    if not values:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.stack([v.to(torch.float64) for v in values])


def _check_pair(a: Sequence[Tensor], b: Sequence[Tensor]) -> None:
    if len(a) != len(b):
        raise ConfigError(f"tensor lists differ in length: {len(a)} vs {len(b)}")


def variances(tensors: Sequence[Tensor]) -> Tensor:
    """Unbiased element variance of each tensor: Var θ[k] (the variance sphere, docs/algorithm.md §1-2).

    Args:
        tensors: the tensors θ[k]; any floating dtype.

    Returns:
        A 1-D float64 tensor, one entry per tensor, on the tensors' device. Tensors with at most one element
        (no variance defined) give 0.0; :func:`project_to_variance_` skips them.
    """
    tensors = list(tensors)
    device = _device_of(tensors)
    out = []
    for t in tensors:
        if t.numel() <= 1:
            out.append(torch.zeros((), dtype=torch.float64, device=t.device))
        else:
            out.append(torch.var(_flat(t)))  # unbiased (n - 1), accurate accumulation
    return _stack64(out, device)


@torch.no_grad()
def project_to_variance_(tensors: Sequence[Tensor], targets: Tensor) -> None:
    """Rescale each tensor about its own mean onto the variance sphere ``targets[k]``, in place (algorithm.md §2.2).

    ``x ← mean + (x − mean) · sqrt(v / var(x))``, exactly: unlike the reference there is no ε = 1e-4 added to
    the variances, so the resulting variance equals ``v`` up to float rounding (~1e-7 relative for float32).

    Args:
        tensors: the tensors to correct (modified in place). Tensors with at most one element, non-floating
            tensors and tensors with zero variance (nothing to scale) are left alone.
        targets: 1-D tensor of target variances ``v[k]``, one per tensor. Non-positive targets leave the
            tensor alone (a sphere of radius 0 would erase the tensor; that is M2O's business, not this one's).
    """
    tensors = list(tensors)
    if len(targets) != len(tensors):
        raise ConfigError(f"targets has {len(targets)} entries for {len(tensors)} tensors")
    if not tensors:
        return
    idx = [i for i, t in enumerate(tensors) if t.numel() > 1 and t.is_floating_point()]
    if not idx:
        return
    # Reductions per tensor, no host sync; then one sync to get the scalars the foreach kernels need.
    current = _stack64([torch.var(_flat(tensors[i])) for i in idx], _device_of(tensors))  # (K,)
    means = _stack64([_flat(tensors[i]).mean() for i in idx], _device_of(tensors))  # (K,)
    v = targets.detach().to(device=current.device, dtype=torch.float64)[torch.tensor(idx, device=current.device)]
    ok = (current > 0) & (v > 0)
    scales = torch.sqrt(v / current.clamp_min(_TINY))  # (K,)
    rows = torch.stack([ok.to(torch.float64), means, scales]).tolist()  # the single host sync
    keep = [k for k, flag in enumerate(rows[0]) if flag]
    if not keep:
        return
    xs = [tensors[idx[k]] for k in keep]
    m = [rows[1][k] for k in keep]
    s = [rows[2][k] for k in keep]
    # (x - m) is exact for x near m (Sterbenz), so the scaled deviation keeps full precision.
    torch._foreach_sub_(xs, m)
    # m is the float32 mean; the deviations' own mean r = mean(x) - m is what float32 rounding of m left over.
    # Adding back m + r·(1 - s) instead of m keeps the mean exact even when s is large (no (mean - m)·s drift).
    offsets = [
        (_flat(x).mean().to(torch.float64) * (1.0 - sk) + mk).to(x.dtype) for x, mk, sk in zip(xs, m, s)
    ]  # 0-d tensors on each tensor's device, no host sync
    torch._foreach_mul_(xs, s)
    torch._foreach_add_(xs, offsets)


def distance_to_origin(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm ‖θ[k]‖₂ of each tensor (M2O's distance to its all-zero target, docs/algorithm.md §6).

    Args:
        tensors: the tensors.

    Returns:
        1-D float64 tensor of per-tensor norms.
    """
    tensors = list(tensors)
    return torch.sqrt(_stack64([_sqnorm(t) for t in tensors], _device_of(tensors)))


def _as(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    return t.detach() if dtype is None else t.detach().to(dtype)


def distances(a: Sequence[Tensor], b: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> Tensor:
    """L2 norm ‖θ_B[k] − θ_A[k]‖₂ of each tensor's difference (docs/algorithm.md §2, ‖d‖₂ over all elements).

    Args:
        a: tensors of the first point.
        b: tensors of the second point, same shapes.
        dtype: take each difference in this dtype, one tensor at a time (``torch.float64``: exact for
            float32/bfloat16 points, as the evaluation needs); ``None``: in the tensors' own dtype (the
            engine's choice: no copy, fastest).

    Returns:
        1-D float64 tensor of per-tensor distances.
    """
    a, b = list(a), list(b)
    _check_pair(a, b)
    return torch.sqrt(_stack64([_sqnorm(_as(y, dtype) - _as(x, dtype)) for x, y in zip(a, b)], _device_of(a)))


def total_distance(a: Sequence[Tensor], b: Sequence[Tensor], *, dtype: torch.dtype | None = None) -> float:
    """Euclidean distance between two points over all tensors: sqrt(Σ_k ‖θ_B[k] − θ_A[k]‖₂²).

    Args:
        a: tensors of the first point.
        b: tensors of the second point.
        dtype: the dtype of the differences, as in :func:`distances` (``None``: the tensors' own).

    Returns:
        The distance as a Python float.
    """
    d = distances(a, b, dtype=dtype)
    return float(torch.sqrt((d * d).sum()))


def cosine_similarity(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    """Cosine of the angle between two points, each flattened and concatenated into one vector.

    Args:
        a: tensors of the first point.
        b: tensors of the second point.

    Returns:
        ⟨a, b⟩ / (‖a‖ ‖b‖) as a Python float, clamped to [-1, 1]; ``nan`` if either point is all zeros
        (the angle is undefined, e.g. at the end of an M2O path).
    """
    a, b = list(a), list(b)
    _check_pair(a, b)
    dev = _device_of(a)
    dot = _stack64([torch.dot(_flat(x), _flat(y).to(_flat(x).dtype)) for x, y in zip(a, b)], dev).sum()
    na = _stack64([_sqnorm(x) for x in a], dev).sum()
    nb = _stack64([_sqnorm(y) for y in b], dev).sum()
    denom = torch.sqrt(na * nb)
    if float(denom) == 0.0:
        return float("nan")
    return float((dot / denom).clamp(-1.0, 1.0))


def step_sizes(dist: Tensor, *, step_a: float, step_f: float | Tensor) -> Tensor:
    """Clamped move step per tensor: ``s_k = min(‖d_k‖, max(step_f, step_a · ‖d_k‖))`` (docs/algorithm.md §2.1).

    The reference uses ``max(step_f, step_a·‖d‖)`` unclamped, which overshoots and oscillates once
    ‖d‖ < step_f; the clamp makes the last step land on the target.

    Args:
        dist: 1-D tensor of remaining distances ‖d_k‖₂.
        step_a: fraction of the remaining distance to move (≥ 0).
        step_f: fixed L2 step length (≥ 0): a scalar, or a 1-D tensor with one floor per tensor.

    Returns:
        1-D float64 tensor of step lengths, each in [0, ‖d_k‖].
    """
    if step_a < 0 or bool((torch.as_tensor(step_f) < 0).any()):
        raise ConfigError(f"step_a and step_f must be >= 0; got step_a={step_a}, step_f={step_f}")
    d = dist.to(torch.float64)
    floor = torch.as_tensor(step_f, dtype=torch.float64, device=d.device)  # a scalar or one value per tensor
    return torch.minimum(d, torch.maximum(step_a * d, floor))


@torch.no_grad()
def move_toward_(
    current: Sequence[Tensor], target: Sequence[Tensor], *, step_a: float, step_f: float | Tensor
) -> Tensor:
    """Move each tensor toward its target by the clamped step, in place: ``θ += s·d/‖d‖`` (docs/algorithm.md §2.1).

    A tensor equal to its target is not touched. A tensor whose step equals its remaining distance gets the
    target's values copied (bit-exact arrival, no rounding from ``θ + d``).

    Args:
        current: the tensors θ[k] to move (modified in place).
        target: the target tensors (θ_B[k] for M2M, zeros for M2O), same shapes.
        step_a: fraction of the remaining distance per move.
        step_f: fixed L2 step length per move (a scalar or one value per tensor).

    Returns:
        1-D float64 tensor of remaining distances after the move: ``‖d‖ − s`` (computed, not re-measured;
        exactly 0 for tensors that arrived or were already there).
    """
    current, target = list(current), list(target)
    _check_pair(current, target)
    if not current:
        return torch.zeros(0, dtype=torch.float64)
    diffs = torch._foreach_sub([t.detach() for t in target], [c.detach() for c in current])  # d = θ_B − θ
    dist = torch.sqrt(_stack64([_sqnorm(d) for d in diffs], _device_of(current)))  # (K,)
    return apply_move_(current, target, diffs, dist, step_a=step_a, step_f=step_f)


@torch.no_grad()
def apply_move_(
    current: Sequence[Tensor],
    target: Sequence[Tensor],
    diffs: Sequence[Tensor],
    dist: Tensor,
    *,
    step_a: float,
    step_f: float | Tensor,
) -> Tensor:
    """The update of :func:`move_toward_` once the differences and their norms are known, in place.

    Split out so that a caller holding only part of each tensor (a process's shard, :mod:`hf_llpf.sharding`)
    applies the same update with norms summed over every process: ``dist`` must be the whole tensors' norms.

    Args:
        current: the tensors θ[k] to move (modified in place).
        target: the target tensors, same shapes.
        diffs: ``target[k] − current[k]`` (consumed: scaled in place).
        dist: 1-D tensor of the whole tensors' ‖d_k‖₂.
        step_a: fraction of the remaining distance per move.
        step_f: fixed L2 step length per move (a scalar or one value per tensor).

    Returns:
        1-D float64 tensor of remaining distances after the move, as :func:`move_toward_` returns them.
    """
    current, target, diffs = list(current), list(target), list(diffs)
    step = step_sizes(dist, step_a=step_a, step_f=step_f)
    arrive = (step >= dist) & (dist > 0)
    remaining = torch.where(arrive | (dist == 0), torch.zeros_like(dist), dist - step)
    ratio = torch.where(dist > 0, step / dist.clamp_min(_TINY), torch.zeros_like(dist))
    flags, ratios = torch.stack([arrive.to(torch.float64), ratio]).tolist()  # the single host sync
    land = [k for k, f in enumerate(flags) if f]
    move = [k for k, (f, r) in enumerate(zip(flags, ratios)) if not f and r > 0]
    if land:
        torch._foreach_copy_([current[k] for k in land], [target[k].detach() for k in land])
    if move:
        ds = [diffs[k] for k in move]
        torch._foreach_mul_(ds, [ratios[k] for k in move])  # s · d / ‖d‖
        torch._foreach_add_([current[k] for k in move], ds)
    return remaining


def angle_conformal_factor(current_var: Tensor, start_var: Tensor, policy: str = "var") -> Tensor:
    """AngleConformal learning-rate factor per tensor: ``w/v`` (``"var"``) or ``sqrt(w/v)`` (``"std"``); algorithm §6.

    ``lr_k = lr_0 · factor_k`` keeps the angular size of an SGD update constant as a tensor moves to a smaller
    sphere (w: current variance, v: variance at the start).

    Args:
        current_var: 1-D tensor of current variances w_k.
        start_var: 1-D tensor of start variances v_k.
        policy: ``"var"`` or ``"std"``.

    Returns:
        1-D float64 tensor of factors; 1.0 where the start variance is 0 (no sphere to be conformal to).

    Raises:
        ConfigError: ``policy`` is not one of ``LR_POLICIES``.
    """
    if policy not in LR_POLICIES:
        raise ConfigError(f"lr_policy: got {policy!r}; allowed: {', '.join(LR_POLICIES)}")
    w = current_var.to(torch.float64)
    v = start_var.to(device=w.device, dtype=torch.float64)
    ratio = torch.where(v > 0, w / v.clamp_min(_TINY), torch.ones_like(w))
    return ratio if policy == "var" else torch.sqrt(ratio)


def interpolate_variance(var_a: Tensor, var_b: Tensor, progress: Tensor) -> Tensor:
    """Target variance per tensor as a tensor travels from θ_A to θ_B (exactly θ_A's at the start, θ_B's at the end).

    ``v(p) = var_a^(1−p) · var_b^p`` with ``p = 1 − remaining/initial distance`` clamped to [0, 1].

    Geometric rather than linear interpolation because variance is a scale (the squared radius of the
    sphere): geometric interpolation moves log-variance linearly, so equal progress changes the radius by
    equal *factors* (matching the multiplicative ``step_a`` moves), it is symmetric under A↔B with p↔1−p and
    it stays strictly between the endpoints for positive variances. Endpoints are exact: p ≤ 0 returns
    ``var_a`` and p ≥ 1 returns ``var_b`` bit for bit. Where either variance is ≤ 0 (log undefined) the
    interpolation is linear instead.

    Args:
        var_a: 1-D tensor of start variances.
        var_b: 1-D tensor of end variances.
        progress: 1-D tensor (or scalar) of progress values; clamped to [0, 1].

    Returns:
        1-D float64 tensor of target variances.
    """
    a = var_a.to(torch.float64)
    b = var_b.to(device=a.device, dtype=torch.float64)
    p = torch.as_tensor(progress, dtype=torch.float64, device=a.device).clamp(0.0, 1.0).expand_as(a)
    positive = (a > 0) & (b > 0)
    geo = torch.exp((1.0 - p) * torch.log(a.clamp_min(_TINY)) + p * torch.log(b.clamp_min(_TINY)))
    lin = a + p * (b - a)
    out = torch.where(positive, geo, lin)
    out = torch.where(p <= 0.0, a, out)
    return torch.where(p >= 1.0, b, out)
