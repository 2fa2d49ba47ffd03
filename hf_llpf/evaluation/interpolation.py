"""Points between points: loading θ(t) = (1−t)·θ_A + t·θ_B into a model, the linear baseline and the
interior points of each segment of a path (docs/evaluation.md, "continuity").

The model the points are evaluated in is a :class:`PointModel`: it reads a point, loads it (or a point between
two), scores batches and measures the step between two points. This one holds whole points; the sharded one
(:class:`~hf_llpf.evaluation.sharded.ShardedPointModel`) holds each process's rows and merges the scores, so the
walk, the baseline and the continuity check run unchanged over either.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from hf_llpf.batches import LossFn
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.evaluation.scoring import evaluate_point, score
from hf_llpf.evaluation.sets import EvalSets
from hf_llpf.evaluation.summary import chord
from hf_llpf.geometry import total_distance
from hf_llpf.progress import counting_bar

State = dict[str, torch.Tensor]


def between(a: torch.Tensor, b: torch.Tensor | None, t: float, dtype: torch.dtype) -> torch.Tensor:
    """One tensor of ``(1−t)·a + t·b`` in ``dtype`` (``a`` alone for ``b is None``): the ends exactly ``a`` and ``b``,
    an integer tensor (``num_batches_tracked``) taken from the nearer end. Elementwise, so rows give rows."""
    if b is None or t == 0.0:
        return a
    if t == 1.0 or not dtype.is_floating_point:
        return b if t >= 0.5 else a
    return torch.lerp(a.to(dtype), b.to(dtype), t)


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
        dst.copy_(between(a[name], None if b is None else b[name], t, dst.dtype))


def param_names(model: nn.Module) -> list[str]:
    """Names of the model's floating parameters (tied ones once): what path length and distances cover."""
    return [n for n, p in model.named_parameters() if p.is_floating_point()]


def l2_step(a: State, b: State, names: list[str]) -> float:
    """Euclidean distance between two points over the tensors ``names``, differences taken in float64."""
    return total_distance([a[n] for n in names], [b[n] for n in names], dtype=torch.float64)


class PointModel:
    """The model a path's points are evaluated in, holding whole points (one process, or one point per process).

    Args:
        model: a model of the path's architecture, on the evaluation's device (its tensors are overwritten).
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def read(self, path: Any, i: int) -> State:
        """The tensors of point ``i`` of ``path`` (a :class:`~hf_llpf.run.RunPath`)."""
        return path.state_dict_at(i)

    def load(self, a: State, b: State | None = None, t: float = 0.0) -> None:
        """Load ``(1−t)·a + t·b`` (or ``a``) into the model (:func:`load_point`)."""
        load_point(self.model, a, b, t)

    def score(self, batches: Iterable, *, loss_fn: LossFn | None = None) -> dict[str, float]:
        """Mean loss and accuracy over ``batches`` (:func:`~hf_llpf.evaluation.scoring.score`)."""
        return score(self.model, batches, loss_fn=loss_fn)

    def evaluate(self, sets: EvalSets, **options: Any) -> dict[str, float]:
        """The evaluation columns of the loaded point (:func:`~hf_llpf.evaluation.scoring.evaluate_point`)."""
        return evaluate_point(self.model, sets, scorer=self.score, **options)

    def step(self, a: State, b: State) -> float:
        """The L2 distance between two points over the model's floating parameters (:func:`l2_step`)."""
        return l2_step(a, b, param_names(self.model))


def as_point_model(model: nn.Module | PointModel) -> PointModel:
    """``model`` as a :class:`PointModel` (a plain module: one holding whole points)."""
    return model if isinstance(model, PointModel) else PointModel(model)


def linear_interpolation(
    model: nn.Module | PointModel,
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
        model: a model of the architecture (its tensors are overwritten), or a :class:`PointModel`.
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
    rows, held = [], as_point_model(model)
    rank, world = shard
    mine = range(rank, points, world)
    for i in counting_bar(mine, desc="evaluate linear baseline", unit="point", requested=progress, main=rank == 0):
        t = i / (points - 1)
        held.load(state_a, state_b, t)
        cols = held.evaluate(sets, loss_fn=loss_fn, recalibrate=recalibrate, recal_batches=recal_batches)
        rows.append({"index": i, "t": t, **cols})
    return rows


def continuity(
    model: nn.Module | PointModel,
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
        model: a model of the architecture (its tensors are overwritten), or a :class:`PointModel`.
        state_a, state_b: the two consecutive points.
        batches: the fixed continuity subset.
        k: interior points per segment.
        loss_fn: the path's loss.
        end_losses: the two points' losses on the same batches; when given, each entry's ``excess`` is its
            loss minus the straight line between them (the segment's own barrier).

    Returns:
        One dict per interior point: ``s``, ``loss``, ``acc`` (and ``excess``).
    """
    held = as_point_model(model)
    held.model.eval()
    rows = []
    for j in range(1, k + 1):
        s = j / (k + 1)
        held.load(state_a, state_b, s)
        row = {"s": s, **held.score(batches, loss_fn=loss_fn)}
        if end_losses is not None:
            row["excess"] = row["loss"] - chord(*end_losses, s)
        rows.append(row)
    return rows


__all__ = [
    "PointModel",
    "as_point_model",
    "between",
    "continuity",
    "l2_step",
    "linear_interpolation",
    "load_point",
    "param_names",
]
