"""The evaluation report: one delimited section of ``RUN_DIR/README.md``.

The section lies between :data:`START` and :data:`END`; everything outside them belongs to whoever else writes
the file (the Hub model card), so :func:`write_report` replaces only that section, or appends it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.files.textfiles import read_text
from hf_llpf.run import atomic_write_text, read_metrics, read_run_json
from hf_llpf.run.layout import CONSISTENCY_JSON, METRICS_JSON, PLOTS_DIR, README
from hf_llpf.run.storage import storage_sentence

START = "<!-- hf_llpf:report:start -->"
END = "<!-- hf_llpf:report:end -->"
# What a figure of a split the evaluation was not given shows (a train-only evaluation: no test split).
NOT_EVALUATED = "not evaluated"

_DEFINITIONS = """\
Definitions (the same for LLPF and linear; *loss* is the path's loss in eval mode on the training examples above):
- **max train loss**: the largest loss over the saved points (linear: over the interpolation points);
- **barrier**: max over points of loss_i − ((1−t_i)·loss_A + t_i·loss_B), t_i = cumulative L2 length / total
  length (linear: t_i = i/(N−1)), A and B the first and last point;
- **test loss / accuracy range**: [min, max] over the points on the whole test split (*not evaluated*: the data
  given had no test split);
- **path length**: sum of the L2 steps between consecutive saved points over all parameters;
  **straight distance**: |θ_B − θ_A|;
- **worst continuity loss**: the largest loss at K interior points of every straight segment between consecutive
  points (continuity subset); *excess* = that loss minus the straight line between the segment's end losses."""


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, (list, tuple)):
        return " – ".join(_fmt(x, pct) for x in v)
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return f"{100 * v:.2f}%" if pct else f"{v:.4g}"


def _where(at: dict | None) -> str:
    if not at:
        return ""
    text = f" (segment {at['segment']}, ticks {at['from_tick']}→{at['to_tick']}, s={at['s']:.2f}"
    if at.get("excess") is not None:
        text += f", excess {_fmt(at['excess'])}"
    return text + ")"


_ROWS = (
    ("max train loss", "max_train_loss", False),
    ("barrier", "barrier", False),
    ("min train accuracy", "min_train_acc", True),
    ("test loss range", "test_loss_range", False),
    ("test accuracy range", "test_acc_range", True),
)


def endpoint_table(rows: dict[str, dict]) -> str:
    """Markdown table of trained endpoints: train/test loss and accuracy, SGD iterations, seconds."""
    lines = [
        "| endpoint | train loss | train acc | test loss | test acc | SGD iterations | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['train']['loss']:.4f} | {m['train']['accuracy']:.2%} | {m['test']['loss']:.4f} "
            f"| {m['test']['accuracy']:.2%} | {m['iterations']} | {m['seconds']:.1f} |"
        )
    return "\n".join(lines)


