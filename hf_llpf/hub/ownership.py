"""Which files of a Hub repo a push may delete or replace: those an earlier push of hf_llpf published, and no other.

A repo a path is pushed into may hold files of its own (an adapter, ONNX weights, a plot, the owner's
``config.json``). A push replaces the repo's points, plots and weights as a whole (:data:`PRUNE_PATTERNS`), and
writes its root model and card; before anything is sent it checks every remote file it would delete or replace:

- **the tool's own** if the same file (same path, same git blob) is in a commit tagged ``llpf-<hash>``, the tag
  every completed push makes. The tags are read from the Hub (``list_repo_refs`` and one tree listing per tag
  until every file in question is found), so nothing is kept locally and nothing is downloaded;
- **unchanged** if the push uploads the same content to that path (nothing is replaced);
- **another's** otherwise: the push is refused (:class:`~hf_llpf.errors.HubConflictError`, nothing uploaded) with
  the list, unless the user allowed it: ``delete_other`` (``--delete-other``) for all of them, or
  ``delete_patterns`` (``--delete-patterns GLOB``, huggingface_hub's own option) for the files matching it. The
  files matching ``delete_patterns`` that the push does not publish are deleted too, as ``upload_folder`` does.

A push that was never tagged (a pull request, or a push made with ``--tag NAME``) leaves no ``llpf-`` tag: files
only it published count as another's until a tagged push publishes them too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from hf_llpf.errors import HubConflictError
from hf_llpf.hub.upload import stale_files

TAG_PREFIX = "llpf-"
_HUB_FILES = (".gitattributes",)  # made by the Hub with the repo; never published nor deleted by a push
_SHOWN = 30  # files named in a refusal before "... and N more"


@dataclass
class Changes:
    """What a push changes among the files already on the branch.

    Attributes:
        deletions: remote files the push deletes (every one is named in the push's output).
        replaced_other: files of another's the push replaces because the user allowed it.
        deleted_other: files of another's among ``deletions``.
    """

    deletions: list[str] = field(default_factory=list)
    replaced_other: list[str] = field(default_factory=list)
    deleted_other: list[str] = field(default_factory=list)


def remote_tree(api: Any, repo_id: str, revision: str) -> dict[str, Any]:
    """Path -> ``RepoFile`` of every file at ``revision`` (the Hub's own ``.gitattributes`` left out)."""
    from huggingface_hub.hf_api import RepoFile

    entries = api.list_repo_tree(repo_id, revision=revision, recursive=True)
    return {e.path: e for e in entries if isinstance(e, RepoFile) and e.path not in _HUB_FILES}


def _published_before(
    api: Any, repo_id: str, refs: Any, wanted: set[tuple[str, str]], *, any_path: bool = False
) -> set[tuple[str, str]]:
    """The ``(path, blob id)`` pairs of ``wanted`` found in a commit tagged ``llpf-…`` (an earlier push's); with
    ``any_path``, the pairs whose blob is there at any path (a point branch's root holds a point's files)."""
    found: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for tag in sorted(refs.tags if refs else [], key=lambda t: t.name):
        if not tag.name.startswith(TAG_PREFIX) or tag.target_commit in seen or found >= wanted:
            continue
        seen.add(tag.target_commit)
        tree = remote_tree(api, repo_id, tag.target_commit)
        if any_path:
            blobs = {f.blob_id for f in tree.values()}
            found |= {(p, b) for p, b in wanted if b in blobs}
        else:
            found |= {(p, f.blob_id) for p, f in tree.items()} & wanted
    return found


def _hash_file(value: bytes | FsPath, algo: str, prefix: bytes = b"") -> str:
    digest = hashlib.new(algo, prefix)
    if isinstance(value, bytes):
        digest.update(value)
        return digest.hexdigest()
    with open(value, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def same_content(remote: Any, value: bytes | FsPath) -> bool:
    """Whether the local content ``value`` is the remote file's (sha256 of an LFS file, else its git blob id)."""
    size = len(value) if isinstance(value, bytes) else FsPath(value).stat().st_size
    if getattr(remote, "lfs", None) is not None:
        return remote.lfs.sha256 == _hash_file(value, "sha256")
    return remote.blob_id == _hash_file(value, "sha1", b"blob %d\0" % size)


def _matching(names: list[str], patterns: list[str] | None) -> set[str]:
    from huggingface_hub.utils import filter_repo_objects

    return set(filter_repo_objects(names, allow_patterns=patterns)) if patterns else set()


def plan_changes(
    api: Any,
    *,
    repo_id: str,
    revision: str | None,
    refs: Any,
    files: dict[str, bytes | FsPath],
    opts: dict,
    point_branch: bool = False,
    target: str | None = None,
) -> Changes:
    """Check what the push of ``files`` would delete or replace on ``revision`` (the branch, or where a new
    branch starts; None: a new repo) and return it.

    ``opts``: ``include``/``exclude`` (the push's patterns), ``delete_other`` (bool), ``delete_patterns``.
    ``point_branch``: a branch of ``push --point-revisions``, made by the tool from a tagged commit: its root
    model and card are its own (rewritten by every push), and a file it deletes is another's only when its
    content is in no tagged commit at all. ``target``: the branch pushed to, when it is a new one (for the message).

    Raises:
        HubConflictError: the push would delete or replace files no earlier push published, without permission;
            the message lists them (deleted and replaced) and the options that allow it.
    """
    if revision is None:
        return Changes()
    remote = remote_tree(api, repo_id, revision)
    names = sorted(remote)
    user = _matching(names, opts.get("delete_patterns"))
    deletions = sorted(set(stale_files(names, set(files), include=opts["include"], exclude=opts["exclude"])) | (
        user - set(files)))  # fmt: skip
    # The files both here and there: the tool's own are replaced freely, so only another's are hashed (a push of
    # the same content to that path replaces nothing).
    common = [] if point_branch else sorted(set(files) & set(remote))
    asked = {(p, remote[p].blob_id) for p in (*deletions, *common)}
    own = {p for p, _ in _published_before(api, repo_id, refs, asked, any_path=point_branch)}
    other_deleted = [p for p in deletions if p not in own]
    other_replaced = [p for p in common if p not in own and not same_content(remote[p], files[p])]
    refused = [p for p in (*other_deleted, *other_replaced) if not opts.get("delete_other") and p not in user]
    if refused:
        where = revision if target in (None, revision) else f"{target} (a new branch from {revision})"
        raise HubConflictError(_refusal(repo_id, where, other_deleted, other_replaced, refused))
    return Changes(deletions=deletions, replaced_other=other_replaced, deleted_other=other_deleted)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _refusal(repo_id: str, revision: str, deleted: list[str], replaced: list[str], refused: list[str]) -> str:
    parts = []
    if deleted_refused := [p for p in deleted if p in refused]:
        parts.append(f"delete {len(deleted_refused)}: {_listing(deleted_refused)}")
    if replaced_refused := [p for p in replaced if p in refused]:
        parts.append(f"replace {len(replaced_refused)}: {_listing(replaced_refused)}")
    return (
        f"push to {repo_id}@{revision} refused, nothing was uploaded: it would {'; and '.join(parts)} — files "
        "that no earlier push of hf_llpf published (none is in a commit tagged llpf-…). To keep them, name them "
        "with --exclude GLOB (a push neither publishes nor deletes excluded files; keeping the root's config.json "
        "and model.safetensors also needs --root-point none), or push to another repo; to delete "
        "or replace them, pass --delete-other (all of them) or --delete-patterns GLOB (those matching)"
    )


__all__ = ["Changes", "TAG_PREFIX", "plan_changes", "remote_tree", "same_content"]
