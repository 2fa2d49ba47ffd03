"""Model cards: one builder for the card of a published path and for the card of an exported point.

Both cards carry the same metadata, built with huggingface_hub's ``ModelCardData`` (and ``EvalResult``
for the ``model-index``), by the Hub's conventions: ``license``, ``library_name``, ``pipeline_tag``, the
tags, the dataset, and both endpoints under ``base_model`` with ``base_model_relation: merge`` when both
are Hub models (so the path appears in both endpoints' model trees). The ``model-index`` holds the path's
own results only, each with its dataset and split; the linear baseline's figures are in the text. No
local path of the machine is written: a local endpoint is named by its folder name and content hash
(:mod:`hf_llpf.hub.public`). See ``docs/hub.md``, "The model card".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from hf_llpf import __version__
from hf_llpf.assets import ASSET_KINDS, TOKENIZER, read_assets
from hf_llpf.hub.facts import RunFacts, endpoint_label, read_facts, read_json
from hf_llpf.hub.files import check_run_dir
from hf_llpf.hub.public import UNKNOWN_LICENSE, is_local, local_names, scrub_text
from hf_llpf.hub.snippets import path_snippet
from hf_llpf.report import END, START
from hf_llpf.run import METRICS_JSON, POINTS_DIR
from hf_llpf.run.layout import CONFIG_YAML, PLOTS_DIR, README
from hf_llpf.run.lock import holds_run_directory
from hf_llpf.run.storage import storage_sentence
from hf_llpf.textfiles import read_text

# The evaluation report section (hf_llpf.report writes it) is kept, markers included, when a card is rebuilt.
REPORT_START, REPORT_END = START, END
CARD_TAGS = ["llpf", "mode-connectivity", "merge"]
POINT_TAG = "llpf-point"
PLACEHOLDER_REPO = "ORG/NAME"

# The model-index: (summary key, index in a [min, max] range or None, metric type, name, split setting).
_RESULTS = (
    ("max_train_loss", None, "loss", "max train loss along the path", "train_split"),
    ("barrier", None, "loss", "loss barrier of the path", "train_split"),
    ("min_train_acc", None, "accuracy", "min train accuracy along the path", "train_split"),
    ("test_loss_range", 1, "loss", "max test loss along the path", "test_split"),
    ("test_acc_range", 0, "accuracy", "min test accuracy along the path", "test_split"),
)


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not a bool, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def model_card(
    facts: RunFacts,
    lines: list[str],
    *,
    tags: list[str],
    license: str = UNKNOWN_LICENSE,
    model_name: str | None = None,
    eval_results=None,
):
    """The one card builder: the shared metadata of ``facts`` plus the given text.

    Args:
        facts: the run's endpoints, library and dataset.
        lines: the card's text, one line each (local paths are replaced by public names).
        tags: the card's tags.
        license: the ``license`` (a Hub license id; ``unknown`` when not known).
        model_name: the ``model-index`` name (needed with ``eval_results``).
        eval_results: a list of ``huggingface_hub.EvalResult`` for the ``model-index``, or None.

    Returns:
        huggingface_hub.ModelCard: ``str(card)`` is the README text.
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        license=license,
        library_name=facts.library,
        pipeline_tag=facts.task_type if facts.task_type != "other" else None,
        base_model=facts.bases or None,
        tags=list(tags),
        datasets=[facts.hub_dataset] if facts.hub_dataset else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    if len(facts.bases) == 2:
        # Both endpoints are Hub models: the model is a merge of the two (the Hub's model tree).
        data.base_model_relation = "merge"
    text = scrub_text("\n".join(lines), local_names(facts.endpoints))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}\n")


# ---- the path's card ------------------------------------------------------------------------------------------


@dataclass
class Publication:
    """What a push publishes besides the run directory, as the path's card describes it.

    Attributes:
        root: ``(index, reason)`` of the point copied to the repo root, or None (no model at the root).
        published: the indices of the published points (None: all).
        revisions: every published point also has its own branch, named like its folder (``t_000010``).
        license: the ``license``, and ``license_source`` where it came from (one phrase).
        remote_code_removed: published file -> the pointers to code in other repos removed from it
            (:mod:`hf_llpf.remote_code`; empty with ``keep_auto_map``).
    """

    root: tuple[int, str] | None = None
    published: list[int] | None = None
    revisions: bool = False
    license: str = UNKNOWN_LICENSE
    license_source: str = "not recorded"
    selection: str = field(default="")
    remote_code_removed: dict[str, list[str]] = field(default_factory=dict)