def summary_table(summary: dict[str, Any]) -> str:
    """A markdown table of the summary figures, LLPF and linear side by side (recalibrated columns when present).

    Args:
        summary: the ``summary`` of ``path_metrics.json`` (keys ``llpf``, ``linear``, optional ``*_recal``).
    """
    cols = [
        (k, title)
        for k, title in (
            ("llpf", "LLPF"),
            ("linear", "linear"),
            ("llpf_recal", "LLPF, BN recal."),
            ("linear_recal", "linear, BN recal."),
        )
        if k in summary
    ]
    lines = ["| figure | " + " | ".join(t for _, t in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, key, pct in _ROWS:
        cells = [_fmt(summary[k].get(key), pct) if key in summary[k] else NOT_EVALUATED for k, _ in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    llpf = summary.get("llpf", {})
    straight = llpf.get("straight_distance")
    blank = ["—"] * (len(cols) - 1)
    # The linear path's length is its straight distance, by definition.
    lines.append(
        "| path length (L2) | " + " | ".join([_fmt(llpf.get("path_length")), _fmt(straight), *blank[1:]]) + " |"
    )
    lines.append(
        "| straight distance \\|θ_B − θ_A\\| | " + " | ".join([_fmt(straight), _fmt(straight), *blank[1:]]) + " |"
    )
    worst = _fmt(llpf.get("worst_continuity_loss")) + _where(llpf.get("worst_continuity_at"))
    lines.append("| worst continuity loss | " + " | ".join([worst, *blank]) + " |")
    return "\n".join(lines)


def consistency_table(consistency: dict[str, Any]) -> str:
    """A markdown table of ``consistency.json``: mean ± std and [min, max] of each figure over the repeats."""
    lines = ["| figure | mean ± std | min | max |", "|---|---|---|---|"]
    for key, stats in consistency.get("figures", {}).items():
        lines.append(
            f"| {key} | {_fmt(stats['mean'])} ± {_fmt(stats['std'])} | {_fmt(stats['min'])} | {_fmt(stats['max'])} |"
        )
    return "\n".join(lines)


def test_examples(evaluation: dict[str, Any]) -> str:
    """``"N test examples"``, or what a train-only evaluation says instead (``test_examples`` null: no test split
    was given, so no test figure was measured)."""
    n = evaluation.get("test_examples")
    return "no test split (test figures not evaluated)" if n is None else f"{n} test examples"


def training_data_words(evaluation: dict[str, Any]) -> str:
    """How the evaluation's training examples were chosen, as the reports word it: ``"fixed subset, seed S"``,
    ``"the whole training split"`` or, for the caller's own batches (which ``train_subset`` and ``seed`` never
    cut), ``"your N batches, used whole"``.

    Args:
        evaluation: ``summary["evaluation"]`` (its ``train_data``; one recorded without it is worded from its
            ``train_subset`` and ``seed``, as they were given).
    """
    origin = evaluation.get("train_data")
    if not isinstance(origin, dict):  # recorded before train_data: nothing says whether the subset applied
        given = evaluation.get("train_subset")
        return "the whole training data" if given is None else f"train_subset {given}, seed {evaluation.get('seed')}"
    if origin.get("form") == "own batches":
        n = origin.get("batches")
        return f"your {n} batch{'es' if n != 1 else ''}, used whole"
    if origin.get("form") == "seeded subset":
        return f"fixed subset, seed {origin.get('seed')}"
    return "the whole training split"


def path_verdict(summary: dict[str, Any], certification: dict[str, Any] | None = None) -> str:
    """The run's last line: the certification against the loss ceiling, then the comparison with linear
    interpolation on the same data.

    It states what the figures show and nothing more: "certified" only when the engine held every point and
    segment under the ceiling, "WORSE" whenever the path's maximum is above the straight line's.

    Args:
        summary: the evaluation summary (``llpf``, ``linear``; ``run.certification`` when read from the file).
        certification: the run's ``summary.run.certification`` (default: the one in ``summary``).
    """
    from hf_llpf.algorithms.certify import certification_line

    cert = certification if certification is not None else summary.get("run", {}).get("certification")
    certified = certification_line(cert) if cert is not None else "not certified: the run records no loss ceiling"
    llpf, linear = summary.get("llpf", {}), summary.get("linear", {})
    a, b = llpf.get("max_train_loss"), linear.get("max_train_loss")
    if a is None or b is None or a != a or b != b:  # NaN: a point could not be judged
        return f"verdict: {certified}; no comparison (the path or the linear baseline has no finite maximum)"
    where, accuracy = _worst_place(llpf.get("worst_point")), _accuracy_clause(llpf, linear)
    data = _judged_on(summary.get("evaluation"))
    if a <= b:
        return (
            f"verdict: {certified}; the path's maximum train loss {a:.4g}{where} is not above linear "
            f"interpolation's {b:.4g} on {data}{accuracy}"
        )
    return (
        f"verdict: the path is WORSE than linear interpolation: maximum train loss {a:.4g}{where} vs {b:.4g} on "
        f"{data}{accuracy} ({certified}); use the straight line (method: linear), or lower loss_ceiling"
    )


def _judged_on(evaluation: Any) -> str:
    """The data both maxima were measured on, as the verdict words it: a fixed subset is named with its size, since
    a subset's mean loss may exceed the whole set's, over which the certificate holds."""
    origin = evaluation.get("train_data") if isinstance(evaluation, dict) else None
    if isinstance(origin, dict) and origin.get("form") == "seeded subset":
        return (f"the same {evaluation.get('train_examples')} training examples (a {training_data_words(evaluation)}: "
                "its mean may exceed the whole set's)")  # fmt: skip
    return "the same data"


def _worst_place(worst: Any) -> str:
    """`` (tick T, stage S, at 42% of the path)`` for the path's worst point, when the evaluation located it."""
    if not isinstance(worst, dict) or worst.get("tick") is None:
        return ""
    stage = f", stage {worst['stage']}" if worst.get("stage") is not None else ""
    position = worst.get("position")
    at = f", at {100 * position:.0f}% of the path" if isinstance(position, (int, float)) else ""
    return f" (tick {worst['tick']}{stage}{at})"


def _accuracy_clause(llpf: dict, linear: dict) -> str:
    """The path's minimum train accuracy against the straight line's, saying plainly when it is lower (empty when
    the task has no accuracy)."""
    a, b = llpf.get("min_train_acc"), linear.get("min_train_acc")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in (a, b)):
        return ""
    if a < b:
        return f"; its minimum train accuracy {100 * a:.2f}% is BELOW linear interpolation's {100 * b:.2f}%"
    return f"; its minimum train accuracy {100 * a:.2f}% is not below linear interpolation's {100 * b:.2f}%"


def render_section(run_dir: str | os.PathLike) -> str:
    """The report section of ``run_dir`` (markers included), from ``path_metrics.json`` and the plots present."""
    run_dir = FsPath(run_dir)
    parts = [START, "## Path evaluation", ""]
    metrics = read_metrics(run_dir) if (run_dir / METRICS_JSON).is_file() else {}
    summary = metrics.get("summary", {})
    if "llpf" in summary:
        ev = summary.get("evaluation", {})
        parts += [
            f"{len(metrics.get('points', []))} saved points evaluated on {ev.get('train_examples')} training examples "
            f"({training_data_words(ev)}) and {test_examples(ev)}; linear baseline at "
            f"{ev.get('linear_points')} points; continuity: {ev.get('continuity_k')} interior point(s) per segment on "
            f"{ev.get('continuity_examples')} training examples"
            + ("; BatchNorm recalibrated in separate columns." if ev.get("recalibrate_bn") else "."),
            *([storage, ""] if (storage := storage_sentence(summary)) else [""]),
            summary_table(summary),
            "",
            f"**{path_verdict(summary)}**",
            "",
            _DEFINITIONS,
            "",
        ]
    for name, alt in (
        ("loss", "loss along the path"),
        ("accuracy", "accuracy along the path"),
        ("layers", "per-layer variance and distance to θ_B"),
    ):
        if (run_dir / PLOTS_DIR / f"{name}.png").is_file():
            parts += [f"![{alt}](plots/{name}.png)", ""]
    if (run_dir / CONSISTENCY_JSON).is_file():
        consistency = read_run_json(run_dir, CONSISTENCY_JSON)
        parts += [
            f"### Consistency over {consistency.get('repeats')} repeats (seeds {consistency.get('seeds')})",
            "",
            consistency_table(consistency),
            "",
        ]
        if (run_dir / PLOTS_DIR / "repeats.png").is_file():
            parts += ["![all repeats overlaid](plots/repeats.png)", ""]
    parts.append(END)
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike) -> FsPath:
    """Write or replace the report section of ``RUN_DIR/README.md``; the rest of the file is kept as it is.

    Returns:
        The README path.
    """
    run_dir = FsPath(run_dir)
    readme = run_dir / README
    section = render_section(run_dir)
    text = read_text(readme) if readme.is_file() else f"# {run_dir.name}\n\n"
    start, end = text.find(START), text.find(END)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(readme, text)
    return readme


__all__ = [
    "END",
    "NOT_EVALUATED",
    "START",
    "consistency_table",
    "endpoint_table",
    "path_verdict",
    "render_section",
    "summary_table",
    "test_examples",
    "training_data_words",
    "write_report",
]
