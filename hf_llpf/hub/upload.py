"""Uploads that scale: a set of files committed in batches (the Hub advises fewer than 100 files a commit),
resumable after a failure.

Each batch is one ``create_commit``. huggingface_hub asks the Hub, before it sends a batch, which files
it already holds with the same content (``preupload``) and sends only the others, and makes no commit
when nothing changed; so a push killed after some batches, run again, uploads only what is missing and
commits only the batches that changed. Point folders go first and the files that describe the path
(``path_metrics.json``, ``endpoints.json``, the card) last, so until the last batch lands the repo's
card and metrics still describe the previous version. Remote files a push replaces as a whole (points,
plots, weights) that the new version no longer has are deleted in the last batch; which of them a push may
delete (those an earlier push published) is decided by :mod:`hf_llpf.hub.ownership` before anything is sent.
"""

from __future__ import annotations

import logging
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.run import POINTS_DIR
from hf_llpf.run.layout import README

FILES_PER_COMMIT = 50
# Remote files a push replaces as a whole: a re-run with fewer points, plots or weight shards leaves no stale ones.
PRUNE_PATTERNS = (f"{POINTS_DIR}/*", "plots/*", "*.safetensors", "*.safetensors.index.json")
logger = logging.getLogger(__name__)
_LAST = (README, "path_metrics.json", "path_metrics.csv", "endpoints.json")


def _order(rel: str) -> tuple[int, str]:
    """Points first, then the root model and other files, then the files that describe the path."""
    if rel.startswith(f"{POINTS_DIR}/"):
        return 0, rel
    return (2 + _LAST[::-1].index(rel), rel) if rel in _LAST else (1, rel)


def batches(files: list[str], size: int = FILES_PER_COMMIT) -> list[list[str]]:
    """``files`` in upload order, cut into batches of at most ``size``."""
    ordered = sorted(files, key=_order)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)] or [[]]


def stale_files(remote: list[str], keep: set[str], *, include=None, exclude=None) -> list[str]:
    """Remote files to delete: matching :data:`PRUNE_PATTERNS` and the include/exclude patterns, not in ``keep``."""
    from huggingface_hub.utils import filter_repo_objects

    replaced = set(filter_repo_objects(remote, allow_patterns=list(PRUNE_PATTERNS)))
    mine = set(filter_repo_objects(sorted(replaced), allow_patterns=include, ignore_patterns=exclude))
    return sorted(mine - keep)


def commit_in_batches(
    api: Any,
    *,
    repo_id: str,
    files: dict[str, bytes | FsPath],
    revision: str,
    message: str,
    deletions: list[str] = (),
    create_pr: bool = False,
    files_per_commit: int = FILES_PER_COMMIT,
    head: str | None = None,
) -> dict:
    """Commit ``files`` to ``revision`` in batches; delete ``deletions`` with the last batch.

    Args:
        api: the ``HfApi``.
        repo_id, revision: the repo and branch (it must exist).
        files: path in the repo -> content (bytes) or the file holding it.
        message: the commit message; ``(k/m)`` is appended when there are several batches.
        deletions: repo paths to delete in the last commit.
        create_pr: open a pull request with the first batch that changes something; later batches go to it.
        files_per_commit: at most this many files in one commit.
        head: the branch head before the push (to count the commits made).

    Returns:
        dict: ``commit`` (the last commit's sha, or the branch head when nothing changed), ``commits`` (how
        many were made), ``batches``, ``pr_url`` and ``pr_revision`` (the pull request's ref, ``refs/pr/N``;
        both None unless a pull request was opened).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    groups = batches(list(files), files_per_commit)
    target, made, pr_url, pr_revision = revision, 0, None, None
    for k, group in enumerate(groups):
        ops: list = [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=v if isinstance(v, bytes) else str(v))
            for rel in group
            for v in (files[rel],)
        ]
        if k == len(groups) - 1:
            ops += [CommitOperationDelete(path_in_repo=rel) for rel in deletions]
        if not ops:
            continue
        info = api.create_commit(
            repo_id=repo_id,
            operations=ops,
            commit_message=message + (f" ({k + 1}/{len(groups)})" if len(groups) > 1 else ""),
            revision=target,
            create_pr=create_pr and pr_url is None,
        )
        changed = info.oid != head  # an unchanged batch makes no commit: create_commit returns the head
        made, head = made + changed, info.oid
        if len(groups) > 1:  # progress of a long upload, one line a batch (-q: none)
            what = f"committed {len(ops)} file(s)" if changed else "unchanged, no commit"
            logger.info(f"{repo_id}@{target}: commit {k + 1}/{len(groups)}: {what}")
        if create_pr and pr_url is None and getattr(info, "pr_revision", None):
            target, pr_url = info.pr_revision, info.pr_url  # the later batches go to the same pull request
            pr_revision = info.pr_revision
    return {"commit": head, "commits": made, "batches": len(groups), "pr_url": pr_url, "pr_revision": pr_revision}


__all__ = ["FILES_PER_COMMIT", "PRUNE_PATTERNS", "batches", "commit_in_batches", "stale_files"]
