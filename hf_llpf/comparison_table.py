"""The comparison's table and plot: ``comparison.md``, ``comparison.json``, ``comparison.png`` (docs/baselines.md).

Reads the rows :func:`hf_llpf.compare` made (and, for the plot, each method's evaluated ``path_metrics.json``);
computes nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.reporting.report import NOT_EVALUATED, training_data_words

TABLE_JSON, TABLE_MD, PLOT = "comparison.json", "comparison.md", "comparison.png"


def table_row(method: str, result: dict, seconds: float, path: Any, probes: dict, recal: bool) -> dict:
    """One row of the table from the evaluator's result for one path (``probes``: the digests it saw)."""
    fig = result["summary"]["llpf"]  # the evaluated path's own figures (the key is the engine's, for any method)
    run = path.summary.get("run", {})
    row = {
        "method": method,
        "status": "ok",
        "max_train_loss": fig["max_train_loss"],
        "barrier": fig["barrier"],
        "min_train_acc": fig["min_train_acc"],
        "test_loss_range": fig.get("test_loss_range"),  # None: no test split given (not evaluated)
        "test_acc_range": fig.get("test_acc_range"),
        "sgd_iters": int(run.get("sgd_iters") or 0),
        "seconds": round(seconds, 2),
        "eval_seconds": result["summary"]["evaluation"]["seconds"],
        "points": len(result["points"]),
        "path_length": fig["path_length"],
        "straight_distance": fig["straight_distance"],
        "probe": probes,
        "run_dir": str(path.root),
        **certify_cost(run, seconds),
    }
    if recal:
        rec = result["summary"]["llpf_recal"]
        row["max_train_loss_recal"], row["barrier_recal"] = rec["max_train_loss"], rec["barrier"]
    wm = run.get("weight_matching")
    if wm is not None:
        row["ends_check"] = wm["ends_check"]
        row["note"] = "ends at π(θ_B) (θ_B's units permuted: same outputs, see ends_check)"
    return row


def certify_cost(run: dict, seconds: float) -> dict:
    """What a row says of the path's certificate: ``certified`` (``None``: not held under a ceiling), the cost to
    certify (``iters_to_certify``, ``seconds_to_certify``: the run's own SGD iterations and wall time when it
    certified; a trained baseline stops when it certifies), ``full_set_max`` (the final check's maximum over every
    point and segment midpoint on all the training examples), ``ceiling`` and, for a trained baseline, ``cap_hit``."""
    cert = run.get("certification")
    certified = _certified(cert)
    cert = cert if isinstance(cert, dict) else {}
    final = cert.get("final_check") if isinstance(cert.get("final_check"), dict) else {}
    out = {
        "certified": certified,
        "ceiling": cert.get("ceiling"),
        "iters_to_certify": cert.get("iters_to_certify", int(run.get("sgd_iters") or 0)) if certified else None,
        "seconds_to_certify": cert.get("seconds_to_certify", round(seconds, 2)) if certified else None,
        "full_set_max": final.get("max"),
    }
    if "cap" in cert:
        out.update(cap=cert["cap"], cap_hit=bool(cert.get("cap_hit")), stopped=cert.get("stopped"))
    if certified is False:
        out["uncertified"] = list(cert.get("uncertified") or [])
    return out


def _certified(cert: Any) -> bool | None:
    """Whether the path was certified under a ceiling: ``None`` for a path that was not held under one (closed-form
    curves, a run with ``loss_ceiling: null``)."""
    if not isinstance(cert, dict) or cert.get("ceiling") is None:
        return None
    return cert.get("certified") is True


def verdict_lines(rows: Sequence[dict]) -> list[str]:
    """One line per criterion naming the method that wins it: the lowest maximum train loss (on the same data for
    every row), and the lowest cost to certify (SGD iterations, then seconds, until the path was certified, among the
    certified paths)."""
    judged = [r for r in rows if r["status"] == "ok" and not _missing(r["max_train_loss"])]
    lines = []
    if judged:
        ranked = sorted(judged, key=lambda r: r["max_train_loss"])
        best = ranked[0]
        runner_up = f"; next {ranked[1]['method']} {_f(ranked[1]['max_train_loss'])}" if len(ranked) > 1 else ""
        lines.append(f"lowest maximum train loss: {best['method']} ({_f(best['max_train_loss'])}{runner_up})")
    certified = [r for r in judged if r.get("certified")]
    if certified:
        cheapest = min(certified, key=_cost)
        others = [r["method"] for r in certified if r is not cheapest]
        also = f"; also certified: {', '.join(others)}" if others else "; no other method was certified"
        iters, seconds = _cost(cheapest)
        lines.append(
            f"lowest cost to certify: {cheapest['method']} ({iters} SGD iterations, {_f(seconds, 1)} s){also}"
        )
    else:
        lines.append("lowest cost to certify: none — no path in this comparison was certified under a ceiling")
    return lines


