"""Model cards: one builder for the card of a published path and for the card of an exported point.

Both cards carry the same metadata, built with huggingface_hub's ``ModelCardData`` (and ``EvalResult``
for the ``model-index``): both endpoints under ``base_model`` with ``base_model_relation: merge`` when
both are Hub models (so the path appears in both endpoints' model trees), the library, the tags and the
dataset. Only the text and the figures differ (see ``docs/hub.md``, "The model card").
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import yaml

from hf_llpf import __version__
from hf_llpf.hub.files import check_run_dir
from hf_llpf.hub.spec import is_repo_id
from hf_llpf.report import END, START
from hf_llpf.run import METRICS_JSON, POINTS_DIR, read_run_json
from hf_llpf.run.layout import CONFIG_YAML, ENDPOINTS_JSON, PLOTS_DIR, README

# The evaluation report section (hf_llpf.report writes it) is kept, markers included, when a card is rebuilt.
REPORT_START, REPORT_END = START, END
CARD_TAGS = ["llpf", "mode-connectivity", "merge"]
POINT_TAG = "llpf-point"
PLACEHOLDER_REPO = "ORG/NAME"

# (summary key, metric type, human name); the linear-interpolation figure is put beside each one.
_SUMMARY_METRICS = (
    ("max_train_loss", "loss", "max train loss"),
    ("barrier", "loss", "loss barrier"),
    ("min_train_acc", "accuracy", "min train accuracy"),
)
_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForCausalLM", "text-generation"),
    ("ForQuestionAnswering", "question-answering"),
)


def finite(value: Any) -> bool:
    """Whether ``value`` is a real, finite number (not a bool, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: FsPath) -> dict:
    # A damaged file is refused by name (read_run_json); a missing one means "not recorded".
    return read_run_json(path.parent, path.name) if path.is_file() else {}


def _read_yaml(path: FsPath) -> dict:
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _hub_id(entry: dict) -> str | None:
    """The Hub repo id of an ``endpoints.json`` entry, or None for a local endpoint.

    A Hub endpoint was resolved to a 40-hex commit sha; a local one carries ``local:<hash>``. Only Hub ids
    go into ``base_model``: the Hub rejects other values there.
    """
    source, revision = str(entry.get("id") or ""), str(entry.get("revision") or "")
    return source if re.fullmatch(r"[0-9a-f]{40}", revision) and is_repo_id(source) else None


def _endpoint_label(entry: dict) -> str:
    rev = entry.get("revision")
    return f"`{entry.get('id')}`" + (f" (revision `{rev}`)" if rev else "")


@dataclass
class RunFacts:
    """What both cards say about the run a path came from (read from its ``endpoints.json`` and settings)."""

    endpoints: dict
    config: dict
    library: str | None
    bases: list[str]
    dataset: str
    data_revision: str | None

    @property
    def a(self) -> dict:
        return self.endpoints.get("A") or {}

    @property
    def b(self) -> dict:
        return self.endpoints.get("B") or {}

    @property
    def architecture(self) -> str:
        return str(self.a.get("architecture") or "AutoModel")

    @property
    def task_type(self) -> str:
        if self.library == "timm":
            return "image-classification"
        return next((task for suffix, task in _TASKS if self.architecture.endswith(suffix)), "other")

    @property
    def data_line(self) -> str:
        """``Data: `source` (revision …): task, splits and sizes, columns, tokenizer, fingerprints.``"""
        line = f"Data: `{self.dataset}`" + (f" (revision `{self.data_revision}`)" if self.data_revision else "")
        data = self.config.get("data") if isinstance(self.config.get("data"), dict) else {}
        rec = data.get("recorded") or {}
        parts = [str(rec["task"])] if rec.get("task") else []
        unit = "blocks" if rec.get("task") == "causal-lm" else "examples"
        if "test_examples" in rec:
            sizes = f"{rec['train_examples']}/{rec['test_examples']} {unit}"
            parts.append(f"splits `{data.get('train_split')}`/`{data.get('test_split')}`: {sizes}")
        elif "train_examples" in rec:
            parts.append(f"{rec['train_examples']} training {unit}, given as a Python `{rec.get('given_as')}`")
        names = ("image_column", "text_column", "text_pair_column", "label_column")
        columns = [f"`{data[k]}`" for k in names if data.get(k)]
        if columns:
            parts.append("columns " + ", ".join(columns))
        if data.get("tokenizer"):
            parts.append(f"tokenizer `{data['tokenizer']}` (sha256 `{rec.get('tokenizer_sha256')}`)")
        if rec.get("train_fingerprint"):
            parts.append(f"fingerprints `{rec.get('train_fingerprint')}`/`{rec.get('test_fingerprint')}`")
        return line + (": " + "; ".join(parts) if parts else "") + "."

    @property
    def hub_dataset(self) -> str | None:
        """The dataset when it is a Hub id (the card's ``datasets`` accepts nothing else)."""
        return self.dataset if is_repo_id(self.dataset) and not FsPath(self.dataset).exists() else None


