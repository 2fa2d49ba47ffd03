"""Pictures of an evaluated path (matplotlib, Agg backend, PNG files in ``RUN_DIR/plots/``).

- ``loss.png`` and ``accuracy.png``: train (eval mode, fixed subset) and test along the path vs the linear
  baseline, x = normalised position along the path; the continuity samples as crosses; stages shaded, phases
  marked in a band at the bottom (a one-point phase such as "end" gets a visible width); a log-scale loss axis
  when the losses span more than two orders of magnitude or the baseline's peak is more than
  :data:`DWARF_RATIO` times the path's (a path under 0.05 beside a barrier of 2.4 is not a flat line at zero).
- ``layers.png``: per-parameter-tensor variance and relative distance to θ_B along the path as heat maps,
  tensors ordered by stage (``layer_groups.json``), points streamed from disk; the variance colour scale
  leaves out constant tensors (variance < 1e-12) and the lowest 1% (grey), see :func:`variance_limits`
  (:mod:`hf_llpf.reporting.layer_plots`).
- ``repeats.png`` (:func:`plot_repeats`): the curves of R runs overlaid.

Every function reads what :func:`hf_llpf.api.evaluate_run` wrote; it never evaluates anything itself.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path as FsPath
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, and no GUI toolkit import

import matplotlib.patches as mpatches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from torch import nn  # noqa: E402

from hf_llpf.errors import RunDirectoryError  # noqa: E402
from hf_llpf.reporting.layer_plots import (  # noqa: E402
    VARIANCE_FLOOR,
    LayerTables,
    layers_plot,
    save_figure,
    variance_limits,
)
from hf_llpf.run import RunPath, read_metrics  # noqa: E402
from hf_llpf.run.layout import PLOTS_DIR  # noqa: E402

_LLPF, _LINEAR = "tab:blue", "tab:red"
_STAGE_COLOURS = ("#f2f2f2", "#dde8f3")
_PHASE_COLOURS = ("tab:olive", "tab:purple", "tab:cyan", "tab:brown", "tab:pink", "tab:gray")
_MIN_BAND = 0.012  # narrowest phase band drawn, as a fraction of the axis (~9 pixels at the default size)
DWARF_RATIO = 10.0  # baseline max / path max above which the loss axis is logarithmic


def _metrics(run_dir: FsPath) -> dict:
    data = read_metrics(run_dir)
    if not data.get("points") or "eval_train_loss" not in data["points"][0]:
        raise RunDirectoryError(f"{str(run_dir)!r} has not been evaluated yet: run `hf-llpf evaluate {run_dir}` first")
    return data


def _runs(values: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """Maximal runs of equal consecutive values as (first index, last index, value)."""
    out: list[tuple[int, int, Any]] = []
    for i, v in enumerate(values):
        if out and out[-1][2] == v:
            out[-1] = (out[-1][0], i, v)
        else:
            out.append((i, i, v))
    return out


def _shade(ax: plt.Axes, points: list[dict], pos: list[float]) -> list:
    """Shade stages (alternating background, labelled at the top) and mark phases (coloured bottom band)."""
    handles = []
    stages = [p.get("stage") for p in points]
    if any(s is not None for s in stages):
        runs = _runs(stages)
        every = max(1, math.ceil(len(runs) / 12))  # at most ~12 labels, else they overlap
        for j, (first, last, stage) in enumerate(runs):
            # A stage's span runs to the next stage's first point, so the background has no gaps.
            right = pos[runs[j + 1][0]] if j + 1 < len(runs) else pos[last]
            ax.axvspan(pos[first], right, color=_STAGE_COLOURS[j % 2], zorder=0, lw=0)
            if stage is not None and j % every == 0:
                ax.text(
                    (pos[first] + right) / 2,
                    0.985,
                    f"stage {stage}",
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=7,
                    color="0.35",
                )
    phases = [p.get("phase") for p in points]
    if len(set(phases)) > 1:
        runs = _runs(phases)
        names = list(dict.fromkeys(phases))
        for j, (first, last, phase) in enumerate(runs):
            right = pos[runs[j + 1][0]] if j + 1 < len(runs) else pos[last]
            left, right = _visible_span(pos[first], right, lo=pos[0], hi=pos[-1])
            colour = _PHASE_COLOURS[names.index(phase) % len(_PHASE_COLOURS)]
            # Narrow (widened) spans drawn above their neighbours, so a one-point phase stays visible.
            ax.axvspan(left, right, ymin=0, ymax=0.03, color=colour, lw=0, zorder=1 + (right - left < 2 * _MIN_BAND))
        for phase in names:
            colour = _PHASE_COLOURS[names.index(phase) % len(_PHASE_COLOURS)]
            handles.append(mpatches.Patch(color=colour, label=f"phase: {phase}"))
    return handles


def _visible_span(left: float, right: float, *, lo: float, hi: float) -> tuple[float, float]:
    """``[left, right]`` widened to at least :data:`_MIN_BAND`, inside ``[lo, hi]``.

    The last phase ("end") is one point: its own span is the last segment, often ~0.1% of the axis.
    """
    if right - left >= _MIN_BAND:
        return left, right
    centre = (left + right) / 2
    left, right = centre - _MIN_BAND / 2, centre + _MIN_BAND / 2
    if left < lo:
        left, right = lo, lo + _MIN_BAND
    if right > hi:
        left, right = hi - _MIN_BAND, hi
    return left, right


def _wants_log(values: Sequence[float], baseline: Sequence[float] = ()) -> bool:
    """A log-scale loss axis: the losses span > 2 decades, or the baseline's peak dwarfs the path's.

    With a linear baseline at 2.4 and a path under 0.05 a linear axis draws the path as a flat line at zero,
    hiding its barrier; above :data:`DWARF_RATIO` (baseline max / path max) the axis turns logarithmic.
    """
    own = [v for v in values if math.isfinite(v)]
    base = [v for v in baseline if math.isfinite(v)]
    every = own + base
    if not every or min(every) <= 0:
        return False  # a log axis would drop the zeros and the negatives
    if max(every) / min(every) > 100:
        return True
    return bool(own and base) and max(base) > DWARF_RATIO * max(own)


def _curve_figure(run_dir: FsPath, data: dict, *, metric: str) -> plt.Figure:
    """The figure of loss.png or accuracy.png: LLPF vs linear, train and test, raw and (when present) recalibrated."""
    points, cont = data["points"], data.get("continuity", [])
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    extra = _shade(ax, points, [p["position"] for p in points])
    plotted, baseline = _curves(ax, points, data.get("linear", []), metric=metric)
    if cont and metric == "loss":
        y = [r["loss"] for r in cont]
        ax.plot([r["position"] for r in cont], y, "x", color="tab:green", ms=4,
                label="LLPF segment interiors (continuity, train subset)")  # fmt: skip
        plotted += y
    if metric == "loss":
        plotted += _levels(ax, points, data.get("summary", {}))
    if metric == "loss" and _wants_log(plotted, baseline):
        ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised position along the path (cumulative L2 length / total; linear: t)")
    ax.set_ylabel("loss (eval mode)" if metric == "loss" else "accuracy (%)")
    untested = "" if "test_loss" in points[0] else " (no test split: test not evaluated)"
    ax.set_title(f"{run_dir.name}: {metric} along the LLPF path vs linear interpolation{untested}")
    handles, _ = ax.get_legend_handles_labels()
    # Outside the axes: a legend inside would hide the barrier, which is what the reader looks for.
    ax.legend(handles=handles + extra, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _curves(ax: plt.Axes, points: list[dict], linear: list[dict], *, metric: str) -> tuple[list[float], list[float]]:
    """The path's and linear interpolation's train and test curves, raw and (when present) recalibrated; returns
    the values drawn, the path's and the baseline's (they decide the scale)."""
    pos, lin_t = [p["position"] for p in points], [r["t"] for r in linear]
    train, test = ("eval_train_loss", "test_loss") if metric == "loss" else ("eval_train_acc", "test_acc")
    scale = 1.0 if metric == "loss" else 100.0
    plotted: list[float] = []
    baseline: list[float] = []
    marks = len(points) <= 60  # markers on long paths only hide the curve
    for suffix, style in (("", {}), ("_recal", {"alpha": 0.55, "lw": 1.2})):
        if train + suffix not in points[0]:
            continue
        tag = " (BN recalibrated)" if suffix else ""
        for col, ls, split in ((train, "-", "train"), (test, "--", "test")):
            if col + suffix not in points[0]:
                continue  # a train-only evaluation (no test split given): no test curve
            y = [scale * p[col + suffix] for p in points]
            ax.plot(pos, y, ls, color=_LLPF, marker="o" if marks and not suffix else None, ms=3,
                    label=f"LLPF {split}{tag}", **style)  # fmt: skip
            plotted += y
            if linear:
                y = [scale * r[col + suffix] for r in linear]
                ax.plot(lin_t, y, ls, color=_LINEAR, marker="s" if not suffix else None, ms=3,
                        label=f"linear {split}{tag}", **style)  # fmt: skip
                baseline += y
    return plotted, baseline


def _levels(ax: plt.Axes, points: list[dict], summary: dict) -> list[float]:
    """The levels a reader judges the loss curve by: the ceiling the run certified against (with its verdict) and
    the endpoints' train loss; returns the values drawn."""
    ends = max(points[0]["eval_train_loss"], points[-1]["eval_train_loss"])
    ax.axhline(ends, color="gray", ls=":", lw=1.2, label=f"endpoints' train loss (higher end) {ends:.4g}")
    drawn = [ends]
    run = summary.get("run") if isinstance(summary, dict) else None
    cert = run.get("certification") if isinstance(run, dict) else None
    ceiling = cert.get("ceiling") if isinstance(cert, dict) else None
    if isinstance(ceiling, (int, float)) and math.isfinite(ceiling):
        verdict = "certified" if cert.get("certified") is True else "NOT certified"
        ax.axhline(ceiling, color="black", ls="-.", lw=1.2, label=f"loss ceiling {ceiling:.4g} ({verdict})")
        drawn.append(float(ceiling))
    return drawn


