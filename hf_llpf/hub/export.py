"""Export one point of a path as a standalone model in the endpoints' format, with its own model card.

The folder is written next to its destination and renamed into place, so it appears whole or not at
all; pickled weight files are never copied and a link that leaves the path's folder is refused
(:func:`hf_llpf.files.safe_paths.walk_files`).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path as FsPath

from hf_llpf import __version__
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.files.partial import cleaned_on_failure
from hf_llpf.files.safe_paths import walk_files
from hf_llpf.hub.files import check_run_dir
from hf_llpf.hub.load import UNSAFE_WEIGHTS, HubPath, load_path
from hf_llpf.hub.point_card import build_point_card
from hf_llpf.hub.points import choose_point
from hf_llpf.hub.public import UNKNOWN_LICENSE, resolve_license
from hf_llpf.hub.push import upload
from hf_llpf.hub_client.access import check_online, hub_api, hub_errors, resolve_token
from hf_llpf.hub_client.repo_ids import parse_repo_spec
from hf_llpf.models.remote_code import removed_note, strip_files
from hf_llpf.run import RunPath
from hf_llpf.run.assets import ASSET_KINDS, TOKENIZER, read_assets, with_assets
from hf_llpf.run.layout import README
from hf_llpf.run.lock import holds_run_directory

logger = logging.getLogger(__name__)


def _open_source(source: str | os.PathLike | RunPath, endpoint: str | None) -> tuple[RunPath, str]:
    """The path to export from and how its card names it (a folder, or ``org/repo@commit``)."""
    # A local run directory is named by its folder name: the card never holds a path of this machine.
    if isinstance(source, RunPath):
        path, label = source, source.root.resolve().name
    elif FsPath(source).is_dir():
        path, label = RunPath(check_run_dir(source)), FsPath(source).resolve().name
    else:
        path, label = load_path(str(source), endpoint=endpoint), str(source)
    if isinstance(path, HubPath):
        label = f"{path.repo_id}@{path.commit}"  # pinned: the card names the exact version
    return path, label


def _write_point(
    path: RunPath, i: int, out: FsPath, *, label: str, repo_id: str | None, reason: str, keep_auto_map: bool
) -> None:
    """Copy point ``i``'s safe files and its card into ``out``, which appears whole or not at all."""
    folder = path.point_dir(i)
    own = {
        p.relative_to(folder).as_posix(): p
        for p in walk_files(folder, allowed_root=path._fence())
        if p.suffix not in UNSAFE_WEIGHTS and p.name != README
    }
    if not any(p.suffix == ".safetensors" for p in own.values()):
        raise RunDirectoryError(f"point {i} ({folder}) has no safetensors weights")
    # A run directory keeps the tokenizer / processor / generation files once (assets/); a published point holds them.
    files: dict = with_assets(own, read_assets(path.root, fence=path._fence()))
    if not keep_auto_map:  # a point written before they were removed (or with keep_auto_map) still holds them
        files, removed = strip_files(files)
        if removed:
            logger.warning(removed_note(removed, what=f"the exported point {i}"))
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with cleaned_on_failure(tmp):  # a failed write (a full disk) leaves neither the folder nor its temporary
        tmp.mkdir(parents=True)
        _fill(tmp, files, path, i, label=label, repo_id=repo_id, reason=reason)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


def _fill(tmp: FsPath, files: dict, path: RunPath, i: int, *, label: str, repo_id: str | None, reason: str) -> None:
    """Copy the point's files into ``tmp`` and write its card."""
    for rel, f in files.items():
        dest = tmp / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if isinstance(f, bytes):
                dest.write_bytes(f)
            else:
                shutil.copyfile(f, dest)
        except OSError as err:  # a full or read-only disk is the destination's: name it, not the source
            if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise OSError(err.errno, err.strerror, str(dest)) from err
            raise
    try:  # the endpoints' license when they agree (recorded or in a local endpoint's card), else "unknown"
        license, _ = resolve_license(path.endpoints)
    except ConfigError:
        license = UNKNOWN_LICENSE
    card = build_point_card(
        path.root,
        path.metrics[i],
        index=i,
        count=len(path),
        source=label,
        repo_id=repo_id,
        reason=reason,
        license=license,
        tokenizer=any(ASSET_KINDS.get(rel) == TOKENIZER for rel in files),
    )
    (tmp / README).write_text(str(card))


@holds_run_directory("source", exclusive=False, action="export")
def export_point(
    source: str | os.PathLike | RunPath,
    *,
    point: str | int = "mid",
    out_dir: str | os.PathLike,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    keep_auto_map: bool = False,
) -> dict:
    """Write one point of a path as a standalone model (the endpoints' format) with its own model card.

    Args:
        source: a run directory, a published path ``org/repo[@revision]``, or a loaded :class:`RunPath`.
        point: which point (see :func:`~hf_llpf.hub.points.choose_point`): an index, ``tick:N``, ``mid`` (the
            middle by arc length) or ``best`` (the lowest train loss among the points with position in
            [0.25, 0.75] by arc length).
        out_dir: the folder to write (must be empty or absent).
        push_to_hub: also publish the folder as this model repo (one commit, on ``main``).
        private: create the ``push_to_hub`` repo private.
        token: a write token for ``push_to_hub`` (see :func:`~hf_llpf.hub.push_path`).
        endpoint: the Hub URL for reading a published ``source`` and for ``push_to_hub``.
        keep_auto_map: keep ``auto_map`` / ``custom_pipelines`` (pointers to code in other repos) in the exported
            configs; by default they are removed and one log line says so (:mod:`hf_llpf.models.remote_code`).

    Returns:
        dict: ``index``, ``tick``, ``point`` (folder in the path), ``reason`` (why that point), ``out_dir``,
        ``files``, and ``commit`` / ``repo_id`` when pushed.

    Raises:
        RunDirectoryError: ``out_dir`` is not empty, ``source`` is not a run directory, or a name in it leaves it.
        UnknownNameError: ``point`` names no point. ConfigError, OfflineError, HubAuthError: see push_path.
    """
    if push_to_hub is not None:
        push_to_hub, _ = parse_repo_spec(push_to_hub, field="push_to_hub", allow_revision=False)
    out = FsPath(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirectoryError(f"out_dir={str(out)!r} already exists and is not empty; choose a new folder")
    if push_to_hub is not None:
        check_online("push an exported point to the Hub")
        token = resolve_token(token)
    path, label = _open_source(source, endpoint)
    i, reason = choose_point(path, point)
    _write_point(path, i, out, label=label, repo_id=push_to_hub, reason=reason, keep_auto_map=keep_auto_map)
    row = path.metrics[i]
    result = {"index": i, "tick": row.get("tick"), "point": row.get("point"), "out_dir": str(out), "reason": reason}
    result["files"] = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    if push_to_hub is not None:
        message = f"hf_llpf {__version__}: export point {i} (tick {row.get('tick')}) of {label}"
        commit = _upload_export(
            out, repo_id=push_to_hub, private=private, token=token, endpoint=endpoint, message=message
        )
        result.update(repo_id=push_to_hub, commit=commit)
    return result


def _upload_export(
    out: FsPath, *, repo_id: str, private: bool, token: str | None, endpoint: str | None, message: str
) -> str:
    """Publish the exported folder ``out`` as the model repo ``repo_id`` in one commit on ``main`` (the repo
    created, ``private`` when asked, if missing); returns the commit's sha."""
    api = hub_api(endpoint, token)
    with hub_errors(api, repo_id=repo_id):
        commit, _, _ = upload(api, repo_id=repo_id, folder=out, revision="main", private=private, message=message)
    return commit