def read_facts(root: FsPath) -> RunFacts:
    """The :class:`RunFacts` of a run directory (or of the snapshot of a published path)."""
    endpoints = _read_json(root / ENDPOINTS_JSON)
    config = _read_yaml(root / CONFIG_YAML)
    kinds = {e.get("kind") for k, e in endpoints.items() if k in ("A", "B") and isinstance(e, dict)}
    library = next(iter(kinds)) if len(kinds) == 1 and kinds <= {"timm", "transformers"} else None
    data = config.get("data")
    if isinstance(data, dict):
        source, revision = data.get("source"), data.get("revision")
    else:
        source, revision = (data if isinstance(data, str) else None), None
    bases = [b for b in (_hub_id(endpoints.get("A") or {}), _hub_id(endpoints.get("B") or {})) if b]
    dataset = str(source) if source else "unknown"
    return RunFacts(endpoints, config, library, bases, dataset, revision)


def model_card(
    facts: RunFacts, lines: list[str], *, tags: list[str], model_name: str | None = None, eval_results=None
):
    """The one card builder: the shared metadata of ``facts`` plus the given text.

    Args:
        facts: the run's endpoints, library and dataset.
        lines: the card's text, one line each.
        tags: the card's tags.
        model_name: the ``model-index`` name (needed with ``eval_results``).
        eval_results: a list of ``huggingface_hub.EvalResult`` for the ``model-index``, or None.

    Returns:
        huggingface_hub.ModelCard: ``str(card)`` is the README text.
    """
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        base_model=facts.bases or None,
        library_name=facts.library,
        tags=list(tags),
        datasets=[facts.hub_dataset] if facts.hub_dataset else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    if len(facts.bases) == 2:
        # Both endpoints are Hub models: the model is a merge of the two (the Hub's model tree).
        data.base_model_relation = "merge"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


# ---- the path's card ------------------------------------------------------------------------------------------


def _eval_results(summary: dict, *, task_type: str, dataset: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for method, label in (("llpf", "LLPF path"), ("linear", "linear interpolation")):
        figures = summary.get(method) or {}
        results += [
            EvalResult(
                task_type=task_type,
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type=metric_type,
                metric_name=f"{name} ({label})",
                metric_value=float(figures[key]),
            )
            for key, metric_type, name in _SUMMARY_METRICS
            if finite(figures.get(key))
        ]
    return results


def _format_figure(v: Any) -> str:
    if finite(v):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)) and all(finite(x) for x in v):
        return "–".join(f"{x:.4g}" for x in v)
    return "–" if v is None else str(v)


def _summary_table(summary: dict) -> str:
    llpf, linear = summary.get("llpf") or {}, summary.get("linear") or {}
    keys = list(dict.fromkeys([*llpf, *linear]))
    if not keys:
        return "_No summary yet: run `hf-llpf evaluate` on the run directory to add one._"
    rows = ["| figure | LLPF path | linear interpolation |", "|---|---|---|"]
    rows += [
        f"| {k.replace('_', ' ')} | {_format_figure(llpf.get(k))} | {_format_figure(linear.get(k))} |" for k in keys
    ]
    return "\n".join(rows)


def _report_section(readme: FsPath) -> str:
    """The evaluation report kept from an existing README (between the hf_llpf report markers)."""
    if not readme.is_file():
        return ""
    text = readme.read_text()
    start, end = text.find(REPORT_START), text.find(REPORT_END)
    if start < 0 or end < start:
        return ""
    return text[start : end + len(REPORT_END)]


def _load_snippet(facts: RunFacts, repo: str, point: str) -> list[str]:
    lines = [
        "```python",
        "from hf_llpf.hub import load_path",
        f'model = load_path("{repo}").model_at(-1)  # any point: index 0..len-1',
        "```",
    ]
    if facts.library == "transformers":
        arch = facts.architecture
        lines += [
            "",
            "With plain transformers (each point is a subfolder):",
            "",
            "```python",
            f"from transformers import {arch}",
            f'model = {arch}.from_pretrained("{repo}", subfolder="{point}")',
            "```",
        ]
    elif facts.library == "timm":
        lines += [
            "",
            "With plain timm (timm loads whole repos, not subfolders: export the point to its own repo first, "
            f"`hf-llpf export {repo} --point mid --out mid --push-to-hub ORG/NAME`):",
            "",
            "```python",
            "import hf_llpf, timm  # hf_llpf registers its built-in architectures with timm",
            'model = timm.create_model("hf-hub:ORG/NAME", pretrained=True)',
            "```",
        ]
    return lines


def _reproduce(root: FsPath, facts: RunFacts) -> list[str]:
    """The card's "Reproduce" section: the recorded command, the full settings and the versions."""
    command = facts.endpoints.get("command") or facts.config.get("command")
    lines = ["", "## Reproduce", ""]
    if command:
        lines += ["```bash", " ".join(command) if isinstance(command, (list, tuple)) else str(command), "```"]
    else:
        lines += ["No command was recorded with this run; `llpf_config.yaml` below holds the full resolved settings."]
    config_file = root / CONFIG_YAML
    if config_file.is_file():
        lines += ["", "`llpf_config.yaml`:", "", "```yaml", config_file.read_text().rstrip("\n"), "```"]
    run_version = facts.endpoints.get("hf_llpf_version")
    made = f"Run made with hf_llpf {run_version}; card made with hf_llpf {__version__}." if run_version else ""
    return [*lines, "", made or f"Made with hf_llpf {__version__}."]


