"""The walk over a path's saved points, split over processes, and the gather of the parts.

Points are streamed from disk: at most the previous and the current point's tensors are held, besides the
model being evaluated. Under several processes each one takes every N-th point (and the segment into it);
every number is computed the same way whichever process owns the point, so a split evaluation equals a
one-process one bit for bit (docs/evaluation.md, "Several processes"). Under ``sharding="fsdp"`` every process walks
every point, holding its rows of each (:mod:`hf_llpf.evaluation.sharded`), and nothing is gathered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from accelerate import Accelerator
from torch import nn

from hf_llpf.batches import LossFn
from hf_llpf.evaluation.interpolation import PointModel, State, as_point_model, continuity, l2_step
from hf_llpf.evaluation.sets import EvalSets
from hf_llpf.progress import counting_bar
from hf_llpf.run import RunPath


@dataclass(frozen=True)
class WalkOptions:
    """What is computed at each point and segment.

    Attributes:
        loss_fn: the path's loss (``None``: the default loss).
        recalibrate: also score each point after BatchNorm recalibration.
        recal_batches: batches used per recalibration (``None``: all).
        k: interior points per segment (0: no continuity check).
        progress: a bar over the points (on a terminal, on the first process; see :mod:`hf_llpf.progress`).
    """

    loss_fn: LossFn | None = None
    recalibrate: bool = False
    recal_batches: int | None = None
    k: int = 4
    progress: bool = False


class _ContinuityLosses:
    """Each point's loss on the continuity subset, computed once and reused by the segment after it."""

    def __init__(self, model: PointModel, sets: EvalSets, opts: WalkOptions):
        self.model, self.sets, self.opts, self.known = model, sets, opts, {}

    def measure(self, i: int, state: State) -> float:
        if i not in self.known:
            self.model.load(state)
            self.known[i] = self.model.score(self.sets.continuity, loss_fn=self.opts.loss_fn)["loss"]
        return self.known[i]


def _segment_rows(
    model: PointModel, sets: EvalSets, opts: WalkOptions, losses: _ContinuityLosses, i: int, prev: State, cur: State
) -> list[dict]:
    """The continuity rows of the segment from point ``i - 1`` to point ``i``."""
    end_losses = (losses.measure(i - 1, prev), losses.measure(i, cur))
    seg = continuity(model, prev, cur, sets.continuity, k=opts.k, loss_fn=opts.loss_fn, end_losses=end_losses)
    return [{"segment": i - 1, "from_index": i - 1, "to_index": i, **r} for r in seg]


def walk_path(
    path: RunPath, model: nn.Module | PointModel, sets: EvalSets, opts: WalkOptions, shard: tuple[int, int] = (0, 1)
) -> list[tuple[int, dict, float | None, list[dict]]]:
    """Evaluate saved points and the segments into them, streaming (at most two points' tensors in memory).

    With ``shard = (rank, world)`` this process takes points ``rank, rank + world, ...`` and the segment that
    ends at each; :func:`gather_walk` puts the processes' parts back in order. ``model``: a module of the path's
    architecture, or a :class:`~hf_llpf.evaluation.interpolation.PointModel` (the sharded one: ``shard=(0, 1)``).

    Returns:
        ``[(index, row, L2 step into it or None, continuity rows of the segment into it)]`` for this process.
    """
    model = as_point_model(model)
    rank, world = shard
    items = []
    losses = _ContinuityLosses(model, sets, opts)
    last: tuple[int, State] | None = None
    mine = range(rank, len(path), world)
    for i in counting_bar(mine, desc="evaluate path points", unit="point", requested=opts.progress, main=rank == 0):
        cur = model.read(path, i)
        model.load(cur)
        options = {"loss_fn": opts.loss_fn, "recalibrate": opts.recalibrate, "recal_batches": opts.recal_batches}
        row = model.evaluate(sets, **options)
        if opts.k > 0:
            losses.measure(i, cur)  # loads the saved tensors again, undoing the recalibration
        step, seg_rows = None, []
        if i > 0:
            prev = last[1] if last is not None and last[0] == i - 1 else model.read(path, i - 1)
            step = model.step(prev, cur)
            if opts.k > 0:
                seg_rows = _segment_rows(model, sets, opts, losses, i, prev, cur)
        items.append((i, row, step, seg_rows))
        last = (i, cur)
    return items


def gather_rows(rows: list[Any], accelerator: Accelerator | None, key: str = "index") -> list[Any]:
    """All processes' rows (whole rows, no padded duplicates), sorted by ``key``; as given on one process, or with
    ``accelerator=None`` (every process holds every row: a sharded evaluation)."""
    if accelerator is not None and accelerator.num_processes > 1:
        rows = accelerator.gather_for_metrics(rows, use_gather_object=True)
        return sorted(rows, key=lambda r: r[key])
    return rows


def gather_walk(items: list, accelerator: Accelerator | None) -> tuple[list[dict], list[float], list[dict]]:
    """All processes' :func:`walk_path` parts, in point order: rows, L2 steps and continuity rows
    (``accelerator=None``: this process's parts are all of them)."""
    if accelerator is not None and accelerator.num_processes > 1:
        # Each process holds whole points (no padded duplicates), so nothing is dropped.
        items = accelerator.gather_for_metrics(items, use_gather_object=True)
    items = sorted(items, key=lambda item: item[0])
    rows = [row for _, row, _, _ in items]
    steps = [step for _, _, step, _ in items if step is not None]
    cont = [r for _, _, _, seg in items for r in seg]
    return rows, steps, cont


__all__ = ["WalkOptions", "gather_rows", "gather_walk", "l2_step", "walk_path"]
