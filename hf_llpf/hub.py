"""Publish a run directory as a Hub model repo, load one back, and export any point as a merged model.

Only this module talks to the Hugging Face Hub for paths (``../shared/design.md``, "Imports flow one way").

- :func:`push_path` uploads a run directory (points, metrics, plots, config, card; never the resume
  checkpoint) in **one commit**, then tags that commit ``llpf-<content hash>`` so a path version can be
  cited and loaded exactly. Pushing unchanged content again makes no commit and no tag.
- :func:`load_path` returns the same :class:`~hf_llpf.path.Path` as a local run: metrics, config and card
  are downloaded at once, each point's folder only when it is first used, and only safetensors weights.
- :func:`export_point` writes one point as a standalone model in the endpoints' format with its own card.
- :func:`build_model_card` builds ``RUN_DIR/README.md`` (``base_model: [A, B]``, relation ``merge``,
  ``model-index`` from the path summary).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path as FsPath
from typing import Any

import yaml

from hf_llpf import __version__
from hf_llpf.errors import ConfigError, OfflineError, RunDirectoryError, UnknownNameError
from hf_llpf.path import CHECKPOINT_DIR, METRICS_JSON, POINTS_DIR, Path, atomic_write_text
from hf_llpf.run_lock import LOCK, MARKER
from hf_llpf.safe_paths import walk_files

REPORT_START = "<!-- hf_llpf:report:start -->"
REPORT_END = "<!-- hf_llpf:report:end -->"
CARD_TAGS = ["llpf", "mode-connectivity", "merge"]
TAG_PREFIX = "llpf-"
# Never published: the resume state (pickle, large, machine-specific) and half-written temporary files.
IGNORE_PATTERNS = (
    ".hf_llpf-*",
    "checkpoint/**",
    "checkpoint",
    "**/.tmp_*",
    ".tmp_*",
    "**/.*.tmp",
    ".*.tmp",
    "**/__pycache__/**",
)
# Files a published path needs before any point is opened (metrics eager, points lazy).
EAGER_PATTERNS = ["README.md", "*.json", "*.csv", "*.yaml", "plots/*"]
# Weights are only ever fetched as safetensors; configs and small text files come with them.
POINT_FILE_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model", "*.md")
UNSAFE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")
_REPO_ID_FORM = (
    "'namespace/name' (letters, digits, '-', '_', '.'; each part at most 96 characters; no '--' or '..'; "
    "not starting or ending with '-' or '.'), optionally followed by '@revision' where a revision is accepted"
)


class HubAuthError(ConfigError):
    """No Hugging Face token was found for a write, or the Hub refused the one given (never printed)."""


# --------------------------------------------------------------------------------------------------------------
# Input checks (run before any work, so a bad call changes nothing)
# --------------------------------------------------------------------------------------------------------------


def parse_repo_spec(spec: str, *, field: str = "repo_id", allow_revision: bool = True) -> tuple[str, str | None]:
    """Split ``"org/name@revision"`` into ``(repo_id, revision)`` and validate the repo id.

    Raises:
        ConfigError: the value is not of the form ``namespace/name[@revision]`` (the message names both).
    """
    if not isinstance(spec, str):
        raise ConfigError(f"{field}={spec!r}: expected a string of the form {_REPO_ID_FORM}")
    repo_id, sep, revision = spec.partition("@")
    if sep and (not allow_revision or not revision):
        what = "a revision is not accepted here" if not allow_revision else "the revision after '@' is empty"
        raise ConfigError(f"{field}={spec!r}: {what}; expected {_REPO_ID_FORM}")
    parts = repo_id.split("/")
    ok = len(parts) == 2 and all(
        re.fullmatch(r"[A-Za-z0-9][\w.\-]{0,95}", p) and not re.search(r"--|\.\.|[.\-]$", p) for p in parts
    )
    if not ok:
        raise ConfigError(f"{field}={spec!r}: not a valid Hub repo id; expected {_REPO_ID_FORM}")
    return repo_id, (revision or None)


def check_branch_name(name: str, *, field: str) -> str:
    """A branch name git and the Hub accept: letters, digits, ``-_./``; no ``..``, ``//``, leading ``/`` or ``.``,
    trailing ``/``, ``.`` or ``.lock``.

    Raises:
        ConfigError: naming ``field``, the value and the rule.
    """
    bad = (
        not re.fullmatch(r"[\w.\-/]+", name)
        or ".." in name
        or "//" in name
        or name.startswith(("/", ".", "-"))
        or name.endswith(("/", ".", ".lock"))
    )
    if bad:
        raise ConfigError(
            f"{field}={name!r}: not a branch name; expected letters, digits, '-', '_', '.', '/' without '..' or "
            "'//', not starting with '/', '.' or '-', not ending with '/', '.' or '.lock'"
        )
    return name


def _is_connection_error(err: BaseException) -> bool:
    # huggingface_hub raises its HTTP client's own types (httpx or requests) for an unreachable Hub.
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    return bool(names & {"ConnectError", "ConnectionError", "ConnectTimeout", "ReadTimeout", "NameResolutionError"})


def _raise_for_connection(err: Exception, api: Any) -> None:
    if _is_connection_error(err):
        raise OfflineError(
            f"cannot reach the Hub at {getattr(api, 'endpoint', None) or 'the default endpoint'} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no answer'}). "
            "Nothing was published; check the network or HF_ENDPOINT and run the same command again."
        ) from None


def _check_online(action: str) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once at import; the environment may have changed since, so look at both.
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    if constants.is_offline_mode() or env.strip().upper() in {"1", "ON", "YES", "TRUE"}:
        raise OfflineError(
            f"cannot {action}: offline mode is on (HF_HUB_OFFLINE=1). Nothing was sent or changed; unset "
            "HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE) and run the same command again."
        )


def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubAuthError(
            "token: no Hugging Face token found; a write token is needed to push. Pass --token / token=..., set "
            "the HF_TOKEN environment variable, or run `hf auth login` once."
        )
    return token


def _check_run_dir(run_dir: str | os.PathLike) -> FsPath:
    root = FsPath(run_dir)
    if not root.is_dir():
        raise RunDirectoryError(f"run_dir={str(root)!r}: not a directory")
    if not (root / METRICS_JSON).is_file():
        raise RunDirectoryError(f"run_dir={str(root)!r} is not a run directory: {METRICS_JSON} is missing")
    return root


def _raise_for_auth(err: Exception, *, repo_id: str) -> None:
    # Re-raise 401/403 as a clear error; the message of the HTTP error can include the URL, never the token.
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        raise HubAuthError(
            f"token: the Hub refused the token for repo_id={repo_id!r} (HTTP {status}); it needs write access "
            "to that namespace"
        ) from None


# --------------------------------------------------------------------------------------------------------------
# Files of a run directory
# --------------------------------------------------------------------------------------------------------------


def _is_ignored(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in (CHECKPOINT_DIR, MARKER, LOCK) or "__pycache__" in parts:
        return True
    return any(p.startswith(".tmp_") or (p.startswith(".") and p.endswith(".tmp")) for p in parts)


def publishable_files(run_dir: str | os.PathLike) -> list[str]:
    """The files of a run directory that are published, as sorted POSIX paths relative to it.

    Left out: ``checkpoint/`` (resume state), temporary files of interrupted writes, ``__pycache__``.
    """
    root = FsPath(run_dir)
    files = [p.relative_to(root).as_posix() for p in walk_files(root)]
    return sorted(f for f in files if not _is_ignored(f))


def _sha256_file(path: FsPath) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(files: dict[str, bytes | FsPath]) -> str:
    """A sha256 over the (path, content) pairs of a set of files; the same content gives the same hash."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        value = files[rel]
        blob = hashlib.sha256(value).hexdigest() if isinstance(value, bytes) else _sha256_file(value)
        digest.update(f"{rel}\0{blob}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: FsPath) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_yaml(path: FsPath) -> dict:
    if not path.is_file():
        return {}
    loaded = yaml.safe_load(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def _hub_id(entry: dict) -> str | None:
    """The Hub repo id of an ``endpoints.json`` entry, or None for local endpoints.

    A Hub endpoint was resolved to a 40-hex commit sha; local ones carry ``local:<hash>`` (``models.py``).
    Only Hub ids go into ``base_model``: the Hub rejects other values there.
    """
    source, revision = str(entry.get("id") or ""), str(entry.get("revision") or "")
    if not re.fullmatch(r"[0-9a-f]{40}", revision):
        return None
    try:
        return parse_repo_spec(source, field="endpoint")[0]
    except ConfigError:
        return None


def _endpoint_label(entry: dict) -> str:
    rev = entry.get("revision")
    return f"`{entry.get('id')}`" + (f" (revision `{rev}`)" if rev else "")


def _library(endpoints: dict) -> str | None:
    kinds = {e.get("kind") for k, e in endpoints.items() if k in ("A", "B") and isinstance(e, dict)}
    return kinds.pop() if len(kinds) == 1 and kinds <= {"timm", "transformers"} else None


def _task_type(library: str | None, endpoints: dict) -> str:
    if library == "timm":
        return "image-classification"
    arch = str((endpoints.get("A") or {}).get("architecture") or "")
    for suffix, task in (
        ("ForSequenceClassification", "text-classification"),
        ("ForImageClassification", "image-classification"),
        ("ForTokenClassification", "token-classification"),
        ("ForCausalLM", "text-generation"),
        ("ForQuestionAnswering", "question-answering"),
    ):
        if arch.endswith(suffix):
            return task
    return "other"


def _data_source(config: dict) -> tuple[str | None, str | None]:
    data = config.get("data")
    if isinstance(data, dict):
        return data.get("source"), data.get("revision")
    return (data, None) if isinstance(data, str) else (None, None)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# (summary key, metric type, human name); the linear-interpolation figure is put beside each one.
_SUMMARY_METRICS = (
    ("max_train_loss", "loss", "max train loss"),
    ("barrier", "loss", "loss barrier"),
    ("min_train_acc", "accuracy", "min train accuracy"),
)


def _eval_results(summary: dict, *, task_type: str, dataset: str) -> list:
    from huggingface_hub import EvalResult

    results = []
    for method, label in (("llpf", "LLPF path"), ("linear", "linear interpolation")):
        figures = summary.get(method) or {}
        for key, metric_type, name in _SUMMARY_METRICS:
            if _finite(figures.get(key)):
                results.append(
                    EvalResult(
                        task_type=task_type,
                        dataset_type=dataset,
                        dataset_name=dataset,
                        metric_type=metric_type,
                        metric_name=f"{name} ({label})",
                        metric_value=float(figures[key]),
                    )
                )
    return results


def _summary_table(summary: dict) -> str:
    llpf, linear = summary.get("llpf") or {}, summary.get("linear") or {}
    keys = [k for k in dict.fromkeys([*llpf, *linear])]
    if not keys:
        return "_No summary yet: run `hf-llpf evaluate` on the run directory to add one._"

    def fmt(v: Any) -> str:
        if _finite(v):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)) and all(_finite(x) for x in v):
            return "–".join(f"{x:.4g}" for x in v)
        return "–" if v is None else str(v)

    rows = ["| figure | LLPF path | linear interpolation |", "|---|---|---|"]
    rows += [f"| {k.replace('_', ' ')} | {fmt(llpf.get(k))} | {fmt(linear.get(k))} |" for k in keys]
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


