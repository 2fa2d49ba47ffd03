"""``layers.png``: per-parameter-tensor variance and relative distance to θ_B along a path, as two heat maps.

Tensors are ordered by stage (``layer_groups.json``; white lines separate stages), the points streamed from disk
one at a time. The variance colour scale leaves out constant tensors and the lowest 1% (:func:`variance_limits`).
:func:`hf_llpf.reporting.plots.plot_path` draws it with the loss and accuracy curves.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path as FsPath
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers, and no GUI toolkit import

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from hf_llpf.geometry import variances  # noqa: E402
from hf_llpf.run import RunPath, atomic_write_bytes  # noqa: E402

VARIANCE_FLOOR = -12.0  # log10 variance below which a tensor counts as constant (drawn grey, off the scale)
LayerTables = tuple[list[str], torch.Tensor, torch.Tensor]  # tensor names, log10 variance, relative distance to θ_B


def _param_order(run_dir: FsPath, names: list[str]) -> tuple[list[str], list[int]]:
    """Parameter names in stage order (``layer_groups.json``; else model order) and each one's stage."""
    plan = RunPath(run_dir).layer_groups
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
def _layer_tables(path: RunPath, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
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


LEGIBLE_LABELS = 45  # tick labels the figure's height holds at a readable size


def tensor_labels(names: list[str], stages: list[int]) -> tuple[list[float], list[str]]:
    """The y tick positions and labels of ``layers.png``: one per tensor while they fit (``s3 conv2.weight``);
    on a deeper model one per stage, at its middle, naming what its tensors share and how many they are
    (``s3 encoder.layer.2 (16 tensors)``), so no label is dropped and none overlaps. Stages with one tensor keep
    its whole name; past :data:`LEGIBLE_LABELS` stages, every k-th stage is labelled."""
    if len(names) <= LEGIBLE_LABELS:
        return [i + 0.5 for i in range(len(names))], [f"s{stages[i]} {names[i]}" for i in range(len(names))]
    runs: list[tuple[int, int]] = []  # [start, end) of each run of one stage
    for i in range(len(names)):
        if i == 0 or stages[i] != stages[i - 1]:
            runs.append((i, i + 1))
        else:
            runs[-1] = (runs[-1][0], i + 1)
    every = max(1, math.ceil(len(runs) / LEGIBLE_LABELS))
    ticks, labels = [], []
    for start, end in runs[::every]:
        members = names[start:end]
        shared = os.path.commonprefix([n.split(".") for n in members]) if len(members) > 1 else members[0].split(".")
        what = ".".join(shared) or "(mixed)"
        ticks.append((start + end) / 2)
        labels.append(f"s{stages[start]} {what}" + (f" ({len(members)} tensors)" if len(members) > 1 else ""))
    return ticks, labels


@torch.no_grad()
def layer_tables_by_rows(path: RunPath, device: torch.device) -> LayerTables:
    """What :func:`_layer_tables` computes, with the model sharded over the processes (a sharded evaluation,
    :mod:`hf_llpf.evaluation.sharded`): each process reads only its rows of each point, the per-tensor variances and
    distances are added over the processes. Collective: every process calls it; every process gets the tables.

    Returns:
        ``(names, log10 variance, relative distance to θ_B)``: the floating parameters in model order; tables of
        tensors x points.
    """
    from hf_llpf import sharding
    from hf_llpf.evaluation.sharded import sharded_point_model

    held = sharded_point_model(path, device)
    state_b = held.tensors(held.read(path, -1))
    d0 = sharding.distances(held.tensors(held.read(path, 0)), state_b, dtype=torch.float64).cpu()
    log_var, rel_dist = [], []
    for i in range(len(path)):
        cur = held.tensors(held.read(path, i))
        log_var.append(torch.log10(sharding.variances(cur).clamp_min(1e-30)).cpu())
        d = sharding.distances(cur, state_b, dtype=torch.float64).cpu()
        rel_dist.append(torch.where(d0 > 0, d / d0.clamp_min(1e-300), torch.zeros_like(d)))
    return list(held.names), torch.stack(log_var, 1), torch.stack(rel_dist, 1)


def _ordered_tables(run_dir: FsPath, template: nn.Module | None, tables: LayerTables | None) -> tuple:
    """The tensors' names in stage order, each one's stage, and the two tables in that order: ``tables`` as computed
    by rows (:func:`layer_tables_by_rows`), or the points read whole here."""
    if tables is not None:
        own, log_var, rel_dist = tables
        names, stages = _param_order(run_dir, own)
        order = [own.index(n) for n in names]
        return names, stages, log_var[order], rel_dist[order]
    path = RunPath(run_dir, template=template)
    model = path.model_at(0)
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    del model
    names, stages = _param_order(run_dir, names)
    return names, stages, *_layer_tables(path, names)


def layers_plot(
    run_dir: FsPath, data: dict, *, template: nn.Module | None, out: FsPath, tables: LayerTables | None = None
) -> FsPath:
    """Draw ``layers.png`` of an evaluated run (``data``: its metrics) into ``out``; returns ``out``. ``tables``: the
    per-tensor tables computed already by rows (:func:`layer_tables_by_rows`), else the points are read whole."""
    names, stages, log_var, rel_dist = _ordered_tables(run_dir, template, tables)
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
    ticks, labels = tensor_labels(names, stages)
    axes[0].set_yticks(ticks)
    axes[0].set_yticklabels(labels, fontsize=7)
    each = len(labels) == len(names)
    axes[0].set_ylabel(f"{'parameter tensor' if each else 'stage: its tensors'} (white lines separate stages)")
    axes[0].invert_yaxis()  # shallowest stage at the top
    fig.suptitle(f"{run_dir.name}: per-tensor variance and distance to θ_B along the path", fontsize=11)
    fig.tight_layout()
    save_figure(fig, out)  # whole or not at all (a full disk leaves no half PNG)
    plt.close(fig)
    return out


def save_figure(fig: Any, out: str | os.PathLike) -> FsPath:
    """Write a matplotlib figure to ``out`` whole or not at all: rendered in memory, then written atomically (a full
    disk leaves no half PNG)."""
    out = FsPath(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip(".") or "png")
    atomic_write_bytes(out, buffer.getvalue())
    return out


__all__ = ["VARIANCE_FLOOR", "LayerTables", "layer_tables_by_rows", "layers_plot", "save_figure", "variance_limits"]
