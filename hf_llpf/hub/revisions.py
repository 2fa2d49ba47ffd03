"""One branch per published point (``push --point-revisions``): branch ``t_000010`` is the main version with
that point at its root, so plain libraries load the point by revision, ``from_pretrained(repo,
revision="t_000010")`` or ``timm.create_model("hf-hub:org/path@t_000010")``.

Each branch starts at the main push's commit and receives the same files with another root model and card;
huggingface_hub sends only what differs from the branch (the root's weights and config, the card), so a
branch costs one small commit, and a re-run of the push makes none for an unchanged branch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.hub.ownership import plan_changes
from hf_llpf.hub.upload import commit_in_batches
from hf_llpf.hub_client.repo_ids import check_branch_name

logger = logging.getLogger(__name__)


def branch_name(point_name: str) -> str:
    """The branch of a point: its folder's name (``points/t_000010`` -> ``t_000010``)."""
    return check_branch_name(point_name.rstrip("/").rsplit("/", 1)[-1], field="point branch")


def push_point_branches(
    api: Any,
    *,
    repo_id: str,
    base_commit: str,
    points: dict[int, str],
    files_for: Callable[[int], dict[str, bytes | FsPath]],
    message: str,
    files_per_commit: int,
    opts: dict | None = None,
) -> dict[str, str]:
    """Create or update one branch per point, each holding ``files_for(index)``.

    Args:
        api: the ``HfApi``.
        repo_id: the repo.
        base_commit: where a new branch starts (the main push's commit).
        points: index -> point folder name, for every published point.
        files_for: the files of the version whose root is that point.
        message: the commit message.
        files_per_commit: as in :func:`~hf_llpf.hub.upload.commit_in_batches`.
        opts: ``delete_other`` / ``delete_patterns`` as for the main push (see
            :func:`~hf_llpf.hub.ownership.plan_changes`).

    Raises:
        HubConflictError: a branch holds a file no tagged push published that this push would delete.

    Returns:
        dict: branch name -> its head commit.
    """
    refs = api.list_repo_refs(repo_id)
    heads = {b.name: b.target_commit for b in refs.branches}
    out = {}
    for j, (i, name) in enumerate(sorted(points.items()), start=1):
        branch = branch_name(name)
        if branch not in heads:
            api.create_branch(repo_id, branch=branch, revision=base_commit, exist_ok=True)
            heads[branch] = base_commit
        files = files_for(i)
        check = {"include": None, "exclude": None, **(opts or {})}
        changes = plan_changes(api, repo_id=repo_id, revision=branch, refs=refs, files=files, opts=check,
                               point_branch=True)  # fmt: skip
        done = commit_in_batches(
            api,
            repo_id=repo_id,
            files=files,
            revision=branch,
            message=f"{message}: point {i} at the root",
            deletions=changes.deletions,
            files_per_commit=files_per_commit,
            head=heads[branch],
        )
        out[branch] = done["commit"]
        n = done["commits"]
        what = f"{n} commit{'s' if n > 1 else ''}" if n else "unchanged, no commit"
        logger.info(f"{repo_id}: point branch {j}/{len(points)} {branch}: {what}")  # progress (-q: none)
    return out


__all__ = ["branch_name", "push_point_branches"]
