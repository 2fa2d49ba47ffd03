"""Publish a run directory as a Hub model repo: the files in batches of commits, a model at the root, one tag.

What is published (:func:`published_files`): the run directory's files (never its resume checkpoint), the
chosen points (all, every N-th, or a selection; both ends and every stage boundary always), a complete
model of the endpoints' library at the repo root (by default the point at the middle of the path by arc
length), ``endpoints.json`` naming local endpoints by folder name and hash, and the card; no file holds
a path of this machine. The files go up in batches (:mod:`hf_llpf.hub.upload`), resumable: a re-run
after a failure uploads only what is missing. The last commit is tagged ``llpf-<content hash>`` so a path
version can be cited and loaded exactly (see ``docs/hub.md``); pushing unchanged content again makes no
commit and no tag, and the new card is written to ``RUN_DIR/README.md`` only after success. Files already in
the repo that no earlier push published are never deleted nor replaced without ``delete_other`` or
``delete_patterns`` (:mod:`hf_llpf.hub.ownership`), and the pointers to code in other repos (``auto_map``) are
removed from what is published unless ``keep_auto_map`` (:mod:`hf_llpf.models.remote_code`).

:func:`push_path` takes the options of ``hf-llpf push`` (docs/cli.md#push) and returns ``repo_id``, ``revision``,
``commit`` (sha), ``tag``, ``created_commit``, ``created_tag``, ``commits`` (how many were made), ``files`` (number
published), ``points`` (indices published), ``root`` (index and why), ``license``, ``pr_url``, ``pr_revision``
(``refs/pr/N`` of the pull request), ``url``, ``deleted`` (the repo files deleted), ``deleted_other`` and
``replaced_other`` (files no earlier push published, deleted or replaced as allowed), ``remote_code_removed`` (file
-> keys), and ``point_revisions`` (branch -> commit) when asked. It raises ConfigError (an invalid option),
RunDirectoryError (see :func:`published_files`), OfflineError (``HF_HUB_OFFLINE=1`` or the Hub cannot be reached),
HubAuthError (no token, or the token was refused) and HubConflictError (the push would delete or replace files no
earlier push published, listed, without ``delete_other``/``delete_patterns``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path as FsPath
from typing import Any

from hf_llpf import __version__
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.files.safe_paths import walk_files
from hf_llpf.files.textfiles import read_text
from hf_llpf.hub.card import Publication, build_model_card
from hf_llpf.hub.files import check_run_dir, content_hash, publishable_files
from hf_llpf.hub.load import UNSAFE_WEIGHTS
from hf_llpf.hub.ownership import TAG_PREFIX, plan_changes
from hf_llpf.hub.points import choose_point, select_points
from hf_llpf.hub.public import (
    check_no_machine_paths,
    local_names,
    machine_paths,
    public_endpoints,
    public_files,
    resolve_license,
)
from hf_llpf.hub.revisions import branch_name, push_point_branches
from hf_llpf.hub.upload import FILES_PER_COMMIT, PRUNE_PATTERNS, commit_in_batches
from hf_llpf.hub_client.access import check_online, hub_api, hub_errors, resolve_token
from hf_llpf.hub_client.repo_ids import check_branch_name, parse_repo_spec
from hf_llpf.models.remote_code import removed_note, strip_files
from hf_llpf.reporting.logging import folded
from hf_llpf.run import METRICS_JSON, RunPath, atomic_write_text, read_metrics
from hf_llpf.run.assets import read_assets, with_assets
from hf_llpf.run.layout import ASSETS_DIR, ENDPOINTS_JSON, README
from hf_llpf.run.lock import holds_run_directory

logger = logging.getLogger(__name__)
METRICS_CSV = "path_metrics.csv"
__all__ = ["PRUNE_PATTERNS", "TAG_PREFIX", "published_files", "push_path", "upload"]


def _refs(api: Any, repo_id: str):
    """The repo's branches and tags, or None when the repo does not exist (yet)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return api.list_repo_refs(repo_id)
    except RepositoryNotFoundError:
        return None


def upload(api: Any, *, repo_id: str, folder: FsPath, revision: str, private: bool, message: str) -> tuple:
    """Create the repo and branch if needed and publish ``folder`` on the branch in one commit (an export).

    Returns:
        tuple: ``(commit sha, whether a commit was made, the refs before the push or None)``.
    """
    api.create_repo(repo_id, private=private, exist_ok=True)
    refs = _refs(api, repo_id)
    branches = {b.name: b.target_commit for b in (refs.branches if refs else [])}
    if revision not in branches:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        branches[revision] = branches.get("main")  # a new branch starts at main's head
    info = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message)
    return info.oid, info.oid != branches.get(revision), refs


