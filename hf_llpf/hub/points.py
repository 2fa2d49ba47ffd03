"""Which points of a path: one point by name (``export --point``, ``push --root-point``) and a subset to publish
(``push --every N`` / ``--points SELECTION``).

Positions are normalised arc lengths along the path (cumulative L2 length / total, as in the evaluation's
``position`` column): the recorded column when the path was evaluated, else computed from the points.

- ``mid``: the point nearest position 0.5, the middle of the path by arc length (the "merged model").
- ``best``: the path's own criterion, the lowest train loss among the points **away from the ends**, i.e.
  with position in ``[0.25, 0.75]`` (the middle half of the path by arc length; near an end a point is
  nearly that endpoint and its low loss says nothing about the path). The loss is ``eval_train_loss``
  (the evaluation's, eval mode on the fixed train subset) when every candidate has it, else the run's own
  ``train_loss``. Test figures are never used: choosing by them would make them a selection criterion.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch

from hf_llpf.errors import ConfigError, RunDirectoryError, UnknownNameError
from hf_llpf.run import RunPath

POINT_FORMS = ["an index 0..n-1 or negative", "tick:N (or tN)", "best", "mid"]
AWAY_FROM_ENDS = (0.25, 0.75)  # "best" chooses among these positions (the middle half by arc length)
_BEST_KEYS = ("eval_train_loss", "train_loss")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@torch.no_grad()
def _steps(path: RunPath) -> list[float]:
    """The L2 distance between consecutive points over their floating-point tensors (streamed, two at a time)."""
    steps, prev = [], None
    for i in range(len(path)):
        cur = {k: v for k, v in path.state_dict_at(i).items() if v.is_floating_point()}
        if prev is not None:
            sq = sum(float(((cur[k].double() - prev[k].double()) ** 2).sum()) for k in cur if k in prev)
            steps.append(math.sqrt(sq))
        prev = cur
    return steps


def arc_positions(path: RunPath) -> list[float]:
    """Each point's normalised arc-length position in ``[0, 1]`` (0 at A, 1 at B).

    The evaluation's ``position`` column when every point has one; otherwise computed from the points'
    weights (every point is read once). A path that does not move is spaced evenly.
    """
    rows = path.metrics
    if rows and all(_finite(r.get("position")) for r in rows):
        return [float(r["position"]) for r in rows]
    if len(path) < 2:
        return [0.0] * len(path)
    from hf_llpf.evaluation.summary import positions

    return positions(_steps(path))


def _nearest(pos: Sequence[float], target: float, among: Sequence[int]) -> int:
    return min(among, key=lambda i: (abs(pos[i] - target), i))


def _mid(path: RunPath) -> tuple[int, str]:
    pos = arc_positions(path)
    i = _nearest(pos, 0.5, range(len(pos)))
    return i, f"mid: the point nearest the middle of the path by arc length (position {pos[i]:.3f})"


def _best(path: RunPath) -> tuple[int, str]:
    pos, rows = arc_positions(path), path.metrics
    lo, hi = AWAY_FROM_ENDS
    candidates = [i for i, t in enumerate(pos) if lo <= t <= hi]
    if not candidates:  # a path with no point in the middle half: the one nearest its middle
        candidates = [_nearest(pos, 0.5, range(len(pos)))]
    key = next((k for k in _BEST_KEYS if all(_finite(rows[i].get(k)) for i in candidates)), None)
    if key is None:
        raise RunDirectoryError(
            "point='best' needs a train loss for every point away from the ends (eval_train_loss or train_loss "
            "in path_metrics.json): run `hf-llpf evaluate` on the path first, or choose point='mid'"
        )
    i = min(candidates, key=lambda j: (rows[j][key], j))
    return i, (
        f"best: the lowest {key} ({rows[i][key]:.4g}) among the {len(candidates)} points with position in "
        f"[{lo}, {hi}] by arc length (this one at {pos[i]:.3f})"
    )


def choose_point(path: RunPath, point: str | int) -> tuple[int, str]:
    """The index of the point named by ``point`` and why it is that one (one line, for the user).

    Args:
        path: the path.
        point: an index (``3``, ``-1``), ``tick:N`` / ``tN`` (the point saved at tick N), ``mid`` or
            ``best`` (see the module docstring for both criteria).

    Returns:
        tuple: ``(index in 0..len(path)-1, reason)``.

    Raises:
        UnknownNameError: the value matches none of these forms, or no point has that tick.
        RunDirectoryError: ``best`` on a path with no train loss recorded.
    """
    n = len(path)
    text = str(point).strip().lower()
    if re.fullmatch(r"-?\d+", text):
        i = int(text)
        if not -n <= i < n:
            raise UnknownNameError("point", point, [f"an index in {-n}..{n - 1}", *POINT_FORMS[1:]])
        return i % n, f"index {i % n}, as asked"
    m = re.fullmatch(r"(?:tick[:=]|t)(\d+)", text)
    if m:
        tick = int(m.group(1))
        if tick not in path.ticks:
            raise UnknownNameError("point tick", tick, path.ticks)
        return path.ticks.index(tick), f"the point saved at tick {tick}, as asked"
    if text == "mid":
        return _mid(path)
    if text == "best":
        return _best(path)
    raise UnknownNameError("point", point, POINT_FORMS)


def select_point(path: RunPath, point: str | int) -> int:
    """The index of the point named by ``point`` (:func:`choose_point` without the reason)."""
    return choose_point(path, point)[0]


def select_points(path: RunPath, *, every: int | None = None, points: str | None = None) -> list[int]:
    """The indices of the points to publish: every point, every N-th, or a selection; always both ends and
    every stage boundary.

    Args:
        path: the path.
        every: keep every ``every``-th point (indices 0, N, 2N, ...), ``1`` = all.
        points: a comma-separated selection of point names (:func:`choose_point` forms) and index ranges
            ``a:b`` (Python slice, end excluded), e.g. ``"0:10,mid,tick:40"``.

    Returns:
        list[int]: sorted indices, ends and stage boundaries included.

    Raises:
        ConfigError: ``every`` < 1, or both options given. UnknownNameError: a name in ``points`` names no point.
    """
    n = len(path)
    if every is not None and points is not None:
        raise ConfigError(f"every={every!r} and points={points!r}: give one of them, not both")
    if every is None and points is None:
        return list(range(n))
    chosen: set[int] = set()
    if every is not None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every={every!r}: must be an integer >= 1 (1 publishes every point)")
        chosen.update(range(0, n, every))
    else:
        for part in (p.strip() for p in str(points).split(",")):
            if not part:
                continue
            m = re.fullmatch(r"(-?\d*):(-?\d*)", part)
            if m:
                start, stop = (int(g) if g else None for g in m.groups())
                chosen.update(range(n)[slice(start, stop)])
            else:
                chosen.add(select_point(path, part))
    rows = path.metrics
    chosen.update({0, n - 1} | {i for i, r in enumerate(rows) if r.get("stage_boundary")})
    return sorted(chosen)


__all__ = ["AWAY_FROM_ENDS", "POINT_FORMS", "arc_positions", "choose_point", "select_point", "select_points"]
