"""Points between points: loading θ(t) = (1−t)·θ_A + t·θ_B into a model, the linear baseline and the
interior points of each segment of a path (docs/evaluation.md, "continuity")."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from hf_llpf.batches import LossFn
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.evaluation.scoring import evaluate_point, score
from hf_llpf.evaluation.sets import EvalSets
from hf_llpf.evaluation.summary import chord
from hf_llpf.progress import counting_bar


@torch.no_grad()
def load_point(
    model: nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None = None, t: float = 0.0
) -> None:
    """Load ``(1−t)·a + t·b`` (or ``a`` alone) into ``model``'s tensors, in place.

    ``t == 0`` and ``t == 1`` copy ``a`` and ``b`` exactly, so the ends of an interpolation are the points
    themselves bit for bit. Integer buffers (``num_batches_tracked``) are taken from the nearer end.

    Raises:
        RunDirectoryError: ``a`` holds tensors the model does not have.
    """
    own = model.state_dict()
    unexpected = sorted(set(a) - set(own))
    if unexpected:
        raise RunDirectoryError(f"a point holds tensors the model does not have: {unexpected[:5]}")
    for name, dst in own.items():
        if name not in a:
            continue  # a tied alias written once (transformers); it shares storage with its canonical tensor
        if b is None or t == 0.0:
            src = a[name]
        elif t == 1.0 or not dst.is_floating_point():
            src = b[name] if t >= 0.5 else a[name]
        else:
            src = torch.lerp(a[name].to(dst.dtype), b[name].to(dst.dtype), t)
        dst.copy_(src)


def param_names(model: nn.Module) -> list[str]:
    """Names of the model's floating parameters (tied ones once): what path length and distances cover."""
    return [n for n, p in model.named_parameters() if p.is_floating_point()]


def linear_interpolation(
    model: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    sets: EvalSets,
    *,
    points: int = 21,
    loss_fn: LossFn | None = None,
    recalibrate: bool = False,
    recal_batches: int | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: bool = False,
) -> list[dict]:
    """Evaluate θ(t) = (1−t)·θ_A + t·θ_B at ``points`` evenly spaced t (ends included, exactly θ_A and θ_B).

    BatchNorm running statistics are interpolated like every other tensor; with ``recalibrate`` they are
    also recomputed per point (the ``_recal`` columns).

    Args:
        model: a model of the architecture (its tensors are overwritten).
        state_a, state_b: the two ends.
        sets: the fixed evaluation sets.
        points: points of the baseline, ends included.
        loss_fn: the path's loss.
        recalibrate: also report the figures after BatchNorm recalibration.
        recal_batches: batches used per recalibration (``None``: all).
        shard: ``(rank, world)``: this process evaluates points ``rank, rank + world, ...``.
        progress: a bar over the points (on a terminal, on the first process).

    Returns:
        One dict per point of this process: ``index``, ``t`` and the columns of :func:`evaluate_point`.

    Raises:
        ConfigError: fewer than 2 points.
    """
    if points < 2:
        raise ConfigError(f"linear_points={points}: need at least 2 (the two endpoints)")
    rows = []
    rank, world = shard
    mine = range(rank, points, world)
    for i in counting_bar(mine, desc="evaluate linear baseline", unit="point", requested=progress, main=rank == 0):
        t = i / (points - 1)
        load_point(model, state_a, state_b, t)
        cols = evaluate_point(model, sets, loss_fn=loss_fn, recalibrate=recalibrate, recal_batches=recal_batches)
        rows.append({"index": i, "t": t, **cols})
    return rows


def continuity(
    model: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    batches: Iterable,
    *,
    k: int = 4,
    loss_fn: LossFn | None = None,
    end_losses: tuple[float, float] | None = None,
) -> list[dict]:
    """Evaluate K interior points s = j/(K+1), j = 1..K, of the straight segment from ``state_a`` to ``state_b``.

    Args:
        model: a model of the architecture (its tensors are overwritten).
        state_a, state_b: the two consecutive points.
        batches: the fixed continuity subset.
        k: interior points per segment.
        loss_fn: the path's loss.
        end_losses: the two points' losses on the same batches; when given, each entry's ``excess`` is its
            loss minus the straight line between them (the segment's own barrier).

    Returns:
        One dict per interior point: ``s``, ``loss``, ``acc`` (and ``excess``).
    """
    model.eval()
    rows = []
    for j in range(1, k + 1):
        s = j / (k + 1)
        load_point(model, state_a, state_b, s)
        row = {"s": s, **score(model, batches, loss_fn=loss_fn)}
        if end_losses is not None:
            row["excess"] = row["loss"] - chord(*end_losses, s)
        rows.append(row)
    return rows


__all__ = ["continuity", "linear_interpolation", "load_point", "param_names"]