def _filtered_metrics(root: FsPath, keep: set[str]) -> dict[str, bytes]:
    """``path_metrics.json``/``.csv`` holding only the published points' rows (the summary is kept whole)."""
    data = read_metrics(root)
    data["points"] = [row for row in data.get("points", []) if row.get("point") in keep]
    out = {METRICS_JSON: (json.dumps(data, indent=2) + "\n").encode()}
    if (root / METRICS_CSV).is_file():
        reader = csv.DictReader(io.StringIO(read_text(root / METRICS_CSV)))
        buf = io.StringIO()
        try:
            writer = csv.DictWriter(buf, fieldnames=reader.fieldnames or [], lineterminator="\n")
            writer.writeheader()
            writer.writerows(row for row in reader if row.get("point") in keep)
        except (csv.Error, ValueError) as err:
            raise RunDirectoryError(f"{root / METRICS_CSV}: not a readable CSV table ({err})") from None
        out[METRICS_CSV] = buf.getvalue().encode()
    return out


def _root_files(path: RunPath, i: int, assets: dict[str, FsPath]) -> dict[str, FsPath]:
    """The files of point ``i`` as they appear at the repo root: its weights and config, and the run's companion
    files (tokenizer, processor, generation config) where the point has none of that name."""
    folder = path.point_dir(i)
    own = {
        f.relative_to(folder).as_posix(): f
        for f in walk_files(folder, allowed_root=path.root)
        if f.suffix not in UNSAFE_WEIGHTS and f.name != README
    }
    return with_assets(own, assets)


def _point_assets(files: dict, names: set[str], assets: dict[str, FsPath]) -> None:
    """Add the run's companion files to every published point folder that has no file of that name."""
    for name in sorted(names):
        for rel, f in assets.items():
            files.setdefault(f"{name}/{rel}", f)


def _patterns(value, field: str) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) and p for p in items):
        raise ConfigError(f"{field}={value!r}: must be a glob pattern or a list of them (e.g. 'plots/*')")
    return list(items)


@holds_run_directory("run_dir", exclusive=False, action="push")
def published_files(
    run_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    root_point: str | int | None = "mid",
    every: int | None = None,
    points: str | None = None,
    include=None,
    exclude=None,
    license: str | None = None,
    api: Any = None,
    point_revisions: bool = False,
    root_reason: str | None = None,
    license_source: str | None = None,
    keep_auto_map: bool = False,
    branch: str | None = None,
) -> tuple[dict[str, bytes | FsPath], Publication]:
    """What :func:`push_path` would publish: repo path -> content (bytes) or file, and the card's :class:`Publication`.

    Args: see :func:`push_path` (``api`` reads the Hub endpoints' cards for their license; None: offline).
        ``root_reason`` replaces the reason given for the root's point and ``license_source`` (with ``license``)
        the license resolution: both for the point branches, which repeat the main push's choices; ``branch`` names
        the point branch the files are for (its card's load lines name that revision). Unless
        ``keep_auto_map``, the pointers to code in other repos are removed from every published config
        (:mod:`hf_llpf.models.remote_code`) and listed in ``Publication.remote_code_removed``.

    Raises:
        ConfigError: a bad option, or the endpoints' licenses differ and none was given. RunDirectoryError: not
            a run directory, a link leaving it, a point file colliding with a run file at the root, or a published
            file that would hold a path of this machine. UnknownNameError: a point name that names no point.
    """
    root = check_run_dir(run_dir)
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    path = RunPath(root)
    pub = _choose_points(path, every=every, points=points, root_point=root_point, root_reason=root_reason)
    pub.revisions, pub.branch = point_revisions, branch
    files = _run_files(path, pub)
    if include is not None or exclude is not None:
        from huggingface_hub.utils import filter_repo_objects

        files = {
            rel: files[rel]
            for rel in filter_repo_objects(list(files), allow_patterns=include, ignore_patterns=exclude)
        }
    if license_source is not None:
        pub.license, pub.license_source = str(license), license_source
    else:
        pub.license, pub.license_source = resolve_license(path.endpoints, license=license, api=api)
    if not keep_auto_map:  # a run written before they were removed, or with keep_auto_map, still holds them
        files, pub.remote_code_removed = strip_files(files)
    files[README] = str(build_model_card(root, repo_id=repo_id, publication=pub)).encode()  # always published
    names = local_names(path.endpoints)
    files = public_files(files, names)
    check_no_machine_paths(files, machine_paths(root, *names))
    return files, pub


