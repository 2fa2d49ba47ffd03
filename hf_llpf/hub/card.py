"""Model cards: the card of a published path and of an exported point, rendered from the Jinja templates
shipped in ``hf_llpf/hub/templates/`` with huggingface_hub's ``ModelCard.from_template``.

Both cards carry the same metadata, built with ``ModelCardData`` (and ``EvalResult`` for the ``model-index``),
by the Hub's conventions: ``license``, ``library_name``, ``pipeline_tag``, the tags, the dataset when it is a
Hub id, and both endpoints under ``base_model`` with ``base_model_relation: merge`` when both are Hub models (so
the path appears in both endpoints' model trees). The ``model-index`` holds the figures of the repo's own model
(the point at the root, or the exported point): its train and test loss and accuracy, each with its dataset and
split; the path's figures (beside linear interpolation's) and the verdict are in the text. A dataset goes into
the metadata only when it is a Hub id or a built-in data name; a local data file is named in the text only. No
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
from hf_llpf.files.textfiles import read_text
from hf_llpf.hub.facts import RunFacts, endpoint_label, read_facts, read_json
from hf_llpf.hub.files import check_run_dir
from hf_llpf.hub.public import UNKNOWN_LICENSE, is_local, local_names, scrub_text
from hf_llpf.hub.snippets import path_snippet, root_load
from hf_llpf.reporting.report import END, START, path_verdict, summary_table, training_data_words
from hf_llpf.run import METRICS_JSON, POINTS_DIR
from hf_llpf.run.assets import ASSET_KINDS, TOKENIZER, read_assets
from hf_llpf.run.layout import CONFIG_YAML, PLOTS_DIR, README
from hf_llpf.run.lock import holds_run_directory
from hf_llpf.run.storage import storage_sentence

# The evaluation report section (hf_llpf.reporting.report writes it) is kept, markers included, when a card is rebuilt.
REPORT_START, REPORT_END = START, END
CARD_TAGS = ["llpf", "mode-connectivity", "merge"]
POINT_TAG = "llpf-point"
PLACEHOLDER_REPO = "ORG/NAME"
TEMPLATES = FsPath(__file__).with_name("templates")
PATH_TEMPLATE = TEMPLATES / "path_card.md"
POINT_TEMPLATE = TEMPLATES / "point_card.md"

# A model's own figures (its row of path_metrics.json, written by the evaluation): (column, metric type, name,
# split setting). The model-index of a card holds these, never the path's aggregates.
OWN_FIGURES = (
    ("eval_train_loss", "loss", "train loss", "train_split"),
    ("eval_train_acc", "accuracy", "train accuracy", "train_split"),
    ("test_loss", "loss", "test loss", "test_split"),
    ("test_acc", "accuracy", "test accuracy", "test_split"),
)


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not a bool, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def card_data(facts: RunFacts, *, tags: list[str], license: str = UNKNOWN_LICENSE, model_name=None, results=None):
    """The metadata both cards share (``huggingface_hub.ModelCardData``).

    Args:
        facts: the run's endpoints, library and dataset.
        tags: the card's tags.
        license: the ``license`` (a Hub license id; ``unknown`` when not known).
        model_name: the ``model-index`` name (needed with ``results``).
        results: a list of ``huggingface_hub.EvalResult`` for the ``model-index`` (:func:`own_results`), or None.
    """
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        license=license,
        library_name=facts.library,
        pipeline_tag=facts.task_type if facts.task_type != "other" else None,
        base_model=facts.bases or None,
        tags=list(tags),
        datasets=[facts.hub_dataset] if facts.hub_dataset else None,
        model_name=model_name if results else None,
        eval_results=results or None,
    )
    if len(facts.bases) == 2:
        # Both endpoints are Hub models: the model is a merge of the two (the Hub's model tree).
        data.base_model_relation = "merge"
    return data


def render_card(template: FsPath, data, facts: RunFacts, **blocks: str):
    """The card: ``template`` rendered by ``ModelCard.from_template`` with ``data`` and the text ``blocks``.

    Local paths in the blocks are replaced by public names (:func:`~hf_llpf.hub.public.scrub_text`).

    Returns:
        huggingface_hub.ModelCard: ``str(card)`` is the README text.
    """
    from huggingface_hub import ModelCard

    names = local_names(facts.endpoints)
    text = {k: scrub_text(v, names).strip("\n") for k, v in blocks.items()}
    card = ModelCard.from_template(data, template_path=str(template), **text)
    # Blocks left empty leave blank lines behind: at most one blank line between paragraphs.
    content = str(card)
    while "\n\n\n" in content:
        content = content.replace("\n\n\n", "\n\n")
    return ModelCard(content.rstrip("\n") + "\n")


def own_results(row: dict, facts: RunFacts) -> list:
    """The ``model-index`` results of one model: its own train and test figures, each with its dataset and split.

    Empty when the data is not a Hub id nor a built-in data name (a local file is named in the text only) or the
    point was not evaluated. Accuracies are fractions, as ``path_metrics.json`` stores them.
    """
    from huggingface_hub import EvalResult

    dataset = facts.index_dataset
    if dataset is None:
        return []
    return [
        EvalResult(
            task_type=facts.task_type,
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_split=facts.split(split),
            dataset_revision=facts.data_revision,
            metric_type=metric_type,
            metric_name=name,
            metric_value=float(row[key]),
        )
        for key, metric_type, name, split in OWN_FIGURES
        if finite(row.get(key))
    ]


def own_figures_table(row: dict, facts: RunFacts, summary: dict) -> str:
    """The model's own figures as a table (accuracy in percent, the unit of every report), with data and split."""
    ev = summary.get("evaluation") or {}
    subset = f", {ev['train_examples']} examples ({training_data_words(ev)})" if ev.get("train_examples") else ""
    rows = []
    for key, metric, name, split in OWN_FIGURES:
        value = row.get(key)
        if finite(value):
            shown = f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.4g}"
            extra = f"{subset}, eval mode" if split == "train_split" else ""
            rows.append(f"| {name} | {shown} | `{facts.dataset}`, split `{facts.split(split)}`{extra} |")
    if not rows:
        return "It has no figures of its own yet: run `hf-llpf evaluate` on the run directory, then publish again."
    return "\n".join(["| figure | value | data |", "|---|---|---|", *rows])


