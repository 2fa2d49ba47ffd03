"""What a path's cards say about the run it came from: its endpoints, data and settings (:class:`RunFacts`).

Read from the run directory's ``endpoints.json`` and ``config.yaml`` (or those of a published path's snapshot);
a missing file means "not recorded", a damaged one is refused by name. See ``docs/hub.md``, "The model card".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path as FsPath

from hf_llpf.files.textfiles import read_yaml
from hf_llpf.hub.public import is_local, local_names, public_name, scrub_text
from hf_llpf.hub_client.repo_ids import is_repo_id
from hf_llpf.run import read_run_json
from hf_llpf.run.layout import CONFIG_YAML, ENDPOINTS_JSON

_TASKS = (
    ("ForSequenceClassification", "text-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForCausalLM", "text-generation"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
)


def read_json(path: FsPath) -> dict:
    """A run file's JSON object (``{}`` when the file is missing)."""
    # A damaged file is refused by name (read_run_json); a missing one means "not recorded".
    return read_run_json(path.parent, path.name) if path.is_file() else {}


def _read_yaml(path: FsPath) -> dict:
    """A run's settings (``{}`` when the file is missing; a damaged one is refused by name)."""
    return read_yaml(path) if path.is_file() else {}


def _hub_id(entry: dict) -> str | None:
    """The Hub repo id of an ``endpoints.json`` entry, or None for a local endpoint (the Hub rejects other
    values in ``base_model``)."""
    source = str(entry.get("id") or "")
    return source if not is_local(entry) and is_repo_id(source) else None


def endpoint_label(entry: dict) -> str:
    """How a card names an endpoint: a Hub id with its commit, or a local folder's name and content hashes."""
    rev = entry.get("revision")
    if is_local(entry):
        sha = entry.get("sha256")
        hashes = ", ".join(
            x for x in (f"revision `{rev}`" if rev else "", f"weights sha256 `{sha}`" if sha else "") if x
        )
        return f"`{public_name(entry)}` (a local folder" + (f"; {hashes})" if hashes else ")")
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
            fingerprint = rec.get("tokenizer_sha256")
            parts.append(f"tokenizer `{data['tokenizer']}` (fingerprint `{fingerprint}` of what decides its ids)")
        if rec.get("train_fingerprint"):
            parts.append(f"fingerprints `{rec.get('train_fingerprint')}`/`{rec.get('test_fingerprint')}`")
        return line + (": " + "; ".join(parts) if parts else "") + "."

    @property
    def hub_dataset(self) -> str | None:
        """The dataset when it is a Hub id (the card's ``datasets`` accepts nothing else)."""
        return self.dataset if is_repo_id(self.dataset) and not FsPath(self.dataset).exists() else None

    @property
    def index_dataset(self) -> str | None:
        """The dataset the ``model-index`` may name: a Hub id or a built-in data name (``digits``); a local file or
        folder (``reviews.parquet``) is named in the card's text only."""
        from hf_llpf.data.sources import BUILTIN_DATASETS

        return self.hub_dataset or (self.dataset if self.dataset in BUILTIN_DATASETS else None)

    def split(self, setting: str) -> str:
        data = self.config.get("data")
        value = data.get(setting) if isinstance(data, dict) else None
        return str(value or setting.removesuffix("_split"))


def read_facts(root: FsPath) -> RunFacts:
    """The :class:`RunFacts` of a run directory (or of the snapshot of a published path)."""
    endpoints = read_json(root / ENDPOINTS_JSON)
    config = _read_yaml(root / CONFIG_YAML)
    kinds = {e.get("kind") for k, e in endpoints.items() if k in ("A", "B") and isinstance(e, dict)}
    library = next(iter(kinds)) if len(kinds) == 1 and kinds <= {"timm", "transformers"} else None
    data = config.get("data")
    if isinstance(data, dict):
        source, revision = data.get("source"), data.get("revision")
    else:
        source, revision = (data if isinstance(data, str) else None), None
    bases = [b for b in (_hub_id(endpoints.get("A") or {}), _hub_id(endpoints.get("B") or {})) if b]
    dataset = scrub_text(str(source), local_names(endpoints)) if source else "unknown"
    return RunFacts(endpoints, config, library, bases, dataset, revision)
