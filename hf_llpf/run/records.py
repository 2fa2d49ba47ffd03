"""Typed rows of a run directory: a saved point, a tick, and the CSV columns that derive from them.

A method builds its rows with :class:`PointRecord` / :class:`TickRecord`; ``path_metrics.json`` holds them as
objects and ``path_metrics.csv`` has one row per point with these columns first (evaluation columns follow).
A new column of the engine is a new field here.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class PointRecord:
    """One saved point of a path."""

    index: int  # position in the path's list of points
    tick: int  # the tick at which it was saved
    stage: int  # the newest active stage (-1 in an M2O phase)
    phase: str  # start, m2m, m2o, m2o_reversed or end
    train_loss: float  # the repair training's loss at that tick (NaN at the ends)
    sgd_iters: int  # SGD iterations along the path so far
    dist_a: float | None  # L2 distance to θ_A over the moved parameters
    dist_b: float | None  # ... and to θ_B
    stage_boundary: bool  # a stage started here (and at the ends)
    point: str  # the point's folder, relative to the run directory
    probe_loss: float | None = None  # eval-mode loss on the probe set, as saved (None: no ceiling)
    segment_loss: float | None = None  # ... at the midpoint of the segment from the previous tick's point

    def row(self) -> dict[str, Any]:
        """As stored in ``path_metrics.json``."""
        return asdict(self)


@dataclass
class TickRecord:
    """One tick of a method (every tick, also those whose point is not saved)."""

    tick: int
    stage: int
    train_loss: float
    iters: int | None  # SGD iterations of this tick's repair
    sgd_iters: int  # along the path so far
    dist_a: float | None = None
    dist_b: float | None = None
    phase: str | None = None  # set by phases other than M2M
    probe_loss: float | None = None  # the kept point's probe loss (certified runs only)
    segment_loss: float | None = None
    step_scale: float | None = None  # the step factor the kept move was made with (certified runs only)
    backtracks: int | None = None  # moves retried shorter so far in the run (certified runs only)
    # The repair trainer's SGD bursts in this tick, rolled-back attempts included: under a ceiling the certifier's
    # rounds between probes, without one a burst per attempt (None: the tick trains nothing, as a straight line).
    repair_rounds: int | None = None

    def row(self) -> dict[str, Any]:
        """As stored in ``path_metrics.json``'s ``ticks`` (optional columns only when set)."""
        optional = ("phase", "probe_loss", "segment_loss", "step_scale", "repair_rounds")
        return {k: v for k, v in asdict(self).items() if not (k in optional and v is None)}


POINT_COLUMNS = tuple(f.name for f in fields(PointRecord))


def stage_records(ticks: list[dict]) -> list[dict[str, Any]]:
    """Where a path's work went, one record per stage of each phase (``summary.run.stages``): its ticks, the
    SGD iterations of their repairs and the repair rounds they came in, the moves retried shorter, and the worst
    probe losses of its kept points and segments (``None`` when nothing was probed).

    Args:
        ticks: the tick rows of ``path_metrics.json`` (:class:`TickRecord`), in order.
    """
    records: dict[tuple[str, int], dict[str, Any]] = {}
    before = 0  # the run's backtracks before the tick (the rows hold the running count)
    for row in ticks:
        key = (row.get("phase") or "m2m", row["stage"])
        rec = records.setdefault(key, {"phase": key[0], "stage": key[1], "first_tick": row["tick"], "ticks": 0,
                                       "sgd_iters": 0, "repair_rounds": 0, "backtracks": 0, "max_probe_loss": None,
                                       "max_segment_loss": None})  # fmt: skip
        rec["ticks"] += 1
        rec["last_tick"] = row["tick"]
        rec["sgd_iters"] += row.get("iters") or 0
        rec["repair_rounds"] += row.get("repair_rounds") or 0  # absent in rows of an earlier version: 0
        if row.get("backtracks") is not None:  # a phase of its own (cross-sphere) counts from zero again
            count = row["backtracks"]
            rec["backtracks"] += count - before if count >= before else count
            before = count
        for col, top in (("probe_loss", "max_probe_loss"), ("segment_loss", "max_segment_loss")):
            value = row.get(col)
            if isinstance(value, (int, float)) and (rec[top] is None or not value <= rec[top]):
                rec[top] = value
    return list(records.values())


def points_to_csv(points: list[dict]) -> str:
    """One CSV row per point: :class:`PointRecord`'s columns first, then any evaluation columns in sorted order."""
    extra = sorted({k for p in points for k in p} - set(POINT_COLUMNS))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*POINT_COLUMNS, *extra], extrasaction="ignore")
    writer.writeheader()
    for p in points:
        writer.writerow({k: (v if not isinstance(v, (dict, list)) else json.dumps(v)) for k, v in p.items()})
    return out.getvalue()