def intended_use(facts: RunFacts) -> str:
    """The card's "Intended use" section (both cards)."""
    task = f" ({facts.task_type})" if facts.task_type != "other" else ""
    return "\n".join(
        [
            "- Research on mode connectivity and model merging: the loss and accuracy along a low-loss path "
            "between two trained models, against linear interpolation (`path_metrics.json`, the plots).",
            f"- A merged model of A and B: every point has the endpoints' architecture, task{task}, labels and "
            "input format, so it is used where A or B would be, once its figures above fit your need.",
            "- A starting point for fine-tuning or further merging.",
            "",
            "It is not a model trained for new data or a new task: the points were moved only as far as keeping the "
            "path's loss low on the run's own data required.",
        ]
    )


def limitations(facts: RunFacts, summary: dict) -> str:
    """The card's "Limitations" section: what the figures do and do not say (both cards)."""
    data = f"`{facts.dataset}`"
    # A train-only evaluation (data given without a test split) records test_examples: null.
    untested = bool(summary.get("llpf")) and (summary.get("evaluation") or {}).get("test_examples", 0) is None
    splits = (
        f"split `{facts.split('train_split')}` only: the evaluation was given no test split, so no test figure was "
        "measured"
        if untested
        else f"splits `{facts.split('train_split')}` and `{facts.split('test_split')}`"
    )
    lines = [
        f"- Every figure was measured on {data} only ({splits}); it says nothing of other data or of a shift in "
        "distribution.",
    ]
    if facts.index_dataset is None and facts.dataset != "unknown":
        lines.append(
            f"- The data, {data}, is a local file or folder and is not published: the figures cannot be reproduced "
            "from the Hub alone, and the metadata names no dataset."
        )
    if not summary.get("llpf"):
        lines.append("- The path has not been evaluated: no figure of the path or of its points is given.")
    lines += [
        "- The verdict's certificate, where there is one, bounds the training loss at the saved points (and, where "
        "checked, along the segments between them) against the run's loss ceiling; "
        + ("no test figure was measured." if untested else "test figures are measured, not certified."),
        "- Every point inherits the endpoints' behaviour, biases and failure modes, and their license terms.",
    ]
    storage = storage_sentence(summary)
    if storage:
        lines.append(f"- {storage}")
    return "\n".join(lines)