def _eval_results(summary: dict, facts: RunFacts) -> list:
    """The path's own results (never the baseline's), each with its dataset and split."""
    from huggingface_hub import EvalResult

    figures, results = summary.get("llpf") or {}, []
    for key, pick, metric_type, name, split in _RESULTS:
        value = figures.get(key)
        value = value[pick] if pick is not None and isinstance(value, (list, tuple)) and len(value) == 2 else value
        if finite(value):
            results.append(
                EvalResult(
                    task_type=facts.task_type,
                    dataset_type=facts.dataset,
                    dataset_name=facts.dataset,
                    dataset_split=facts.split(split),
                    dataset_revision=facts.data_revision,
                    metric_type=metric_type,
                    metric_name=name,
                    metric_value=float(value),
                )
            )
    return results


def _format_figure(v: Any) -> str:
    if finite(v):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and v and all(finite(x) for x in v):
        return " – ".join(f"{x:.4g}" for x in v)
    if isinstance(v, dict):  # e.g. where the worst continuity loss is: "segment 6, from tick 6, ..."
        return ", ".join(f"{k.replace('_', ' ')} {_format_figure(x)}" for k, x in v.items())
    return "–" if v is None else str(v)


# Paths written by hf_llpf.baselines or the straight line (endpoints.json "method"): not called LLPF paths.
_BASELINE_METHODS = ("linear", "slerp", "bezier", "weight-matching")


def _path_label(endpoints: dict) -> str:
    method = endpoints.get("method")
    return f"{method} path" if method in _BASELINE_METHODS else "LLPF path"


def _intro(endpoints: dict) -> str:
    method = endpoints.get("method")
    if method in _BASELINE_METHODS:
        return (
            f"A path of models built by the `{method}` method of hf_llpf (not by LLPF's walk; hf_llpf's "
            "docs/baselines.md and docs/algorithm.md describe it) between"
        )
    return "A path of models found with hf_llpf (LLPF, [arXiv:2505.02604](https://arxiv.org/abs/2505.02604)) between"


def _summary_table(summary: dict, path_label: str = "LLPF path") -> str:
    llpf, linear = summary.get("llpf") or {}, summary.get("linear") or {}
    keys = list(dict.fromkeys([*llpf, *linear]))
    if not keys:
        return "_No summary yet: run `hf-llpf evaluate` on the run directory to add one._"
    rows = [f"| figure | {path_label} | linear interpolation |", "|---|---|---|"]
    rows += [
        f"| {k.replace('_', ' ')} | {_format_figure(llpf.get(k))} | {_format_figure(linear.get(k))} |" for k in keys
    ]
    return "\n".join(rows)


def _report_section(readme: FsPath) -> str:
    """The evaluation report kept from an existing README (between the hf_llpf report markers)."""
    if not readme.is_file():
        return ""
    text = read_text(readme)
    start, end = text.find(REPORT_START), text.find(REPORT_END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(REPORT_END)]


def _reproduce(root: FsPath, facts: RunFacts) -> list[str]:
    """The card's "Reproduce" section: the recorded command, the full settings and the versions."""
    command = facts.endpoints.get("command") or facts.config.get("command")
    lines = ["", "## Reproduce", ""]
    if command:
        lines += ["```bash", " ".join(command) if isinstance(command, (list, tuple)) else str(command), "```"]
        if any(is_local(e) for e in (facts.a, facts.b) if e):
            lines += ["", "A local endpoint is named by its folder name; its weights' sha256 is given above."]
    else:
        lines += ["No command was recorded with this run; `llpf_config.yaml` below holds the full resolved settings."]
    config_file = root / CONFIG_YAML
    if config_file.is_file():
        lines += ["", "`llpf_config.yaml`:", "", "```yaml", config_file.read_text().rstrip("\n"), "```"]
    run_version = facts.endpoints.get("hf_llpf_version")
    made = f"Run made with hf_llpf {run_version}; card made with hf_llpf {__version__}." if run_version else ""
    return [*lines, "", made or f"Made with hf_llpf {__version__}."]


def _root_lines(points: list[dict], pub: Publication, library: str | None, repo: str) -> list[str]:
    if pub.root is None:
        return ["", "The repo root holds no model; every point is a model in its own folder (below)."]
    i, reason = pub.root
    row = points[i] if i < len(points) else {}
    where = f", position {row['position']:.3f} by arc length" if finite(row.get("position")) else ""
    loads = {
        "transformers": f'`from_pretrained("{repo}")` loads it',
        "timm": f'`timm.create_model("hf-hub:{repo}", pretrained=True)` loads it',
    }.get(library or "", "`hf_llpf.models.load_endpoint` loads it")
    return [
        "",
        "## The model at the root",
        "",
        f"The repo root is a complete model in the endpoints' format: **point {i} of {len(points)}** (tick "
        f"{row.get('tick')}, folder `{row.get('point')}`{where}), chosen as {reason}. {loads}; it is the same "
        f"model as `{row.get('point')}/`.",
    ]


