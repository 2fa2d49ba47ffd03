"""Pictures of an evaluated path (matplotlib, Agg backend, PNG files in ``RUN_DIR/plots/``).

- ``loss.png`` and ``accuracy.png``: train (eval mode, fixed subset) and test along the path vs the linear
  baseline, x = normalised position along the path; the continuity samples as crosses; stages shaded, phases
  marked in a band at the bottom (a one-point phase such as "end" gets a visible width); a log-scale loss axis
  when the losses span more than two orders of magnitude or the baseline's peak is more than
  :data:`DWARF_RATIO` times the path's (a path under 0.05 beside a barrier of 2.4 is not a flat line at zero).
- ``layers.png``: per-parameter-tensor variance and relative distance to θ_B along the path as heat maps,
  tensors ordered by stage (``layer_groups.json``), points streamed from disk; the variance colour scale
  leaves out constant tensors (variance < 1e-12) and the lowest 1% (grey), see :func:`variance_limits`.
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
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hf_llpf.errors import RunDirectoryError  # noqa: E402
from hf_llpf.geometry import variances  # noqa: E402
from hf_llpf.run import Path, read_metrics  # noqa: E402
from hf_llpf.run.layout import PLOTS_DIR  # noqa: E402

_LLPF, _LINEAR = "tab:blue", "tab:red"
_STAGE_COLOURS = ("#f2f2f2", "#dde8f3")
_PHASE_COLOURS = ("tab:olive", "tab:purple", "tab:cyan", "tab:brown", "tab:pink", "tab:gray")
_MIN_BAND = 0.012  # narrowest phase band drawn, as a fraction of the axis (~9 pixels at the default size)
DWARF_RATIO = 10.0  # baseline max / path max above which the loss axis is logarithmic
VARIANCE_FLOOR = -12.0  # log10 variance below which a tensor counts as constant (drawn grey, off the scale)


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
    points, linear, cont = data["points"], data.get("linear", []), data.get("continuity", [])
    pos = [p["position"] for p in points]
    lin_t = [r["t"] for r in linear]
    train, test = ("eval_train_loss", "test_loss") if metric == "loss" else ("eval_train_acc", "test_acc")
    scale = 1.0 if metric == "loss" else 100.0
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    extra = _shade(ax, points, pos)
    plotted: list[float] = []  # the path's own values
    baseline: list[float] = []  # linear interpolation's
    marks = len(points) <= 60  # markers on long paths only hide the curve
    for suffix, style in (("", {}), ("_recal", {"alpha": 0.55, "lw": 1.2})):
        if train + suffix not in points[0]:
            continue
        tag = " (BN recalibrated)" if suffix else ""
        for col, ls, split in ((train, "-", "train"), (test, "--", "test")):
            y = [scale * p[col + suffix] for p in points]
            ax.plot(
                pos,
                y,
                ls,
                color=_LLPF,
                marker="o" if marks and not suffix else None,
                ms=3,
                label=f"LLPF {split}{tag}",
                **style,
            )
            plotted += y
            if linear:
                y = [scale * r[col + suffix] for r in linear]
                ax.plot(
                    lin_t,
                    y,
                    ls,
                    color=_LINEAR,
                    marker="s" if not suffix else None,
                    ms=3,
                    label=f"linear {split}{tag}",
                    **style,
                )
                baseline += y
    if cont and metric == "loss":
        y = [r["loss"] for r in cont]
        ax.plot(
            [r["position"] for r in cont],
            y,
            "x",
            color="tab:green",
            ms=4,
            label="LLPF segment interiors (continuity, train subset)",
        )
        plotted += y
    if metric == "loss" and _wants_log(plotted, baseline):
        ax.set_yscale("log")
    ax.set_xlim(0, 1)
    ax.set_xlabel("normalised position along the path (cumulative L2 length / total; linear: t)")
    ax.set_ylabel("loss (eval mode)" if metric == "loss" else "accuracy (%)")
    ax.set_title(f"{run_dir.name}: {metric} along the LLPF path vs linear interpolation")
    handles, _ = ax.get_legend_handles_labels()
    # Outside the axes: a legend inside would hide the barrier, which is what the reader looks for.
    ax.legend(handles=handles + extra, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _curve_plot(run_dir: FsPath, data: dict, *, metric: str, out: FsPath) -> FsPath:
    fig = _curve_figure(run_dir, data, metric=metric)
    fig.savefig(out)
    plt.close(fig)
    return out


def _param_order(run_dir: FsPath, names: list[str]) -> tuple[list[str], list[int]]:
    """Parameter names in stage order (``layer_groups.json``; else model order) and each one's stage."""
    plan = Path(run_dir).layer_groups
    if plan is None:
        return names, [0] * len(names)
    ordered, stages = [], []
    for s in plan.get("stages", []):
        for g in s.get("groups", []):
            for n in g.get("param_names", []):
                if n in names and n not in ordered:
                    ordered.append(n)
                    stages.append(int(s.get("index", 0)))
    rest = [n for n in names if n not in ordered]  # never grouped (frozen, or not found): shown last
    return ordered + rest, stages + [stages[-1] + 1 if stages else 0] * len(rest)