# ---- the path's card ------------------------------------------------------------------------------------------


@dataclass
class Publication:
    """What a push publishes besides the run directory, as the path's card describes it.

    Attributes:
        root: ``(index, reason)`` of the point copied to the repo root, or None (no model at the root).
        published: the indices of the published points (None: all).
        revisions: every published point also has its own branch, named like its folder (``t_000010``).
        branch: the point branch this card is for (``t_000010``; its load lines name that revision), or None
            for the main card.
        license: the ``license``, and ``license_source`` where it came from (one phrase).
        remote_code_removed: published file -> the pointers to code in other repos removed from it
            (:mod:`hf_llpf.models.remote_code`; empty with ``keep_auto_map``).
    """

    root: tuple[int, str] | None = None
    published: list[int] | None = None
    revisions: bool = False
    branch: str | None = None
    license: str = UNKNOWN_LICENSE
    license_source: str = "not recorded"
    selection: str = field(default="")
    remote_code_removed: dict[str, list[str]] = field(default_factory=dict)


def _is_baseline(method: Any) -> bool:
    """Whether a path written as ``method`` (endpoints.json) is a registered curve (a baseline or the straight
    line), which the card does not call an LLPF path."""
    from hf_llpf.algorithms.registry import baseline_names

    return method in baseline_names()


def _path_label(endpoints: dict) -> str:
    method = endpoints.get("method")
    return f"{method} path" if _is_baseline(method) else "LLPF path"


def _intro(facts: RunFacts, pub: Publication) -> str:
    method = facts.endpoints.get("method")
    if _is_baseline(method):
        first = (
            f"A path of models built by the `{method}` method of hf_llpf (not by LLPF's walk; hf_llpf's "
            "docs/baselines.md and docs/algorithm.md describe it) between"
        )
    else:
        first = (
            "A path of models found with hf_llpf (LLPF, [arXiv:2505.02604](https://arxiv.org/abs/2505.02604)) between"
        )
    end = f"; the path ends at {facts.b['path_end']}" if facts.b.get("path_end") else ""
    return "\n".join(
        [
            first,
            f"- **A**: {endpoint_label(facts.a)}",
            f"- **B**: {endpoint_label(facts.b)}{end}",
            "",
            f"Every point is a merge of A and B. {facts.data_line} License: `{pub.license}` ({pub.license_source}).",
        ]
    )


def _summary_table(summary: dict, path_label: str) -> str:
    """The path's figures beside linear interpolation's: the evaluation report's table
    (:mod:`hf_llpf.reporting.report`)."""
    if not summary.get("llpf"):
        return "_No summary yet: run `hf-llpf evaluate` on the run directory to add one._"
    return summary_table(summary).replace("| figure | LLPF |", f"| figure | {path_label} |", 1)


def _report_section(readme: FsPath) -> str:
    """The evaluation report kept from an existing README (between the hf_llpf report markers)."""
    if not readme.is_file():
        return ""
    text = read_text(readme)
    start, end = text.find(REPORT_START), text.find(REPORT_END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(REPORT_END)]


def _path_section(root: FsPath, summary: dict, facts: RunFacts) -> str:
    """The path's figures, its verdict and the plots, each once: the evaluation report section's (kept from
    ``README.md``) where it has them, else the card's own."""
    report = _report_section(root / README)
    parts = []
    if "\n|---" not in report:
        parts.append(_summary_table(summary, _path_label(facts.endpoints)))
    if summary.get("llpf") and "verdict:" not in report:
        parts.append(f"**{path_verdict(summary)}**")
    plots = sorted(p.relative_to(root).as_posix() for p in (root / PLOTS_DIR).glob("*.png"))
    if plots and "![" not in report:
        parts.append("\n".join(f"![{FsPath(p).stem}]({p})" for p in plots))
    if report:
        parts.append(report)
    return "\n\n".join(parts)