def _curve_plot(run_dir: FsPath, data: dict, *, metric: str, out: FsPath) -> FsPath:
    fig = _curve_figure(run_dir, data, metric=metric)
    save_figure(fig, out)  # whole or not at all (a full disk leaves no half PNG)
    plt.close(fig)
    return out


def plot_path(
    run_dir: str | os.PathLike,
    *,
    template: nn.Module | None = None,
    out_dir: str | os.PathLike | None = None,
    layer_tables: LayerTables | None = None,
) -> list[FsPath]:
    """Draw ``loss.png``, ``accuracy.png``, ``layers.png`` and (for a run that records its stages) ``stages.png``
    of an evaluated run directory.

    Args:
        run_dir: the run directory (after :func:`hf_llpf.api.evaluate_run`).
        template: a module of the architecture, for paths of plain ``nn.Module`` s.
        out_dir: where to write (default ``RUN_DIR/plots``).
        layer_tables: ``layers.png``'s tables computed already by rows (a sharded evaluation,
            :func:`~hf_llpf.reporting.layer_plots.layer_tables_by_rows`); default: the points are read whole.

    Returns:
        The files written.

    Raises:
        RunDirectoryError: the run directory has not been evaluated.
    """
    run_dir = FsPath(run_dir)
    out_dir = FsPath(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _metrics(run_dir)
    drawn = [
        _curve_plot(run_dir, data, metric="loss", out=out_dir / "loss.png"),
        _curve_plot(run_dir, data, metric="accuracy", out=out_dir / "accuracy.png"),
        layers_plot(run_dir, data, template=template, out=out_dir / "layers.png", tables=layer_tables),
    ]
    run = data.get("summary", {}).get("run") or {}
    if isinstance(run.get("stages"), list) and run["stages"]:
        drawn.append(_stages_plot(run_dir, run, out=out_dir / "stages.png"))
    return drawn


def _stages_plot(run_dir: FsPath, run: dict, *, out: FsPath) -> FsPath:
    """``stages.png``: per stage (``summary.run.stages``), the worst probe loss of its points and segments against
    the ceiling (left) and the SGD iterations its repairs took, with its backtracks (right): where a path's bump
    and its cost are, without reading the CSV."""
    stages = run["stages"]
    labels = [f"{s['phase']} {s['stage']}" if s["phase"] != "m2m" else str(s["stage"]) for s in stages]
    x = list(range(len(stages)))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10, 0.25 * len(stages) + 6), 4.2), dpi=100)
    points = [s["max_probe_loss"] if s["max_probe_loss"] is not None else math.nan for s in stages]
    segments = [s["max_segment_loss"] if s["max_segment_loss"] is not None else math.nan for s in stages]
    left.bar(x, points, color=_LLPF, alpha=0.7, label="worst point (probe)")
    left.plot(x, segments, "v", color="tab:green", ms=5, label="worst segment midpoint (probe)")
    ceiling = ((run.get("certification") or {}).get("ceiling")) if isinstance(run.get("certification"), dict) else None
    if isinstance(ceiling, (int, float)):
        left.axhline(ceiling, color="black", ls="-.", lw=1.2, label=f"loss ceiling {ceiling:.4g}")
    left.set_ylabel("loss (eval mode)")
    left.set_title("worst loss per stage", fontsize=10)
    right.bar(x, [s["sgd_iters"] for s in stages], color="tab:orange", alpha=0.8, label="SGD iterations")
    for i, s in enumerate(stages):
        if s["backtracks"]:
            right.annotate(f"{s['backtracks']} bt", (i, s["sgd_iters"]), ha="center", va="bottom", fontsize=7)
    right.set_ylabel("SGD iterations of the repairs")
    right.set_title("cost per stage (bt: moves retried shorter)", fontsize=10)
    step = max(1, len(stages) // 40)  # at most ~40 labels: every stage has its bar, every step-th its label
    for ax in (left, right):
        ax.set_xticks(x[::step], labels[::step], rotation=90 if len(stages) > 12 else 0, fontsize=7)
        ax.set_xlabel("stage (data-flow order)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle(f"{run_dir.name}: {len(stages)} stages", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out)
    plt.close(fig)
    return out


def _run_label(run_dir: FsPath) -> str:
    try:
        seed = RunPath(run_dir).config.get("seed")
    except (OSError, RunDirectoryError):
        seed = None
    return f"seed {seed}" if seed is not None else run_dir.name


def _not_evaluated(ax: plt.Axes, text: str) -> None:
    """An axis that says its figure was not measured, instead of a curve."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10)
    ax.set_axis_off()


def plot_repeats(run_dirs: Sequence[str | os.PathLike], out_png: str | os.PathLike) -> FsPath:
    """Overlay the train and test loss curves of several evaluated runs (the consistency picture).

    Args:
        run_dirs: the evaluated run directories (one per repeat).
        out_png: the file to write.

    Returns:
        ``out_png`` as a path.

    Raises:
        RunDirectoryError: a run directory has not been evaluated, or none was given.
    """
    if not run_dirs:
        raise RunDirectoryError("plot_repeats: no run directory given (allowed: one or more evaluated runs)")
    out_png = FsPath(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    runs = [(FsPath(d), _metrics(FsPath(d))) for d in run_dirs]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    colours = plt.get_cmap("viridis" if len(runs) > 10 else "tab10")
    for ax, col, split in zip(axes, ("eval_train_loss", "test_loss"), ("train", "test")):
        if not all(col in data["points"][0] for _, data in runs if data["points"]):
            _not_evaluated(ax, f"{split} loss: not evaluated (no {split} split given)")
            continue
        values: list[float] = []
        for r, (run_dir, data) in enumerate(runs):
            colour = colours(r / max(1, len(runs) - 1)) if len(runs) > 10 else colours(r)
            pos = [p["position"] for p in data["points"]]
            y = [p[col] for p in data["points"]]
            ax.plot(pos, y, "-", color=colour, lw=1.2, alpha=0.85, label=_run_label(run_dir))
            values += y
        linear = runs[0][1].get("linear") or []
        base = [row[col] for row in linear]
        if linear:
            ax.plot([row["t"] for row in linear], base, "--", color="0.4", lw=1.2, label="linear (first run)")
        if _wants_log(values, base):
            ax.set_yscale("log")
        ax.set_xlim(0, 1)
        ax.set_xlabel("normalised position along the path")
        ax.set_ylabel(f"{split} loss (eval mode)")
        ax.set_title(f"{split} loss, {len(runs)} repeats", fontsize=10)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.865, 0.5), fontsize=8, framealpha=0.9)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    save_figure(fig, out_png)  # whole or not at all (a full disk leaves no half PNG)
    plt.close(fig)
    return out_png


__all__ = ["DWARF_RATIO", "PLOTS_DIR", "VARIANCE_FLOOR", "plot_path", "plot_repeats", "variance_limits"]
