"""Load a published path: metrics, settings, card and plots at once, each point's folder on first use.

Every download goes through ``snapshot_download`` with an allow-list, so only safetensors weights (plus
configs and small text files) are ever fetched, never pickled weights; every name read from the repo goes
through :mod:`hf_llpf.files.safe_paths` (in :class:`~hf_llpf.run.RunPath`) before it becomes a download pattern
or a file to open.
"""

from __future__ import annotations

import re
from pathlib import Path as FsPath

from hf_llpf.errors import OfflineError, RunDirectoryError, UnknownNameError
from hf_llpf.hub_client.repo_ids import parse_repo_spec
from hf_llpf.run import CHECKPOINT_DIR, METRICS_JSON, PLOTS_DIR, POINTS_DIR, RunPath
from hf_llpf.run.layout import README

# Files a published path needs before any point is opened (metrics eager, points lazy).
EAGER_PATTERNS = (README, "*.json", "*.csv", "*.yaml", f"{PLOTS_DIR}/*")
# Weights are only ever fetched as safetensors; configs and small text files come with them.
POINT_FILE_PATTERNS = ("*.safetensors", "*.json", "*.txt", "*.model", "*.spm", "*.jinja", "*.md")
# Pickle-based or foreign weight formats: never downloaded, never copied into an export.
UNSAFE_WEIGHTS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack")


def snapshot(
    repo_id: str,
    *,
    revision: str,
    endpoint: str | None,
    allow_patterns: list[str],
    ignore_patterns: list[str] | None = None,
) -> FsPath:
    """``snapshot_download`` of the files matching ``allow_patterns``; returns the snapshot folder.

    Raises:
        OfflineError: not in the local cache and the Hub cannot be reached.
        UnknownNameError: no such repo or revision.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            endpoint=endpoint,
            allow_patterns=allow_patterns,
            ignore_patterns=ignore_patterns,
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
    return FsPath(folder)


class HubPath(RunPath):
    """A published path: like a local :class:`~hf_llpf.run.RunPath`, each point downloaded on first use.

    Attributes:
        repo_id: the repo asked for.
        revision: the revision asked for (``main`` when none was given).
        commit: the commit sha the revision resolved to; every download is pinned to it.
        endpoint: the Hub URL, or None for ``HF_ENDPOINT`` / the public Hub.
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

    def point_fence(self, folder: FsPath) -> FsPath:
        """A point's files are links into the repo's blob store: they may lie anywhere in the repo's cache folder."""
        return self._fence()

    def point_dir(self, i: int) -> FsPath:
        """The local folder of point ``i``, downloaded (safetensors weights and configs only) the first time."""
        rel = self.point_name(i)  # checked by safe_paths before it becomes a download pattern
        if rel not in self._fetched:
            snapshot(
                self.repo_id,
                revision=self.commit,
                endpoint=self.endpoint,
                allow_patterns=[f"{rel}/{p}" for p in POINT_FILE_PATTERNS],
            )
            self._fetched.add(rel)
        return super().point_dir(i)


def load_path(spec: str, *, endpoint: str | None = None, template=None) -> HubPath:
    """Load a published path ``"org/repo[@revision]"`` as a :class:`~hf_llpf.run.RunPath`.

    Metrics, settings, card and plots are downloaded now; each point's folder when it is first used
    (``model_at``, ``state_dict_at``, ``point_dir``), pinned to the commit the revision resolved to, so a
    moving branch cannot mix two versions. Only safetensors weights are downloaded.

    Args:
        spec: ``org/repo``, ``org/repo@branch``, ``org/repo@llpf-<hash>`` (a tag) or ``org/repo@<commit>``.
        endpoint: the Hub URL (default: ``HF_ENDPOINT`` or the public Hub).
        template: see :class:`~hf_llpf.run.RunPath`.

    Returns:
        HubPath: the path.

    Raises:
        ConfigError: not a repo spec. OfflineError: not cached and offline. UnknownNameError: no such
            repo/revision. RunDirectoryError: the repo is not a published path, or names a point outside it.
    """
    repo_id, revision = parse_repo_spec(spec, field="path")
    # olah and the Hub both answer an explicit revision; "main" is what the Hub means by no revision.
    revision = revision or "main"
    # The patterns are fnmatch-style ("*" also matches "/"): the points folder is excluded explicitly.
    root = snapshot(
        repo_id,
        revision=revision,
        endpoint=endpoint,
        allow_patterns=list(EAGER_PATTERNS),
        ignore_patterns=[f"{POINTS_DIR}/*", f"{CHECKPOINT_DIR}/*"],
    )
    if not (root / METRICS_JSON).is_file():
        raise RunDirectoryError(f"{repo_id}@{revision} is not a published path: it has no {METRICS_JSON}")
    # snapshot_download returns .../snapshots/<commit sha>: later point downloads are pinned to it.
    commit = root.name if re.fullmatch(r"[0-9a-f]{40}", root.name) else revision
    return HubPath(root, repo_id=repo_id, revision=revision, commit=commit, endpoint=endpoint, template=template)