def _points_lines(points: list[dict], pub: Publication) -> list[str]:
    n = len(points)
    if pub.published is None or len(pub.published) == n:
        text = f"All {n} saved points are published"
    else:
        text = (
            f"{len(pub.published)} of the path's {n} saved points are published ({pub.selection or 'a selection'}; "
            "both ends and every stage boundary always are); `path_metrics.json` lists the published ones, the "
            f"summary figures are those of all {n}"
        )
    text += f" (`{POINTS_DIR}/t_<tick>/`, each a complete model in the endpoints' format)"
    if pub.revisions:
        text += "; each also has its own branch, named like its folder (`t_<tick>`), whose root is that point"
    return ["", text + ". Every published version is tagged `llpf-<content hash>`."]


@holds_run_directory("run_dir", exclusive=False, action="build the card of")
def build_model_card(
    run_dir: str | os.PathLike, *, repo_id: str | None = None, publication: Publication | None = None
):
    """Build the model card (``README.md``) of a run directory.

    The metadata is that of :func:`model_card` with the tags ``llpf``/``mode-connectivity``/``merge`` and a
    ``model-index`` of the path's own results (max train loss, barrier, min train accuracy, max test loss,
    min test accuracy), each with its dataset and split. The text names the endpoints (a local one by its
    folder name and hashes), says which point is the model at the repo root, has one summary table beside the
    linear-interpolation figures and the plots once (the evaluation report section already in the README,
    kept between the hf_llpf report markers, when there is one), how to load a point with the endpoints'
    library and with hf_llpf, and the command and settings to reproduce the run.

    Args:
        run_dir: the run directory.
        repo_id: the Hub repo the card is for (used in the loading code); a placeholder when None.
        publication: what the push publishes (root point, points, license); default: no root model, all
            points, the license ``unknown``.

    Returns:
        huggingface_hub.ModelCard: the card (``str(card)`` is the README text).

    Raises:
        RunDirectoryError: ``run_dir`` is not a run directory.
    """
    root = check_run_dir(run_dir)
    facts, pub = read_facts(root), publication or Publication()
    metrics = read_json(root / METRICS_JSON)
    summary, points = metrics.get("summary") or {}, metrics.get("points") or []
    repo = repo_id or PLACEHOLDER_REPO
    name = repo_id.split("/")[-1] if repo_id else root.resolve().name
    shown = pub.root[0] if pub.root else len(points) // 2
    example = points[shown]["point"] if points else f"{POINTS_DIR}/t_000000"
    lines = [
        f"# {name}: a low-loss path between two models"
        if _path_label(facts.endpoints) == "LLPF path"
        else f"# {name}: a {_path_label(facts.endpoints)} between two models",
        "",
        _intro(facts.endpoints),
        f"- **A**: {endpoint_label(facts.a)}",
        f"- **B**: {endpoint_label(facts.b)}"
        + (f"; the path ends at {facts.b['path_end']}" if facts.b.get("path_end") else ""),
        "",
        f"Every point is a merge of A and B. {facts.data_line}" + f" License: `{pub.license}` ({pub.license_source}).",
        *_root_lines(points, pub, facts.library, repo),
        *_points_lines(points, pub),
    ]
    # The evaluation report (hf_llpf.report) has a summary table and the plots: the card shows each once.
    report = _report_section(root / README)
    storage = storage_sentence(summary)  # the points' dtype when it is not the endpoints' (the report may have it)
    if storage and storage not in report:
        lines += ["", storage]
    if "\n|---" not in report:
        lines += ["", "## Summary", "", _summary_table(summary, _path_label(facts.endpoints))]
    plots = sorted(p.relative_to(root).as_posix() for p in (root / PLOTS_DIR).glob("*.png"))
    if plots and "![" not in report:
        lines += ["", "## Plots", ""] + [f"![{FsPath(p).stem}]({p})" for p in plots]
    if report:
        lines += ["", report]
    tokenizer = any(ASSET_KINDS[name] == TOKENIZER for name in read_assets(root))
    snippet = path_snippet(facts.library, facts.architecture, repo, point=example, revisions=pub.revisions,
                           tokenizer=tokenizer)  # fmt: skip
    lines += ["", "## Load a point", "", *snippet]
    lines += _reproduce(root, facts)
    results = _eval_results(summary, facts)
    return model_card(facts, lines, tags=CARD_TAGS, license=pub.license, model_name=name, eval_results=results)
