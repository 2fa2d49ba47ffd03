"""Comparing path methods on the same endpoints, data and budget: :func:`compare` (docs/baselines.md).

Every method (LLPF through :func:`hf_llpf.connect`, and the baselines of :mod:`hf_llpf.baselines`) writes its
path as a run directory under ``out_dir/<method>``; every path is then judged by the one evaluator
(:func:`hf_llpf.evaluate_run`) on the same fixed batches, built once here. Those batches are wrapped in a
:class:`ProbeRecorder`, which hashes every complete pass the evaluator makes over them, so each row of the table
carries the digest of the data it was actually judged on. One table (``comparison.md`` / ``comparison.json``)
and one plot (``comparison.png``: every method's loss against normalised position) are written to ``out_dir``.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path as FsPath
from typing import Any

import torch

from hf_llpf.errors import ConfigError, NotApplicableError, UnknownNameError

METHODS = ("llpf", "linear", "slerp", "bezier", "weight-matching")
TABLE_JSON, TABLE_MD, PLOT = "comparison.json", "comparison.md", "comparison.png"


def _digest_batch(h: Any, batch: Any) -> None:
    items = batch.values() if isinstance(batch, dict) else batch
    for t in items:
        if isinstance(t, torch.Tensor):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


class ProbeRecorder:
    """Re-iterable batches that record the SHA-256 of every complete pass made over them.

    Args:
        batches: the fixed batches (re-iterable).

    Attributes:
        digests: the digest of each complete pass, in order (a pass stopped early is not recorded).
    """

    def __init__(self, batches: Any):
        self.batches = batches
        self.digests: list[str] = []

    def __iter__(self) -> Iterator[Any]:
        h = hashlib.sha256()
        for batch in self.batches:
            _digest_batch(h, batch)
            yield batch
        self.digests.append(h.hexdigest())

    def take(self) -> list[str]:
        """The distinct digests recorded since the last call (one, when every pass saw the same data)."""
        seen, self.digests = sorted(set(self.digests)), []
        return seen


def probe_digest(batches: Any) -> str:
    """The SHA-256 of one pass over ``batches`` (what :class:`ProbeRecorder` records)."""
    h = hashlib.sha256()
    for batch in batches:
        _digest_batch(h, batch)
    return h.hexdigest()


def _check_methods(methods: Sequence[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise UnknownNameError("method", unknown[0], METHODS)
    if not methods:
        raise ConfigError(f"methods=[]: give at least one of {', '.join(METHODS)}")
    return methods


def _row(method: str, result: dict, seconds: float, path: Any, probes: dict, recal: bool) -> dict:
    """One row of the table from the evaluator's result for one path."""
    fig = result["summary"]["llpf"]  # the evaluated path's own figures (the key is the engine's, for any method)
    run = path.summary.get("run", {})
    row = {
        "method": method,
        "status": "ok",
        "max_train_loss": fig["max_train_loss"],
        "barrier": fig["barrier"],
        "min_train_acc": fig["min_train_acc"],
        "test_loss_range": fig["test_loss_range"],
        "test_acc_range": fig["test_acc_range"],
        "sgd_iters": int(run.get("sgd_iters") or 0),
        "seconds": round(seconds, 2),
        "eval_seconds": result["summary"]["evaluation"]["seconds"],
        "points": len(result["points"]),
        "path_length": fig["path_length"],
        "straight_distance": fig["straight_distance"],
        "probe": probes,
        "run_dir": str(path.root),
    }
    if recal:
        rec = result["summary"]["llpf_recal"]
        row["max_train_loss_recal"], row["barrier_recal"] = rec["max_train_loss"], rec["barrier"]
    wm = run.get("weight_matching")
    if wm is not None:
        row["ends_check"] = wm["ends_check"]
        row["note"] = "ends at π(θ_B) (θ_B's units permuted: same outputs, see ends_check)"
    return row