@torch.no_grad()
def _layer_tables(path: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per point and tensor: log10 variance and ‖θ_i − θ_B‖ / ‖θ_A − θ_B‖, streaming the points."""
    state_b = path.state_dict_at(-1)
    state_a = path.state_dict_at(0)
    d0 = torch.stack([torch.linalg.vector_norm((state_a[n] - state_b[n]).double()) for n in names])
    del state_a
    log_var, rel_dist = [], []
    for i in range(len(path)):
        cur = path.state_dict_at(i)
        tensors = [cur[n] for n in names]
        log_var.append(torch.log10(variances(tensors).clamp_min(1e-30)))
        d = torch.stack([torch.linalg.vector_norm((cur[n] - state_b[n]).double()) for n in names])
        # Tensors with θ_A = θ_B (not moved by the path) get 0 rather than 0/0.
        rel_dist.append(torch.where(d0 > 0, d / d0.clamp_min(1e-300), torch.zeros_like(d)))
    return torch.stack(log_var, 1), torch.stack(rel_dist, 1)  # tensors x points


def variance_limits(log_var: torch.Tensor) -> tuple[float, float, bool]:
    """Colour limits of the variance panel: ``(vmin, vmax, whether some cells fall below vmin)``.

    A tensor that never moves (a zero bias, a constant scale) has a variance of rounding size (~1e-15,
    or 0 clamped to 1e-30): taken as the colour scale's minimum it squeezes every other tensor into one
    colour. So cells under ``10**VARIANCE_FLOOR`` are left off the scale, and when the lowest 1% of the rest
    lies more than a decade under the others the scale starts at that 1st percentile. Cells below the
    scale are drawn grey, and the colour bar says so with an arrow.
    """
    values = log_var[torch.isfinite(log_var)].double()
    if values.numel() == 0:
        return 0.0, 1.0, False
    live = values[values > VARIANCE_FLOOR]
    live = live if live.numel() else values
    lo, hi = float(live.min()), float(live.max())
    q = float(torch.quantile(live, 0.01))
    if q - lo > 1.0:  # a few cells more than a decade under the rest: outliers, not the scale
        lo = q
    if hi - lo < 1e-9:  # one value everywhere: a unit-wide scale around it
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi, bool((values < lo).any())


def _edges(pos: list[float]) -> list[float]:
    if len(pos) == 1:
        return [0.0, 1.0]
    mids = [(a + b) / 2 for a, b in zip(pos, pos[1:])]
    return [pos[0] - (mids[0] - pos[0]), *mids, pos[-1] + (pos[-1] - mids[-1])]


def _layers_plot(run_dir: FsPath, data: dict, *, template: nn.Module | None, out: FsPath) -> FsPath:
    path = Path(run_dir, template=template)
    model = path.model_at(0)
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    del model
    names, stages = _param_order(run_dir, names)
    log_var, rel_dist = _layer_tables(path, names)
    pos = [p["position"] for p in data["points"]]
    x = _edges(pos)
    y = list(range(len(names) + 1))
    height = min(14.0, 2.5 + 0.22 * len(names))
    fig, axes = plt.subplots(1, 2, figsize=(13, height), dpi=110, sharey=True)
    lo, hi, clipped = variance_limits(log_var)
    var_title = "log10 variance of each tensor"
    if clipped:
        var_title += f"\n(grey: below {lo:.3g}: constant tensors, variance < 1e{VARIANCE_FLOOR:.0f}, or outliers)"
    panels = (
        (log_var, var_title, "viridis", (lo, hi), "min" if clipped else "neither"),
        (
            rel_dist,
            "distance to θ_B, relative: ‖θ−θ_B‖ / ‖θ_A−θ_B‖",
            "magma",
            (0, max(1.0, float(rel_dist.max()))),
            "neither",
        ),
    )
    for ax, (table, title, name, lim, extend) in zip(axes, panels):
        cmap = plt.get_cmap(name).with_extremes(under="0.7")
        mesh = ax.pcolormesh(x, y, table.numpy(), cmap=cmap, shading="flat", vmin=lim[0], vmax=lim[1])
        fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02, extend=extend)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("normalised position along the path")
        for j in range(1, len(stages)):
            if stages[j] != stages[j - 1]:
                ax.axhline(j, color="white", lw=0.8)
    every = max(1, math.ceil(len(names) / 45))  # keep tick labels legible on deep models
    ticks = list(range(0, len(names), every))
    axes[0].set_yticks([t + 0.5 for t in ticks])
    axes[0].set_yticklabels([f"s{stages[t]} {names[t]}" for t in ticks], fontsize=7)
    axes[0].set_ylabel("parameter tensor (stage order; white lines separate stages)")
    axes[0].invert_yaxis()  # shallowest stage at the top
    fig.suptitle(f"{run_dir.name}: per-tensor variance and distance to θ_B along the path", fontsize=11)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_path(
    run_dir: str | os.PathLike, *, template: nn.Module | None = None, out_dir: str | os.PathLike | None = None
) -> list[FsPath]:
    """Draw ``loss.png``, ``accuracy.png`` and ``layers.png`` of an evaluated run directory.

    Args:
        run_dir: the run directory (after :func:`hf_llpf.api.evaluate_run`).
        template: a module of the architecture, for paths of plain ``nn.Module`` s.
        out_dir: where to write (default ``RUN_DIR/plots``).

    Returns:
        The files written.

    Raises:
        RunDirectoryError: the run directory has not been evaluated.
    """
    run_dir = FsPath(run_dir)
    out_dir = FsPath(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _metrics(run_dir)
    return [
        _curve_plot(run_dir, data, metric="loss", out=out_dir / "loss.png"),
        _curve_plot(run_dir, data, metric="accuracy", out=out_dir / "accuracy.png"),
        _layers_plot(run_dir, data, template=template, out=out_dir / "layers.png"),
    ]


def _run_label(run_dir: FsPath) -> str:
    try:
        seed = Path(run_dir).config.get("seed")
    except (OSError, RunDirectoryError):
        seed = None
    return f"seed {seed}" if seed is not None else run_dir.name


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
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


__all__ = ["DWARF_RATIO", "PLOTS_DIR", "VARIANCE_FLOOR", "plot_path", "plot_repeats", "variance_limits"]
