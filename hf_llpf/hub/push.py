"""Publish a run directory as a Hub model repo: one commit made with ``upload_folder``, then one tag.

The commit is tagged ``llpf-<content hash>`` so a path version can be cited and loaded exactly (see
``docs/hub.md``). Pushing unchanged content again makes no commit and no tag; a push that fails midway
leaves the run directory as it was (the new card is written to ``RUN_DIR/README.md`` only after success).
"""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any

from hf_llpf import __version__
from hf_llpf.hub.access import check_online, hub_api, hub_errors, resolve_token
from hf_llpf.hub.card import build_model_card
from hf_llpf.hub.files import IGNORE_PATTERNS, check_run_dir, content_hash, publishable_files, staged_folder
from hf_llpf.hub.spec import check_branch_name, parse_repo_spec
from hf_llpf.run import POINTS_DIR, atomic_write_text
from hf_llpf.run.layout import README

TAG_PREFIX = "llpf-"
# Remote files a push replaces as a whole: a re-run with fewer points or plots leaves no stale ones.
PRUNE_PATTERNS = (f"{POINTS_DIR}/*", "plots/*")


def _refs(api: Any, repo_id: str):
    """The repo's branches and tags, or None when the repo does not exist (yet)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return None


def upload(
    api: Any,
    *,
    repo_id: str,
    folder: FsPath,
    revision: str,
    private: bool,
    message: str,
    delete_patterns: tuple[str, ...] = (),
) -> tuple[str, bool, Any]:
    """Create the repo and branch if needed, and publish ``folder`` on the branch in one commit.

    Args:
        api: the ``HfApi`` to use.
        repo_id, revision: the repo and branch (a missing branch starts at ``main``'s head).
        folder: the folder to publish, as it should appear in the repo.
        private: create the repo private (an existing repo keeps its visibility).
        message: the commit message.
        delete_patterns: remote files matching these and not in ``folder`` are deleted in the same commit.

    Returns:
        tuple: ``(commit sha, whether a commit was made, the refs before the push or None)``. Unchanged
        files are not sent, and when nothing changed ``upload_folder`` makes no commit and returns the
        branch head.
    """
    api.create_repo(repo_id, private=private, exist_ok=True)
    refs = _refs(api, repo_id)
    branches = {b.name: b.target_commit for b in (refs.branches if refs else [])}
    if revision not in branches:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        branches[revision] = branches.get("main")  # a new branch starts at main's head
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        revision=revision,
        commit_message=message,
        ignore_patterns=list(IGNORE_PATTERNS),
        delete_patterns=list(delete_patterns) or None,
    )
    return info.oid, info.oid != branches.get(revision), refs


def _push_tagged(api: Any, *, repo_id: str, files: dict, revision: str, private: bool, tag: str) -> dict:
    # Idempotence: if this exact content is already the branch head under its tag, there is nothing to do.
    refs = _refs(api, repo_id)
    if refs is not None:
        tags = {t.name: t.target_commit for t in refs.tags}
        heads = {b.name: b.target_commit for b in refs.branches}
        if tag in tags and heads.get(revision) == tags[tag]:
            return {"commit": tags[tag], "tag": tag, "created_commit": False, "created_tag": False}
    with staged_folder(files) as folder:
        commit, created, refs = upload(
            api,
            repo_id=repo_id,
            folder=folder,
            revision=revision,
            private=private,
            message=f"hf_llpf {__version__}: publish path ({tag})",
            delete_patterns=PRUNE_PATTERNS,
        )
    created_tag = tag not in {t.name for t in (refs.tags if refs else [])}
    if created_tag:
        # exist_ok covers a concurrent push of the same content; a tag, once made, never moves (a citation).
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"LLPF path {tag}", exist_ok=True)
    return {"commit": commit, "tag": tag, "created_commit": created, "created_tag": created_tag}


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

    The model card is rebuilt for ``repo_id`` and uploaded with the other files (never ``checkpoint/``,
    the run's marker and lock files or temporary files); it is written to ``RUN_DIR/README.md`` only after
    the push succeeded, so a push that fails midway changes nothing local and can simply be run again.
    Content already published under its tag at the branch head is not pushed again (no new commit, no
    new tag).

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
        ConfigError: invalid ``repo_id`` or ``revision``. RunDirectoryError: not a run directory, or a link
            in it leaves it. OfflineError: ``HF_HUB_OFFLINE=1`` or the Hub cannot be reached.
            HubAuthError: no token, or the token was refused.
    """
    repo_id, _ = parse_repo_spec(repo_id, allow_revision=False)
    if revision is not None:
        check_branch_name(revision, field="revision")
    root = check_run_dir(run_dir)
    check_online("push a path to the Hub")
    token = resolve_token(token)
    revision = revision or "main"

    card = str(build_model_card(root, repo_id=repo_id)).encode()
    files: dict[str, bytes | FsPath] = {rel: root / rel for rel in publishable_files(root)}
    files[README] = card
    tag = tag or TAG_PREFIX + content_hash(files)[:12]
    api = hub_api(endpoint, token)
    with hub_errors(api, repo_id=repo_id):
        result = _push_tagged(api, repo_id=repo_id, files=files, revision=revision, private=private, tag=tag)
    if not (root / README).is_file() or (root / README).read_bytes() != card:
        atomic_write_text(root / README, card.decode())
    base = (endpoint or api.endpoint).rstrip("/")
    return {**result, "repo_id": repo_id, "revision": revision, "files": len(files), "url": f"{base}/{repo_id}"}
