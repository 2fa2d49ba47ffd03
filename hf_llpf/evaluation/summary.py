"""The summary figures of a path and of its linear baseline, one definition each (docs/evaluation.md).

- **max train loss**: the largest eval-mode training loss over the points;
- **barrier**: max_i (loss_i − ((1−t_i)·loss_A + t_i·loss_B)), t_i the normalised position of point i (cumulative
  L2 length of the path up to point i divided by its total length; i/(N−1) on the linear baseline), loss_A
  and loss_B the losses of the first and last point;
- **min train accuracy**, **test loss range** and **test accuracy range** (test loss may rise: it is shown; absent
  when the data had no test split);
- **worst continuity loss**: the highest loss at an interior point of a segment, and where it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.scoring import EVAL_COLUMNS, RECAL


def chord(loss_a: float, loss_b: float, t: float) -> float:
    """The straight line between two end losses at ``t`` in [0, 1].

    Written so that t=0 and t=1 give ``loss_a`` and ``loss_b`` exactly (and equal end losses give that loss
    exactly for every t), like ``torch.lerp``: a constant-loss path then has a barrier of exactly 0.
    """
    return loss_a + t * (loss_b - loss_a) if t < 0.5 else loss_b - (1.0 - t) * (loss_b - loss_a)


def _max(values: Sequence[float]) -> float:
    # NaN propagates: a point whose loss is NaN makes the figure NaN rather than silently skipped.
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _min(values: Sequence[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def positions(steps: Sequence[float]) -> list[float]:
    """Normalised positions t_i in [0, 1] from the L2 steps between consecutive points.

    t_i = (sum of the first i steps) / (sum of all steps); a path that does not move (all steps 0) is spaced
    evenly, t_i = i/(N−1).
    """
    cumulative = [0.0]
    for s in steps:
        cumulative.append(cumulative[-1] + s)
    total, n = cumulative[-1], len(cumulative)
    if total <= 0.0:
        return [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    return [c / total for c in cumulative[:-1]] + [1.0]


def barrier(losses: Sequence[float], positions: Sequence[float]) -> float:
    """max_i (loss_i − ((1−t_i)·loss_A + t_i·loss_B)), loss_A = losses[0], loss_B = losses[-1].

    The same formula for an LLPF path (t_i = normalised length) and the linear baseline (t_i = i/(N−1)).
    It is 0 for a path whose loss is constant and never below 0 (the first point contributes 0).

    Raises:
        ConfigError: the two lists differ in length or are empty.
    """
    if len(losses) != len(positions) or not losses:
        raise ConfigError(f"barrier: {len(losses)} losses and {len(positions)} positions; need equal, non-zero")
    la, lb = losses[0], losses[-1]
    return _max([loss - chord(la, lb, t) for loss, t in zip(losses, positions)])


def summarise(rows: Sequence[dict], positions: Sequence[float], *, suffix: str = "") -> dict[str, Any]:
    """Summary figures of one curve (the path or the linear baseline), one definition each.

    Args:
        rows: one dict per point with ``eval_train_loss{suffix}``, ``eval_train_acc{suffix}`` and, when the data
            had a test split, ``test_loss{suffix}``, ``test_acc{suffix}``.
        positions: the normalised position of each row.
        suffix: ``""`` or ``"_recal"``.

    Returns:
        ``max_train_loss``, ``barrier``, ``min_train_acc``, and with the test columns ``test_loss_range``
        ([min, max]) and ``test_acc_range`` ([min, max]).
    """
    col = {c: [float(r[c + suffix]) for r in rows] for c in EVAL_COLUMNS if all(c + suffix in r for r in rows)}
    figures = {
        "max_train_loss": _max(col["eval_train_loss"]),
        "barrier": barrier(col["eval_train_loss"], positions),
        "min_train_acc": _min(col["eval_train_acc"]),
    }
    if "test_loss" in col:  # a train-only evaluation states no test range
        figures["test_loss_range"] = [_min(col["test_loss"]), _max(col["test_loss"])]
        figures["test_acc_range"] = [_min(col["test_acc"]), _max(col["test_acc"])]
    return figures


def locate_continuity(cont: list[dict], ticks: Sequence[int], pos: Sequence[float]) -> None:
    """Add to each continuity row (in place) its segment's ticks and its normalised position along the path.

    Args:
        cont: rows with ``from_index``, ``to_index`` and ``s`` (the fraction of the segment).
        ticks: the tick of every saved point.
        pos: the normalised position of every saved point.
    """
    for r in cont:
        a, b = r["from_index"], r["to_index"]
        r["from_tick"], r["to_tick"] = ticks[a], ticks[b]
        r["position"] = pos[a] + r["s"] * (pos[b] - pos[a])


def worst_continuity(cont: list[dict]) -> tuple[float | None, dict | None]:
    """The highest continuity loss (a NaN one first) and where it is; ``(None, None)`` without continuity."""
    if not cont:
        return None, None
    nan = [r for r in cont if math.isnan(r["loss"])]
    worst = nan[0] if nan else max(cont, key=lambda r: r["loss"])
    at = {k: worst[k] for k in ("segment", "from_tick", "to_tick", "s", "position", "excess") if k in worst}
    return worst["loss"], at


def worst_point(points: list[dict], pos: Sequence[float]) -> dict[str, Any] | None:
    """Where the path's train loss is highest: the point's index, tick, stage, phase, position and loss (a NaN loss
    first; ``None`` for no points)."""
    if not points:
        return None
    losses = [float(p["eval_train_loss"]) for p in points]
    nan = [i for i, v in enumerate(losses) if math.isnan(v)]
    i = nan[0] if nan else max(range(len(losses)), key=losses.__getitem__)
    row = points[i]
    return {"index": i, "tick": row.get("tick"), "stage": row.get("stage"), "phase": row.get("phase"),
            "position": pos[i], "loss": losses[i]}  # fmt: skip


def path_summary(
    points: list[dict],
    linear: list[dict],
    cont: list[dict],
    pos: list[float],
    recal: bool,
    *,
    path_length: float,
    straight: float,
) -> dict[str, Any]:
    """The ``summary`` of an evaluation: ``llpf`` and ``linear`` (and ``*_recal`` with recalibration).

    Args:
        points: the path's rows; ``linear``: the baseline's rows (with ``t``); ``cont``: the continuity rows.
        pos: the normalised position of every point of the path.
        recal: whether the rows hold the ``_recal`` columns.
        path_length: sum of the L2 steps between consecutive points.
        straight: L2 distance between the first and the last point.
    """
    lin_pos = [r["t"] for r in linear]
    worst, at = worst_continuity(cont)
    summary = {
        "llpf": {
            **summarise(points, pos),
            "path_length": path_length,
            "straight_distance": straight,
            "worst_continuity_loss": worst,
            "worst_continuity_at": at,
            "worst_point": worst_point(points, pos),
        },
        "linear": summarise(linear, lin_pos),
    }
    if recal:
        summary["llpf_recal"] = summarise(points, pos, suffix=RECAL)
        summary["linear_recal"] = summarise(linear, lin_pos, suffix=RECAL)
    return summary


__all__ = ["barrier", "chord", "locate_continuity", "path_summary", "positions", "summarise", "worst_continuity"]