def _reproduce(root: FsPath, facts: RunFacts) -> str:
    """The card's "Reproduce" section: the recorded command, the full settings and the versions."""
    command = facts.endpoints.get("command") or facts.config.get("command")
    lines = []
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
    return "\n".join([*lines, "", made or f"Made with hf_llpf {__version__}."])


def _root_section(points: list[dict], pub: Publication, facts: RunFacts, repo: str, summary: dict) -> str:
    """The model at the repo root (of main, or of this card's point branch): which point, why, the line that
    loads it, and its own figures (the card's ``model-index``)."""
    if pub.root is None:
        return "The repo root holds no model; every point is a model in its own folder (below)."
    i, reason = pub.root
    row = points[i] if i < len(points) else {}
    where = f", position {row['position']:.3f} by arc length" if finite(row.get("position")) else ""
    whose = f"This is branch `{pub.branch}`: its" if pub.branch else "The"
    load = root_load(facts.library, facts.architecture, repo, revision=pub.branch)
    figures = "Its own figures (this card's `model-index`):" if own_results(row, facts) else "Its own figures:"
    return "\n".join(
        [
            "## The model at the root",
            "",
            f"{whose} repo root is a complete model in the endpoints' format: **point {i} of {len(points)}** (tick "
            f"{row.get('tick')}, folder `{row.get('point')}`{where}), chosen as {reason}. `{load}` loads it; it is "
            f"the same model as `{row.get('point')}/`.",
            "",
            figures,
            "",
            own_figures_table(row, facts, summary),
        ]
    )


def _points_line(points: list[dict], pub: Publication) -> str:
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
    return text + ". Every published version is tagged `llpf-<content hash>`."


@holds_run_directory("run_dir", exclusive=False, action="build the card of")
def build_model_card(
    run_dir: str | os.PathLike, *, repo_id: str | None = None, publication: Publication | None = None
):
    """Build the model card (``README.md``) of a run directory from the template ``templates/path_card.md``.

    The metadata is that of :func:`card_data` with the tags ``llpf``/``mode-connectivity``/``merge`` and a
    ``model-index`` of the root model's own figures (:func:`own_results`; none without a root model). The text
    names the endpoints (a local one by its folder name and hashes) and the data, says which point is the model at
    the repo root with the line that loads it (``revision=`` on a point branch) and its figures, gives the path's
    figures beside linear interpolation's, the verdict (:func:`hf_llpf.reporting.report.path_verdict`) and the plots
    once
    (the evaluation report section already in the README, kept between the hf_llpf report markers, when there
    is one), the intended use and limitations, how to load a point, and the command and settings to reproduce.

    Args:
        run_dir: the run directory.
        repo_id: the Hub repo the card is for (used in the loading code); a placeholder when None.
        publication: what the push publishes (root point, points, license, the point branch); default: no root
            model, all points, the license ``unknown``.

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
    label = _path_label(facts.endpoints)
    what = "a low-loss path" if label == "LLPF path" else f"a {label}"
    tokenizer = any(ASSET_KINDS[n] == TOKENIZER for n in read_assets(root))
    snippet = path_snippet(facts.library, facts.architecture, repo, point=example, revisions=pub.revisions,
                           tokenizer=tokenizer, branch=pub.branch)  # fmt: skip
    row = points[pub.root[0]] if pub.root and pub.root[0] < len(points) else None
    results = own_results(row, facts) if row is not None else []
    data = card_data(facts, tags=CARD_TAGS, license=pub.license, model_name=name, results=results)
    return render_card(
        PATH_TEMPLATE,
        data,
        facts,
        title=f"{name}: {what} between two models",
        intro=_intro(facts, pub),
        root_section=_root_section(points, pub, facts, repo, summary),
        points_line=_points_line(points, pub),
        path_section=_path_section(root, summary, facts),
        intended_use=intended_use(facts),
        limitations=limitations(facts, summary),
        load_section="\n".join(snippet),
        reproduce=_reproduce(root, facts),
    )