def _load_snippet(library: str | None, repo: str, point: str, endpoints: dict) -> list[str]:
    lines = [
        "```python",
        "from hf_llpf.hub import load_path",
        f'model = load_path("{repo}").model_at(-1)  # any point: index 0..len-1',
        "```",
    ]
    if library == "transformers":
        arch = str((endpoints.get("A") or {}).get("architecture") or "AutoModel")
        lines += [
            "",
            "With plain transformers (each point is a subfolder):",
            "",
            "```python",
            f"from transformers import {arch}",
            f'model = {arch}.from_pretrained("{repo}", subfolder="{point}")',
            "```",
        ]
    elif library == "timm":
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


def build_model_card(run_dir: str | os.PathLike, *, repo_id: str | None = None):
    """Build the model card (``README.md``) of a run directory.

    The metadata lists both endpoints under ``base_model`` with ``base_model_relation: merge`` (so the path
    appears in both endpoints' model trees), the library, the tags ``llpf``/``mode-connectivity``/``merge``,
    the dataset and a ``model-index`` with the path summary (max train loss, barrier, min train accuracy),
    the linear-interpolation figures beside them. The text has the plots, the command and settings to
    reproduce the run, the package version and how to load a point. An evaluation report already in the
    README (between the hf_llpf report markers) is kept.

    Args:
        run_dir: the run directory.
        repo_id: the Hub repo the card is for (used in the loading code); a placeholder when None.

    Returns:
        huggingface_hub.ModelCard: the card (``str(card)`` is the README text).
    """
    from huggingface_hub import ModelCard, ModelCardData

    root = _check_run_dir(run_dir)
    endpoints = _read_json(root / "endpoints.json")
    config = _read_yaml(root / "llpf_config.yaml")
    metrics = _read_json(root / METRICS_JSON)
    summary = metrics.get("summary") or {}
    points = metrics.get("points") or []
    ep_a, ep_b = endpoints.get("A") or {}, endpoints.get("B") or {}
    library = _library(endpoints)
    bases = [b for b in (_hub_id(ep_a), _hub_id(ep_b)) if b]
    source, data_rev = _data_source(config)
    dataset = str(source) if source else "unknown"
    hub_dataset = dataset if re.fullmatch(r"[\w.\-]+/[\w.\-]+", dataset) and not FsPath(dataset).exists() else None
    repo = repo_id or "ORG/NAME"
    name = repo_id.split("/")[-1] if repo_id else root.resolve().name
    eval_results = _eval_results(summary, task_type=_task_type(library, endpoints), dataset=dataset)

    data = ModelCardData(
        base_model=bases or None,
        library_name=library,
        tags=list(CARD_TAGS),
        datasets=[hub_dataset] if hub_dataset else None,
        model_name=name,
        eval_results=eval_results or None,
    )
    if len(bases) == 2:
        # Both endpoints are Hub models: the path is a merge of the two (Hub model tree).
        data.base_model_relation = "merge"

    mid = points[len(points) // 2]["point"] if points else f"{POINTS_DIR}/t_000000"
    command = endpoints.get("command") or config.get("command")
    plots = (
        sorted(p.relative_to(root).as_posix() for p in (root / "plots").glob("*.png"))
        if (root / "plots").is_dir()
        else []
    )
    config_text = (root / "llpf_config.yaml").read_text() if (root / "llpf_config.yaml").is_file() else ""

    lines = [
        f"# {name}: a low-loss path between two models",
        "",
        "A path of models found with [hf_llpf](https://arxiv.org/abs/2505.02604) (LLPF) between",
        f"- **A**: {_endpoint_label(ep_a)}",
        f"- **B**: {_endpoint_label(ep_b)}",
        "",
        f"The path has {len(points)} saved points (`{POINTS_DIR}/t_<tick>/`, each a standalone model in the "
        "endpoints' format); `path_metrics.json`/`.csv` hold the figures of every point. Every point is a "
        "merge of A and B; every published version is tagged `llpf-<content hash>`.",
        "",
        "## Summary",
        "",
        _summary_table(summary),
        "",
        f"Data: `{dataset}`" + (f" (revision `{data_rev}`)" if data_rev else "") + ".",
    ]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{FsPath(p).stem}]({p})" for p in plots]
    lines += ["", "## Load a point", ""] + _load_snippet(library, repo, mid, endpoints)
    lines += ["", "## Reproduce", ""]
    if command:
        cmd = " ".join(command) if isinstance(command, (list, tuple)) else str(command)
        lines += ["```bash", cmd, "```"]
    else:
        lines += ["No command was recorded with this run; `llpf_config.yaml` below holds the full resolved settings."]
    if config_text:
        lines += ["", "`llpf_config.yaml`:", "", "```yaml", config_text.rstrip("\n"), "```"]
    run_version = endpoints.get("hf_llpf_version")
    made = f"Run made with hf_llpf {run_version}; card made with hf_llpf {__version__}." if run_version else ""
    lines += ["", made or f"Made with hf_llpf {__version__}."]
    report = _report_section(root / "README.md")
    if report:
        lines += ["", report]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token, library_name="hf_llpf", library_version=__version__)