def _choose_points(
    path: RunPath, *, every: int | None, points: str | None, root_point: str | int | None, root_reason: str | None
) -> Publication:
    """The points to publish (``every``, ``points``) and the root's point (``root_point``, its reason replaced by
    ``root_reason`` when given), as a :class:`Publication` whose ``published`` always holds the root's point."""
    chosen = select_points(path, every=every, points=points)
    pub = Publication(published=chosen, selection=f"every {every}th point" if every else f"points {points!r}")
    if root_point is not None and str(root_point).lower() != "none":
        pub.root = choose_point(path, root_point)
        pub.root = (pub.root[0], root_reason or pub.root[1])
        pub.published = sorted(set(chosen) | {pub.root[0]})  # the root's point is always published too
    return pub


def _run_files(path: RunPath, pub: Publication) -> dict[str, bytes | FsPath]:
    """The run's files as published, before filtering and the card: the run directory's own files, the published
    points (each with the run's companion files), the metrics of those points only, the root's point at the repo
    root and ``endpoints.json`` without local paths.

    Raises:
        RunDirectoryError: a file of the root's point would replace the run file of that name at the repo root.
    """
    root = path.root
    keep = {path.point_name(i) for i in pub.published}
    dropped = {path.point_name(i) for i in range(len(path))} - keep
    # assets/ is stored once in the run directory; its files are published inside every point and at the root.
    files: dict[str, bytes | FsPath] = {
        rel: root / rel
        for rel in publishable_files(root)
        if not any(rel.startswith(d + "/") for d in (*dropped, ASSETS_DIR))
    }
    assets = read_assets(root)
    _point_assets(files, keep, assets)
    if dropped:
        files.update(_filtered_metrics(root, keep))
    if pub.root is not None:
        for rel, f in _root_files(path, pub.root[0], assets).items():
            if rel in files:
                raise RunDirectoryError(f"point file {rel!r} would replace the run file of that name at the repo root")
            files[rel] = f
    if (root / ENDPOINTS_JSON).is_file():
        files[ENDPOINTS_JSON] = (json.dumps(public_endpoints(path.endpoints), indent=2) + "\n").encode()
    return files


def _push(api: Any, *, repo_id: str, files: dict, revision: str, private: bool, tag: str, opts: dict) -> dict:
    # Idempotence: if this exact content is already the branch head under its tag, there is nothing to do.
    refs = _refs(api, repo_id)
    branches = {b.name: b.target_commit for b in (refs.branches if refs else [])}
    if refs is not None and not opts["create_pr"]:
        tags = {t.name: t.target_commit for t in refs.tags}
        if tag in tags and branches.get(revision) == tags[tag]:
            return {"commit": tags[tag], "tag": tag, "created_commit": False, "created_tag": False, "commits": 0}
    # Before anything is sent: what the push deletes or replaces on the branch (or on main, where a new branch
    # starts); files no earlier push published are refused unless the user allowed it (hf_llpf.hub.ownership).
    base = revision if revision in branches else ("main" if "main" in branches else None)
    changes = plan_changes(api, repo_id=repo_id, revision=base, refs=refs, files=files, opts=opts, target=revision)
    api.create_repo(repo_id, private=private, exist_ok=True)
    refs = _refs(api, repo_id)
    branches = {b.name: b.target_commit for b in (refs.branches if refs else [])}
    if revision not in branches:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        branches[revision] = branches.get("main")  # a new branch starts at main's head
    done = commit_in_batches(
        api,
        repo_id=repo_id,
        files=files,
        revision=revision,
        message=opts["message"] or f"hf_llpf {__version__}: publish path ({tag})",
        deletions=changes.deletions,
        create_pr=opts["create_pr"],
        files_per_commit=opts["files_per_commit"],
        head=branches.get(revision),
    )
    created_tag = False
    if not opts["create_pr"] and tag not in {t.name for t in (refs.tags if refs else [])}:
        # exist_ok covers a concurrent push of the same content; a tag, once made, never moves (a citation).
        api.create_tag(repo_id, tag=tag, revision=done["commit"], tag_message=f"LLPF path {tag}", exist_ok=True)
        created_tag = True
    return {
        "commit": done["commit"],
        "tag": None if opts["create_pr"] else tag,
        "created_commit": done["commits"] > 0,
        "created_tag": created_tag,
        "commits": done["commits"],
        "batches": done["batches"],
        "deleted": changes.deletions,
        "deleted_other": changes.deleted_other,
        "replaced_other": changes.replaced_other,
        "pr_url": done["pr_url"],
        "pr_revision": done["pr_revision"],
    }