def _cost(row: dict) -> tuple[int, float]:
    """A certified row's cost to certify: SGD iterations, then seconds (a table of an earlier version: the run's)."""
    iters, seconds = row.get("iters_to_certify"), row.get("seconds_to_certify")
    return (row["sgd_iters"] if iters is None else iters, row["seconds"] if seconds is None else seconds)


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def write_comparison(out: FsPath, table: dict) -> None:
    """Write ``comparison.json``, ``comparison.md`` and ``comparison.png`` into ``out``, atomically."""
    import json

    from hf_llpf.run import atomic_write_text

    atomic_write_text(out / TABLE_JSON, json.dumps(table, indent=2) + "\n")
    atomic_write_text(out / TABLE_MD, markdown_table(table) + "\n")
    plot_comparison(table, out / PLOT)


def _f(x: Any, digits: int = 4) -> str:
    if _missing(x):
        return "—"
    return f"{x:.{digits}f}"


def _range(r: Sequence[float] | None, digits: int = 3) -> str:
    return "—" if not r else f"{_f(r[0], digits)}–{_f(r[1], digits)}"


def _pct(x: Any) -> str:
    """An accuracy as a percentage, the unit of every report of this tool (stored as a fraction)."""
    return "—" if _missing(x) else f"{100 * x:.2f}%"


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
        "certified",
        "SGD iters to certify",
        "s to certify",
        "full-set max",
    ] + (["max train loss (BN recal)", "barrier (BN recal)"] if recal else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    tested = table["probe"].get("test") is not None  # a train-only comparison: no test split was given
    for r in table["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['method']} | {r['status']} |" + " |" * (len(head) - 2))
            continue
        cells = [
            r["method"],
            _f(r["max_train_loss"]),
            _f(r["barrier"]),
            _pct(r["min_train_acc"]),
            *(_test_ranges(r) if tested else [NOT_EVALUATED] * 2),
            str(r["sgd_iters"]),
            _f(r["seconds"], 1),
            {True: "yes", False: "NO"}.get(r.get("certified"), "—"),
            "—" if r.get("iters_to_certify") is None else str(r["iters_to_certify"]),
            _f(r.get("seconds_to_certify"), 1),
            _f(r.get("full_set_max")),
        ]
        if recal:
            cells += [_f(r.get("max_train_loss_recal")), _f(r.get("barrier_recal"))]
        lines.append("| " + " | ".join(cells) + " |")
        if r.get("certified") is False:
            notes.append(_not_certified(r))
        if "ends_check" in r:
            c = r["ends_check"]
            notes.append(
                f"{r['method']}: {r['note']}; max |Δ output| {c['max_abs_output_diff']:.2e} "
                f"(outputs up to {c['max_abs_output']:.2f}), same predictions: {c['same_predictions']}"
            )
    p = table["probe"]
    chosen = f"{training_data_words(p)}; " if "train_data" in p else ""  # tables written before train_data: no words
    train = f"{p['train_examples']} train examples ({chosen}sha256 {p['train'][:12]}…)"
    test = (
        f"{p['test_examples']} test examples (sha256 {p['test'][:12]}…)"
        if tested
        else ("no test split (test figures not evaluated)")
    )
    lines += ["", f"All rows judged on the same data: {train}, {test}."]
    lines += [f"- {n}" for n in notes]
    lines += ["", *(f"verdict: {v}" for v in verdict_lines(table["rows"]))]
    return "\n".join(lines)


def _test_ranges(r: dict) -> list[str]:
    """A row's test loss and accuracy ranges, as cells."""
    acc = r.get("test_acc_range")
    return [_range(r.get("test_loss_range")), "—" if not acc else f"{_pct(acc[0])}–{_pct(acc[1])}"]


def _not_certified(row: dict) -> str:
    """Why a row is not certified: the cap it reached (a trained baseline) and what stayed above the ceiling."""
    bad = row.get("uncertified") or []
    why = {
        "cap": f"the cap of {row.get('cap')} SGD iterations was reached",
        "end above": "an end is above the ceiling (no training moves it)",
        "final check": "the final check on every training example found a position above",
    }.get(row.get("stopped"))
    where = "; ".join(f"{u['what']} at t={u['t']:.3g} {u['loss']:.4g}" if "t" in u
                      else f"{u['what']} at tick {u['tick']} {u['loss']:.4g}" for u in bad[:3])  # fmt: skip
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    above = f"{len(bad)} above the ceiling {_f(row.get('ceiling'))}: {where}{more}" if bad else ""
    return f"{row['method']}: NOT certified: " + "; ".join(x for x in (why, above) if x)


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
            if all(col in p for p in pts):  # a train-only evaluation has no test column
                ax.plot(pos, [p[col] for p in pts], marker=".", ms=3, lw=1.3, label=r["method"])
    untested = table["probe"].get("test") is None
    test_title = "test loss: not evaluated (no test split)" if untested else "test loss"
    for ax, title in zip(axes, ("train loss (eval mode)", test_title)):
        ax.set_xlabel("normalised position along the path")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if axes[0].get_lines():
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    out_png = FsPath(out_png)
    from hf_llpf.reporting.layer_plots import save_figure

    save_figure(fig, out_png)  # whole or not at all (a full disk leaves no half PNG)
    plt.close(fig)
    return out_png


__all__ = [
    "PLOT",
    "certify_cost",
    "TABLE_JSON",
    "TABLE_MD",
    "markdown_table",
    "plot_comparison",
    "table_row",
    "verdict_lines",
    "write_comparison",
]