def _upload(
    api: Any,
    *,
    repo_id: str,
    files: dict[str, bytes | FsPath],
    revision: str,
    private: bool,
    message: str,
    prune: tuple[str, ...] = (),
) -> tuple[str, bool, Any]:
    """Create the repo/branch if needed and commit ``files`` in one commit.

    Returns ``(commit sha, committed?, refs before)``. Remote files under ``prune`` folders that are not in
    ``files`` are deleted in the same commit (a re-run with fewer points leaves no stale ones).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import RepositoryNotFoundError

    api.create_repo(repo_id, private=private, exist_ok=True)
    try:
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:  # created just now but not visible yet; treat as empty
        refs = None
    branches = {b.name: b.target_commit for b in (refs.branches if refs else [])}
    if revision not in branches:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        branches[revision] = branches.get("main")  # a new branch starts at main's head
    deletions = []
    if prune and revision in branches:
        remote = api.list_repo_files(repo_id, revision=revision)
        deletions = [
            CommitOperationDelete(path_in_repo=f)
            for f in remote
            if f not in files and any(f.startswith(p + "/") for p in prune)
        ]
    ops = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=v if isinstance(v, bytes) else str(v))
        for rel, v in files.items()
    ]
    info = api.create_commit(repo_id, operations=[*ops, *deletions], commit_message=message, revision=revision)
    return info.oid, info.oid != branches.get(revision), refs


def push_path(
    run_dir: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    tag: str | None = None,
) -> dict:
    """Publish a run directory as a Hub model repo in one commit, then tag that commit.

    The model card is rebuilt for ``repo_id`` and uploaded with the other files; it is written to
    ``RUN_DIR/README.md`` only after the push succeeded, so a push that fails midway changes nothing local
    and can simply be run again. Content already published under its tag at the branch head is not pushed
    again (no new commit, no new tag).

    Args:
        run_dir: the run directory.
        repo_id: ``namespace/name`` of the model repo (created when missing).
        private: create the repo private (an existing repo keeps its visibility).
        revision: the branch to push to (created from ``main`` when missing); default ``main``.
        token: a write token; default: ``HF_TOKEN`` or the token saved by ``hf auth login``. Never written to disk.
        endpoint: the Hub URL (default: ``HF_ENDPOINT`` or the public Hub).
        tag: the tag to create; default ``llpf-<first 12 hex of the content hash>``.

    Returns:
        dict: ``repo_id``, ``revision``, ``commit`` (sha), ``tag``, ``created_commit``, ``created_tag``,
        ``files`` (number published), ``url``.

    Raises:
        ConfigError: invalid ``repo_id`` or ``revision``. RunDirectoryError: not a run directory.
        OfflineError: ``HF_HUB_OFFLINE=1``. HubAuthError: no token, or the token was refused.
    """
    from huggingface_hub.errors import HfHubHTTPError

    repo_id, _ = parse_repo_spec(repo_id, allow_revision=False)
    if revision is not None:
        check_branch_name(revision, field="revision")
    root = _check_run_dir(run_dir)
    _check_online("push a path to the Hub")
    token = _resolve_token(token)
    revision = revision or "main"

    card = str(build_model_card(root, repo_id=repo_id)).encode()
    files: dict[str, bytes | FsPath] = {rel: root / rel for rel in publishable_files(root)}
    files["README.md"] = card
    tag = tag or TAG_PREFIX + content_hash(files)[:12]
    api = _api(endpoint, token)
    try:
        result = _push_tagged(api, repo_id=repo_id, files=files, revision=revision, private=private, tag=tag)
    except HfHubHTTPError as err:
        _raise_for_auth(err, repo_id=repo_id)
        raise
    except Exception as err:
        _raise_for_connection(err, api)
        raise
    if not (root / "README.md").is_file() or (root / "README.md").read_bytes() != card:
        atomic_write_text(root / "README.md", card.decode())
    base = (endpoint or api.endpoint).rstrip("/")
    return {**result, "repo_id": repo_id, "revision": revision, "files": len(files), "url": f"{base}/{repo_id}"}


def _push_tagged(api: Any, *, repo_id: str, files: dict, revision: str, private: bool, tag: str) -> dict:
    from huggingface_hub.errors import RepositoryNotFoundError

    # Idempotence: if this exact content is already the branch head under its tag, there is nothing to do.
    try:
        refs = api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        refs = None
    if refs is not None:
        tags = {t.name: t.target_commit for t in refs.tags}
        heads = {b.name: b.target_commit for b in refs.branches}
        if tag in tags and heads.get(revision) == tags[tag]:
            return {"commit": tags[tag], "tag": tag, "created_commit": False, "created_tag": False}
    commit, created, refs = _upload(
        api,
        repo_id=repo_id,
        files=files,
        revision=revision,
        private=private,
        message=f"hf_llpf {__version__}: publish path ({tag})",
        prune=(POINTS_DIR, "plots"),
    )
    existing = {t.name for t in (refs.tags if refs else [])}
    created_tag = tag not in existing
    if created_tag:
        # exist_ok covers a concurrent push of the same content; a tag, once made, never moves (a citation).
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"LLPF path {tag}", exist_ok=True)
    return {"commit": commit, "tag": tag, "created_commit": created, "created_tag": created_tag}


# --------------------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------------------


class HubPath(Path):
    """A published path: like a local :class:`~hf_llpf.path.Path`, each point downloaded on first use.

    Attributes:
        repo_id, revision: what was asked for; ``commit``: the commit sha every download is pinned to.
    """

    def __init__(self, root: FsPath, *, repo_id: str, revision: str, commit: str, endpoint: str | None, template=None):
        super().__init__(root, template=template)
        self.repo_id, self.revision, self.commit, self.endpoint = repo_id, revision, commit, endpoint
        self._fetched: set[str] = set()

    def __repr__(self) -> str:
        return f"HubPath({self.repo_id!r}@{self.revision}, commit={self.commit[:10]}, points={len(self)})"

    def _fence(self) -> FsPath:
        # The snapshot's files are links into the repo's blob store: models--org--name/{snapshots/<sha>,blobs}.
        return self.root.parent.parent

    def point_dir(self, i: int) -> FsPath:
        """The local folder of point ``i``, downloaded (safetensors weights and configs only) the first time."""
        rel = self.point_name(i)  # checked before it becomes a download pattern
        if rel not in self._fetched:
            _snapshot(
                self.repo_id,
                revision=self.commit,
                endpoint=self.endpoint,
                allow_patterns=[f"{rel}/{p}" for p in POINT_FILE_PATTERNS],
            )
            self._fetched.add(rel)
        return super().point_dir(i)


def _snapshot(
    repo_id: str,
    *,
    revision: str,
    endpoint: str | None,
    allow_patterns: list[str],
    ignore_patterns: list[str] | None = None,
) -> FsPath:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        return FsPath(
            snapshot_download(
                repo_id,
                revision=revision,
                endpoint=endpoint,
                allow_patterns=allow_patterns,
                ignore_patterns=ignore_patterns,
            )
        )
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as err:
        raise OfflineError(
            f"path {repo_id}@{revision} is not in the local cache and the Hub cannot be reached "
            f"({type(err).__name__}); unset HF_HUB_OFFLINE or pass a local run directory"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise UnknownNameError(
            "published path",
            f"{repo_id}@{revision}",
            ["an existing model repo and revision (branch, tag or commit)"],
            hint=str(err).splitlines()[0],
        ) from err


def load_path(spec: str, *, endpoint: str | None = None, template=None) -> HubPath:
    """Load a published path ``"org/repo[@revision]"`` as a :class:`~hf_llpf.path.Path`.

    Metrics, settings, card and plots are downloaded now; each point's folder when it is first used
    (``model_at``, ``state_dict_at``, ``point_dir``), pinned to the commit the revision resolved to, so a
    moving branch cannot mix two versions. Only safetensors weights are downloaded.

    Args:
        spec: ``org/repo``, ``org/repo@branch``, ``org/repo@llpf-<hash>`` (a tag) or ``org/repo@<commit>``.
        endpoint: the Hub URL (default: ``HF_ENDPOINT`` or the public Hub).
        template: see :class:`~hf_llpf.path.Path`.

    Raises:
        ConfigError: not a repo spec. OfflineError: not cached and offline. UnknownNameError: no such repo/revision.
        RunDirectoryError: the repo is not a published path.
    """
    repo_id, revision = parse_repo_spec(spec, field="path")
    # olah and the Hub both answer an explicit revision; "main" is what the Hub means by no revision.
    revision = revision or "main"
    # The patterns are fnmatch-style ("*" also matches "/"): the points folder is excluded explicitly.
    root = _snapshot(
        repo_id,
        revision=revision,
        endpoint=endpoint,
        allow_patterns=list(EAGER_PATTERNS),
        ignore_patterns=[f"{POINTS_DIR}/*", "checkpoint/*"],
    )
    if not (root / METRICS_JSON).is_file():
        raise RunDirectoryError(f"{repo_id}@{revision} is not a published path: it has no {METRICS_JSON}")
    # snapshot_download returns .../snapshots/<commit sha>: later point downloads are pinned to it.
    commit = root.name if re.fullmatch(r"[0-9a-f]{40}", root.name) else revision
    return HubPath(root, repo_id=repo_id, revision=revision, commit=commit, endpoint=endpoint, template=template)


# --------------------------------------------------------------------------------------------------------------
# Export one point
# --------------------------------------------------------------------------------------------------------------


def select_point(path: Path, point: str | int) -> int:
    """The index of the point named by ``point``.

    ``point`` is an index (``3``, ``-1``), ``tick:N`` / ``tN`` (the point saved at tick N), ``best`` (the
    interior point with the highest test accuracy, else lowest test loss, else lowest train loss; the
    endpoints themselves are left out when the path has interior points) or ``mid`` (the point most nearly
    equidistant from A and B, by ``dist_a``/``dist_b``; else the middle index).

    Raises:
        UnknownNameError: the value matches none of these forms, or no point has that tick.
    """
    n = len(path)
    forms = ["an index 0..n-1 or negative", "tick:N (or tN)", "best", "mid"]
    text = str(point).strip().lower()
    if re.fullmatch(r"-?\d+", text):
        i = int(text)
        if not -n <= i < n:
            raise UnknownNameError("point", point, [f"an index in {-n}..{n - 1}", *forms[1:]])
        return i % n
    m = re.fullmatch(r"(?:tick[:=]|t)(\d+)", text)
    if m:
        tick = int(m.group(1))
        if tick not in path.ticks:
            raise UnknownNameError("point tick", tick, path.ticks)
        return path.ticks.index(tick)
    rows = path.metrics
    candidates = list(range(1, n - 1)) if n > 2 else list(range(n))
    if text == "mid":
        if all(_finite(rows[i].get("dist_a")) and _finite(rows[i].get("dist_b")) for i in candidates):
            return min(candidates, key=lambda i: (abs(rows[i]["dist_a"] - rows[i]["dist_b"]), i))
        return n // 2
    if text == "best":
        for key, sign in (("test_acc", -1), ("test_accuracy", -1), ("test_loss", 1), ("train_loss", 1)):
            if all(_finite(rows[i].get(key)) for i in candidates):
                return min(candidates, key=lambda i: (sign * rows[i][key], i))
        raise UnknownNameError("point", point, forms, hint="'best' needs test_acc, test_loss or train_loss per point")
    raise UnknownNameError("point", point, forms)


def _point_card(path: Path, i: int, *, source: str, repo_id: str | None):
    from huggingface_hub import ModelCard, ModelCardData

    endpoints = path.endpoints if (path.root / "endpoints.json").is_file() else {}
    ep_a, ep_b = endpoints.get("A") or {}, endpoints.get("B") or {}
    library = _library(endpoints)
    bases = [b for b in (_hub_id(ep_a), _hub_id(ep_b)) if b]
    row = path.metrics[i]
    data = ModelCardData(base_model=bases or None, library_name=library, tags=[*CARD_TAGS, "llpf-point"])
    if len(bases) == 2:
        data.base_model_relation = "merge"
    figures = [f"| {k} | {v:.4g} |" for k, v in row.items() if _finite(v) and k not in ("index", "tick")]
    repo = repo_id or "ORG/NAME"
    lines = [
        f"# Point {i} (tick {row.get('tick')}) of an LLPF path",
        "",
        "A model merged from two endpoints: point "
        f"{i} of {len(path)} of the low-loss path `{source}` (folder `{row.get('point')}`), found with hf_llpf.",
        f"- **A**: {_endpoint_label(ep_a)}",
        f"- **B**: {_endpoint_label(ep_b)}",
        f"- **point**: index {i}, tick {row.get('tick')}, stage {row.get('stage')}, phase {row.get('phase')}",
        "",
        "| figure | value |",
        "|---|---|",
        *figures,
        "",
        "## Load",
        "",
        "```python",
    ]
    if library == "timm":
        lines += [
            "import hf_llpf, timm  # hf_llpf registers its built-in architectures",
            f'model = timm.create_model("hf-hub:{repo}", pretrained=True)',
        ]
    elif library == "transformers":
        arch = str(ep_a.get("architecture") or "AutoModel")
        lines += [f"from transformers import {arch}", f'model = {arch}.from_pretrained("{repo}")']
    else:
        lines += ["from hf_llpf.models import load_endpoint", f'model = load_endpoint("{repo}").model']
    lines += ["```", "", f"Made with hf_llpf {__version__}."]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def export_point(
    source: str | os.PathLike | Path,
    *,
    point: str | int = "mid",
    out_dir: str | os.PathLike,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> dict:
    """Write one point of a path as a standalone model (the endpoints' format) with its own model card.

    Args:
        source: a run directory, a published path ``org/repo[@revision]``, or a loaded :class:`Path`.
        point: which point (see :func:`select_point`): an index, ``tick:N``, ``best`` or ``mid``.
        out_dir: the folder to write (must be empty or absent).
        push_to_hub: also publish the folder as this model repo (one commit).
        private, token: for ``push_to_hub``.
        endpoint: the Hub URL for reading a published ``source`` and for ``push_to_hub``.

    Returns:
        dict: ``index``, ``tick``, ``point`` (folder in the path), ``out_dir``, ``files``, and ``commit`` /
        ``repo_id`` when pushed.

    Raises:
        RunDirectoryError: ``out_dir`` is not empty, or ``source`` is not a run directory.
        UnknownNameError: ``point`` names no point. ConfigError, OfflineError, HubAuthError: see push_path.
    """
    if push_to_hub is not None:
        push_to_hub, _ = parse_repo_spec(push_to_hub, field="push_to_hub", allow_revision=False)
    out = FsPath(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirectoryError(f"out_dir={str(out)!r} already exists and is not empty; choose a new folder")
    if push_to_hub is not None:
        _check_online("push an exported point to the Hub")
        token = _resolve_token(token)
    if isinstance(source, Path):
        path, label = source, getattr(source, "repo_id", None) or str(source.root)
    elif FsPath(source).is_dir():
        path, label = Path(_check_run_dir(source)), str(source)
    else:
        path = load_path(str(source), endpoint=endpoint)
        label = f"{path.repo_id}@{path.commit}"
    if isinstance(path, HubPath):
        label = f"{path.repo_id}@{path.commit}"
    i = select_point(path, point)
    folder = path.point_dir(i)
    files = [
        p
        for p in walk_files(folder, allowed_root=path._fence())
        if p.suffix not in UNSAFE_WEIGHTS and p.name != "README.md"
    ]
    if not any(p.suffix == ".safetensors" for p in files):
        raise RunDirectoryError(f"point {i} ({folder}) has no safetensors weights")
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for f in files:
        dest = tmp / f.relative_to(folder)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    card = _point_card(path, i, source=label, repo_id=push_to_hub)
    (tmp / "README.md").write_text(str(card))
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)  # the folder appears whole or not at all
    row = path.metrics[i]
    result = {"index": i, "tick": row.get("tick"), "point": row.get("point"), "out_dir": str(out)}
    result["files"] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    if push_to_hub is not None:
        from huggingface_hub.errors import HfHubHTTPError

        payload: dict[str, bytes | FsPath] = {rel: out / rel for rel in result["files"]}
        try:
            commit, _, _ = _upload(
                _api(endpoint, token),
                repo_id=push_to_hub,
                files=payload,
                revision="main",
                private=private,
                message=f"hf_llpf {__version__}: export point {i} (tick {row.get('tick')}) of {label}",
            )
        except HfHubHTTPError as err:
            _raise_for_auth(err, repo_id=push_to_hub)
            raise
        except Exception as err:
            _raise_for_connection(err, _api(endpoint, token))
            raise
        result.update(repo_id=push_to_hub, commit=commit)
    return result