def _point_branches(api: Any, root: FsPath, commit: str, pub: Publication, options: dict, opts: dict) -> dict:
    """``push --point-revisions``: one branch per published point, the same choices as the main push."""
    path = RunPath(root)
    names = {i: path.point_name(i) for i in pub.published}
    license = {"license": pub.license, "license_source": pub.license_source}

    def files_for(i: int) -> dict:
        branch = branch_name(names[i])
        reason = f"the point of this branch, `{branch}`"
        return published_files(root, root_point=i, root_reason=reason, branch=branch, **license, **options)[0]

    return push_point_branches(
        api,
        repo_id=options["repo_id"],
        base_commit=commit,
        points=names,
        files_for=files_for,
        message=opts["message"] or f"hf_llpf {__version__}: point branch",
        files_per_commit=opts["files_per_commit"],
        opts={"delete_other": opts["delete_other"], "delete_patterns": opts["delete_patterns"]},
    )


def _check_push_options(
    repo_id: str, revision: str | None, files_per_commit: Any, commit_message: Any, delete_patterns: Any
) -> tuple[str, list[str] | None]:
    """Check :func:`push_path`'s options that need neither the run directory nor the Hub; returns the repo id and
    ``delete_patterns`` as a list (None: not given).

    Raises:
        ConfigError: an invalid ``repo_id``, ``revision``, ``files_per_commit``, ``commit_message`` or
            ``delete_patterns``.
    """
    repo_id, _ = parse_repo_spec(repo_id, allow_revision=False)
    if revision is not None:
        check_branch_name(revision, field="revision")
    if isinstance(files_per_commit, bool) or not isinstance(files_per_commit, int) or files_per_commit < 1:
        raise ConfigError(f"files_per_commit={files_per_commit!r}: must be an integer >= 1 (the Hub advises < 100)")
    if commit_message is not None and (not isinstance(commit_message, str) or not commit_message.strip()):
        raise ConfigError(f"commit_message={commit_message!r}: must be a non-empty string")
    return repo_id, _patterns(delete_patterns, "delete_patterns")


def _hub_for_push(endpoint: str | None, token: str | None) -> Any:
    """The ``HfApi`` to push with; refused offline or without a token, before anything is sent.

    Raises:
        OfflineError: ``HF_HUB_OFFLINE=1``. HubAuthError: no token given, in ``HF_TOKEN`` or saved.
    """
    check_online("push a path to the Hub")
    return hub_api(endpoint, resolve_token(token))


def _publication(
    root: FsPath, tag: str | None, *, root_point: str | int | None, license: str | None, api: Any, options: dict
) -> tuple[dict[str, bytes | FsPath], Publication, str]:
    """What the push publishes (:func:`published_files`), with a warning when pointers to code in other repos were
    removed; returns ``(files, Publication, tag)``, the tag by default ``llpf-`` and 12 hex of the content hash."""
    files, pub = published_files(root, root_point=root_point, license=license, api=api, **options)
    if pub.remote_code_removed:
        logger.warning(removed_note(pub.remote_code_removed, what="the published files"))
    return files, pub, tag or TAG_PREFIX + content_hash(files)[:12]