def compare(
    model_a: Any,
    model_b: Any,
    train_data: Any = None,
    *,
    out_dir: str | os.PathLike,
    methods: Sequence[str] = METHODS,
    config: Any = None,
    points: int = 31,
    bezier: dict | None = None,
    train_subset: int | None = None,
    continuity_k: int = 4,
    eval_batch_size: int = 256,
    recalibrate_bn: bool = False,
    exist: str = "error",
    progress: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Run every method between θ_A and θ_B, judge all with the same evaluator on the same data, write the table.

    Args:
        model_a, model_b: endpoint specs, modules or Endpoints.
        train_data: a data spec, ``DataConfig`` or :class:`~hf_llpf.data.DataBundle` (``None``: ``config.data``);
            the evaluation's fixed batches are drawn from it.
        out_dir: the folder of the comparison: one run directory per method, the table and the plot.
        methods: any of ``llpf``, ``linear``, ``slerp``, ``bezier``, ``weight-matching``.
        config: :class:`~hf_llpf.config.ConnectConfig` or a dict (LLPF's settings; its data, batch size and seed
            are used by every method).
        points: points of each baseline's path (ends included).
        bezier: Bézier settings (``iters``, ``lr``, ...); ``iters`` defaults to the LLPF path's SGD iterations when
            ``llpf`` is compared, else to 500.
        train_subset: training examples the evaluation uses (a fixed seeded subset; ``None``: all).
        continuity_k: interior points per segment checked by the evaluation.
        eval_batch_size: evaluation batch size.
        recalibrate_bn: also report every path after BatchNorm recalibration (``*_recal``), and recompute the
            statistics of the linear/SLERP/weight-matching points (Bézier always does).
        exist: ``"error"`` or ``"overwrite"`` for each method's run directory.
        progress: show LLPF's progress bar.
        command: the command line, recorded.

    Returns:
        ``{"rows": [...], "probe": {...}, "settings": {...}}``, as written to ``comparison.json``.

    Raises:
        UnknownNameError: an unknown method. ConfigError: invalid settings.
    """
    from hf_llpf.api import connect, evaluate_run
    from hf_llpf.baselines import build_baseline, with_iters
    from hf_llpf.evaluation.sets import make_eval_sets
    from hf_llpf.inputs import resolve_config, training_batches

    methods = _check_methods(methods)
    if exist not in ("error", "overwrite"):
        raise ConfigError(f"exist={exist!r}: expected 'error' or 'overwrite'")
    config = resolve_config(config)
    _, bundle = training_batches(train_data, config)
    if bundle is None:
        raise ConfigError("train_data: compare needs a data spec, DataConfig or DataBundle (its test split too)")
    config = config.model_copy(update={"data": bundle.config})
    out = FsPath(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = make_eval_sets(bundle, train_subset=train_subset, batch_size=eval_batch_size, seed=config.seed)
    probe_train, probe_test = ProbeRecorder(sets.train), ProbeRecorder(sets.test)
    eval_data = {"train": probe_train, "test": probe_test}
    options = {"data": eval_data, "recalibrate_bn": recalibrate_bn, "continuity_k": continuity_k}
    rows, llpf_iters = [], None
    for method in methods:
        start = time.perf_counter()
        run_dir = out / method
        try:
            if method == "llpf":
                path = connect(
                    model_a,
                    model_b,
                    bundle,
                    config=config,
                    run_dir=run_dir,
                    exist=exist,
                    progress=progress,
                    command=command,
                )
                llpf_iters = int(path.summary["run"]["sgd_iters"])
            else:
                settings = with_iters(bezier, llpf_iters) if (llpf_iters and "iters" not in (bezier or {})) else bezier
                path = build_baseline(
                    method,
                    model_a,
                    model_b,
                    bundle,
                    run_dir=run_dir,
                    config=config,
                    points=points,
                    bezier=settings,
                    recalibrate_bn=recalibrate_bn,
                    exist=exist,
                    command=command,
                )
        except NotApplicableError as err:
            rows.append({"method": method, "status": f"not applicable: {err.reason}"})
            continue
        seconds = time.perf_counter() - start
        result = evaluate_run(path, **options)
        probes = {"train": probe_train.take(), "test": probe_test.take()}
        rows.append(_row(method, result, seconds, path, probes, recalibrate_bn))
    table = {
        "rows": rows,
        "probe": {
            "train": probe_digest(sets.train),
            "test": probe_digest(sets.test),
            "train_examples": sets.train.num_examples,
            "test_examples": sets.test.num_examples,
        },
        "settings": {
            "methods": methods,
            "points": points,
            "train_subset": train_subset,
            "seed": config.seed,
            "recalibrate_bn": recalibrate_bn,
            "continuity_k": continuity_k,
            "data": bundle.config.source,
        },
    }
    _write(out, table)
    return table


def _write(out: FsPath, table: dict) -> None:
    import json

    from hf_llpf.run import atomic_write_text

    atomic_write_text(out / TABLE_JSON, json.dumps(table, indent=2) + "\n")
    atomic_write_text(out / TABLE_MD, markdown_table(table) + "\n")
    plot_comparison(table, out / PLOT)


def _f(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}f}"


def _range(r: Sequence[float] | None, digits: int = 3) -> str:
    return "—" if not r else f"{_f(r[0], digits)}–{_f(r[1], digits)}"


def markdown_table(table: dict) -> str:
    """The comparison as a markdown table (one row per method, the probe data named under it)."""
    recal = table["settings"].get("recalibrate_bn")
    head = [
        "method",
        "max train loss",
        "barrier",
        "min train acc",
        "test loss range",
        "test acc range",
        "SGD iters",
        "wall s",
    ] + (["max train loss (BN recal)", "barrier (BN recal)"] if recal else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for r in table["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " |" * (len(head) - 2))
            continue
        cells = [
            r["method"],
            _f(r["max_train_loss"]),
            _f(r["barrier"]),
            _f(r["min_train_acc"]),
            _range(r["test_loss_range"]),
            _range(r["test_acc_range"]),
            str(r["sgd_iters"]),
            _f(r["seconds"], 1),
        ]
        if recal:
            cells += [_f(r.get("max_train_loss_recal")), _f(r.get("barrier_recal"))]
        lines.append("| " + " | ".join(cells) + " |")
        if "ends_check" in r:
            c = r["ends_check"]
            notes.append(
                f"{r['method']}: {r['note']}; max |Δ output| {c['max_abs_output_diff']:.2e} "
                f"(outputs up to {c['max_abs_output']:.2f}), same predictions: {c['same_predictions']}"
            )
    p = table["probe"]
    lines += [
        "",
        f"All rows judged on the same data: {p['train_examples']} train examples (sha256 {p['train'][:12]}…), "
        f"{p['test_examples']} test examples (sha256 {p['test'][:12]}…).",
    ]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)


def plot_comparison(table: dict, out_png: str | os.PathLike) -> FsPath:
    """``comparison.png``: each method's train loss (left) and test loss (right), eval mode on the fixed data,
    against normalised position along its path (cumulative L2 length / total length, as the barrier uses)."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    from hf_llpf.run import read_metrics

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in table["rows"]:
        if r["status"] != "ok":
            continue
        pts = read_metrics(r["run_dir"])["points"]
        pos = [p["position"] for p in pts]
        for ax, col in zip(axes, ("eval_train_loss", "test_loss")):
            ax.plot(pos, [p[col] for p in pts], marker=".", ms=3, lw=1.3, label=r["method"])
    for ax, title in zip(axes, ("train loss (fixed subset, eval mode)", "test loss")):
        ax.set_xlabel("normalised position along the path")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if axes[0].get_lines():
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_png = FsPath(out_png)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


__all__ = ["METHODS", "ProbeRecorder", "compare", "markdown_table", "plot_comparison", "probe_digest"]