def build_model_card(run_dir: str | os.PathLike, *, repo_id: str | None = None):
    """Build the model card (``README.md``) of a run directory.

    The metadata is that of :func:`model_card`, with the tags ``llpf``/``mode-connectivity``/``merge``
    and a ``model-index`` with the path summary (max train loss, barrier, min train accuracy), the
    linear-interpolation figures beside them. The text has the plots, the command and settings to
    reproduce the run, the package version and how to load a point. An evaluation report already in the
    README (between the hf_llpf report markers) is kept.

    Args:
        run_dir: the run directory.
        repo_id: the Hub repo the card is for (used in the loading code); a placeholder when None.

    Returns:
        huggingface_hub.ModelCard: the card (``str(card)`` is the README text).

    Raises:
        RunDirectoryError: ``run_dir`` is not a run directory.
    """
    root = check_run_dir(run_dir)
    facts = read_facts(root)
    metrics = _read_json(root / METRICS_JSON)
    summary, points = metrics.get("summary") or {}, metrics.get("points") or []
    name = repo_id.split("/")[-1] if repo_id else root.resolve().name
    mid = points[len(points) // 2]["point"] if points else f"{POINTS_DIR}/t_000000"
    plots = sorted(p.relative_to(root).as_posix() for p in (root / PLOTS_DIR).glob("*.png"))
    lines = [
        f"# {name}: a low-loss path between two models",
        "",
        "A path of models found with [hf_llpf](https://arxiv.org/abs/2505.02604) (LLPF) between",
        f"- **A**: {_endpoint_label(facts.a)}",
        f"- **B**: {_endpoint_label(facts.b)}",
        "",
        f"The path has {len(points)} saved points (`{POINTS_DIR}/t_<tick>/`, each a standalone model in the "
        "endpoints' format); `path_metrics.json`/`.csv` hold the figures of every point. Every point is a "
        "merge of A and B; every published version is tagged `llpf-<content hash>`.",
        "",
        "## Summary",
        "",
        _summary_table(summary),
        "",
        facts.data_line,
    ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{FsPath(p).stem}]({p})" for p in plots]
    lines += ["", "## Load a point", "", *_load_snippet(facts, repo_id or PLACEHOLDER_REPO, mid)]
    lines += _reproduce(root, facts)
    report = _report_section(root / README)
    if report:
        lines += ["", report]
    results = _eval_results(summary, task_type=facts.task_type, dataset=facts.dataset)
    return model_card(facts, lines, tags=CARD_TAGS, model_name=name, eval_results=results)


# ---- an exported point's card ---------------------------------------------------------------------------------


def build_point_card(root: FsPath, row: dict, *, index: int, count: int, source: str, repo_id: str | None):
    """The card of one exported point: the path's metadata (tagged ``llpf-point``), its figures, how to load it.

    Args:
        root: the run directory or snapshot of the path (its ``endpoints.json`` and settings are read).
        row: the point's row of ``path_metrics.json``.
        index, count: the point's index and the number of points of the path.
        source: how the path is named in the text (a folder or ``org/repo@commit``).
        repo_id: the repo the point is exported to (used in the loading code); a placeholder when None.

    Returns:
        huggingface_hub.ModelCard: the card.
    """
    facts = read_facts(root)
    repo = repo_id or PLACEHOLDER_REPO
    figures = [f"| {k} | {v:.4g} |" for k, v in row.items() if finite(v) and k not in ("index", "tick")]
    lines = [
        f"# Point {index} (tick {row.get('tick')}) of an LLPF path",
        "",
        "A model merged from two endpoints: point "
        f"{index} of {count} of the low-loss path `{source}` (folder `{row.get('point')}`), found with hf_llpf.",
        f"- **A**: {_endpoint_label(facts.a)}",
        f"- **B**: {_endpoint_label(facts.b)}",
        f"- **point**: index {index}, tick {row.get('tick')}, stage {row.get('stage')}, phase {row.get('phase')}",
        "",
        "| figure | value |",
        "|---|---|",
        *figures,
        "",
        "## Load",
        "",
        "```python",
    ]
    if facts.library == "timm":
        lines += [
            "import hf_llpf, timm  # hf_llpf registers its built-in architectures",
            f'model = timm.create_model("hf-hub:{repo}", pretrained=True)',
        ]
    elif facts.library == "transformers":
        lines += [
            f"from transformers import {facts.architecture}",
            f'model = {facts.architecture}.from_pretrained("{repo}")',
        ]
    else:
        lines += ["from hf_llpf.models import load_endpoint", f'model = load_endpoint("{repo}").model']
    lines += ["```", "", f"Made with hf_llpf {__version__}."]
    return model_card(facts, lines, tags=[*CARD_TAGS, POINT_TAG])