def _publish(
    api: Any,
    root: FsPath,
    files: dict,
    pub: Publication,
    *,
    endpoint: str | None,
    push: dict,
    options: dict,
    opts: dict,
) -> dict:
    """Push ``files`` (``push``: ``revision``, ``private``, ``tag``), then each published point's branch when
    ``options["point_revisions"]``; after success keep the card in ``RUN_DIR/README.md``. Returns
    :func:`push_path`'s result."""
    repo_id, revision = options["repo_id"], push["revision"]
    # huggingface_hub says "No files have been modified since last commit" for every commit that changes nothing
    # (each unchanged point branch): each of its messages is said once, with a count, at the end.
    with folded("huggingface_hub"), hub_errors(api, repo_id=repo_id):
        result = _push(api, repo_id=repo_id, files=files, **push, opts=opts)
        if options["point_revisions"]:
            n = result["commits"]
            made = f"{n} commit{'s' if n > 1 else ''}" if n else "unchanged, no commit"
            logger.info(f"{repo_id}@{revision}: {made}; next, {len(pub.published)} point branches")
            result["point_revisions"] = _point_branches(api, root, result["commit"], pub, options, opts)
    _save_card(root, files[README])
    base = (endpoint or api.endpoint).rstrip("/")
    return {
        **result,
        "repo_id": repo_id,
        "revision": revision,
        "files": len(files),
        "points": pub.published,
        "root": pub.root,
        "license": pub.license,
        "url": f"{base}/{repo_id}",
        "remote_code_removed": pub.remote_code_removed,
    }


def _save_card(root: FsPath, card: bytes) -> None:
    """Write the published card to ``RUN_DIR/README.md`` (after a successful push), unless it already holds it."""
    if not (root / README).is_file() or (root / README).read_bytes() != card:
        atomic_write_text(root / README, card.decode())


@holds_run_directory("run_dir", exclusive=True, action="push")
def push_path(
    run_dir: str | os.PathLike,
    *,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    tag: str | None = None,
    root_point: str | int | None = "mid",
    every: int | None = None,
    points: str | None = None,
    include: str | list[str] | None = None,
    exclude: str | list[str] | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    license: str | None = None,
    files_per_commit: int = FILES_PER_COMMIT,
    point_revisions: bool = False,
    delete_other: bool = False,
    delete_patterns: str | list[str] | None = None,
    keep_auto_map: bool = False,
) -> dict:
    """Publish a run directory as a Hub model repo, in batches of commits, then tag the last commit.

    What it publishes, deletes or replaces and when it refuses: the module docstring, docs/hub.md, docs/cli.md#push.

    Args:
        run_dir, repo_id: the run directory; the model repo ``namespace/name`` (created when missing).
        private, revision, tag: create it private; the branch (default ``main``); the tag (default ``llpf-<hash>``).
        token, endpoint: a write token (default: ``HF_TOKEN`` or ``hf auth login``'s; never written); the Hub URL.
        root_point: the point at the repo root (default ``mid``, the middle by arc length; None or ``"none"``: none).
        every, points: publish every N-th point, or a selection (``"0:10,mid,tick:40"``); ends and boundaries always.
        include, exclude: glob patterns of the repo files to publish; the card is always published.
        commit_message, create_pr: the commit message; open a pull request instead of committing (no tag is made).
        license, files_per_commit: the card's license (default: the endpoints', when they agree); files per commit.
        point_revisions: also give every published point a branch named like its folder, whose root is that point.
        delete_other, delete_patterns: let it delete or replace files no earlier push published (all; those matching).
        keep_auto_map: keep ``auto_map`` / ``custom_pipelines`` in the published configs.

    Returns:
        dict: the commit, tag, counts and choices; its keys: the module docstring.

    Raises:
        ConfigError: an invalid option. RunDirectoryError: see :func:`published_files`. OfflineError, HubAuthError:
            offline, or no (or a refused) token. HubConflictError: it would delete or replace another's files.
    """
    repo_id, delete_patterns = _check_push_options(repo_id, revision, files_per_commit, commit_message,
                                                   delete_patterns)  # fmt: skip
    root, api = check_run_dir(run_dir), _hub_for_push(endpoint, token)
    if point_revisions and create_pr:
        raise ConfigError("point_revisions=True with create_pr=True: point branches are made from a pushed branch")
    options = {"every": every, "points": points, "include": include, "exclude": exclude, "repo_id": repo_id}
    options.update(point_revisions=bool(point_revisions), keep_auto_map=bool(keep_auto_map))
    files, pub, tag = _publication(root, tag, root_point=root_point, license=license, api=api, options=options)
    opts = {"create_pr": bool(create_pr), "message": commit_message, "files_per_commit": files_per_commit,
            "include": _patterns(include, "include"), "exclude": _patterns(exclude, "exclude"),
            "delete_other": bool(delete_other), "delete_patterns": delete_patterns}  # fmt: skip
    push = {"revision": revision or "main", "private": private, "tag": tag}
    return _publish(api, root, files, pub, endpoint=endpoint, push=push, options=options, opts=opts)
