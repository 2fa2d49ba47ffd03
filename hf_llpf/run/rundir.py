"""Writing a run directory: opened with an exist policy and a lock, every file written atomically.

Every file is written through a temporary name and ``os.replace``, so a run killed at any moment leaves either
the old or the new version of each file, never half of one; leftovers of killed writes are removed when the
run directory is opened again. Non-main processes get a :class:`NullWriter`, which writes nothing.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import nn

import hf_llpf.run.state as resume_state
from hf_llpf.errors import RunDirectoryError
from hf_llpf.files.partial import cleaned_on_failure
from hf_llpf.files.safe_paths import resolve_inside
from hf_llpf.models.endpoints import Endpoint, save_model
from hf_llpf.run.layout import (
    CHECKPOINT_DIR,
    LOCK,
    MARKER,
    METRICS_CSV,
    METRICS_JSON,
    PLOTS_DIR,
    POINTS_DIR,
    point_name,
    temporary_point_name,
)
from hf_llpf.run.lock import RunLock, check_not_protected, is_run_directory, write_marker
from hf_llpf.run.ownership import check_owned, is_leftover, marker_kind, read_by_this_run, refuse_link, survey
from hf_llpf.run.reader import read_metrics
from hf_llpf.run.records import points_to_csv
from hf_llpf.run.storage import PointStorage


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``."""
    path = FsPath(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file -rw-------; the renamed file must carry the usual permissions (umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a failed write names no file: say which
            err.filename = str(path)
        raise


@functools.cache
def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which would race with other threads creating files.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode())


class RunWriter:
    """Writes one run directory (main process only) and holds its lock until :meth:`close`.

    Args:
        root: the run directory.
        exist: what to do when it already exists (:func:`check_exist`): ``"error"`` (refuse), ``"overwrite"``
            (delete its entries of the layout first; only a folder of this tool holding nothing else) or
            ``"resume"`` (keep it; never deletes).
        protected: folders and files the command reads (local endpoints, data, recipe): never deleted or written.
        lock: take the run directory's lock (not for a phase's folder inside a run directory that holds one).
        storage: the dtype and shard size points are written in (default: the endpoints' dtype, 5GB shards).
        kind: the layout written: ``"run"``, ``"comparison"`` (``compare --out``) or ``"repeats"``.
        inside: the run directory this folder is written in (a baseline's, a phase's): no folder between the two
            may be a symbolic link.

    Raises:
        RunDirectoryError: see :func:`check_exist`; also: not writable, in use by another run. Nothing is deleted.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        exist: str = "error",
        protected: Sequence[os.PathLike] = (),
        lock: bool = True,
        storage: PointStorage | None = None,
        kind: str = "run",
        inside: str | os.PathLike | None = None,
    ):
        self.root = FsPath(root)
        self.kind = kind
        self.storage = storage or PointStorage()
        check_exist(self.root, exist, protected=protected, kind=kind, inside=inside)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.root).acquire() if lock else None
        except OSError as err:
            raise RunDirectoryError(f"--out {str(self.root)!r}: cannot write there ({err.strerror})") from None
        try:
            if exist == "overwrite":  # checked again under the lock: what is deleted is what was surveyed
                _empty(self.root, check_exist(self.root, exist, protected=protected, kind=kind, inside=inside))
            _remove_temporary_files(self.root)
            write_marker(self.root, kind)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory's lock (idempotent)."""
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_json(self, name: str, obj: Any) -> None:
        """Write ``obj`` as indented JSON to ``root/name``."""
        atomic_write_text(self.root / name, json.dumps(obj, indent=2, default=_json_default) + "\n")

    def write_yaml(self, name: str, text: str) -> None:
        """Write YAML text to ``root/name``."""
        atomic_write_text(self.root / name, text)

    def write_point(self, tick: int, model: nn.Module, endpoint: Endpoint) -> str:
        """Save ``model`` as the point of ``tick`` in ``endpoint``'s format and the writer's storage dtype and shard
        size; returns its relative folder."""
        store = self.storage
        return self.write_point_with(
            tick,
            lambda tmp: save_model(model, tmp, kind=endpoint.kind, arch=endpoint.arch, dtype=store.dtype,
                                   max_shard_size=store.max_shard_size, keep_auto_map=store.keep_auto_map),
        )  # fmt: skip

    def write_point_with(self, tick: int, save: Callable[[FsPath], None]) -> str:
        """The point of ``tick`` written whole or not at all: ``save(folder)`` fills a temporary folder of this run
        directory, which then replaces the point's folder; returns its relative folder."""
        rel = point_name(tick)
        final = self.root / rel
        tmp = self.root / temporary_point_name(tick)
        if tmp.exists():  # a killed write's leftover, of this run directory's own layout
            shutil.rmtree(tmp)
        with cleaned_on_failure(tmp):  # a full disk leaves no half-written point behind
            save(tmp)
        if final.exists():  # rewritten after a resume: same content, replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        return rel

    def adopt_point(self, other: RunWriter, name: str, tick: int) -> str:
        """Move the point ``name`` of ``other`` (a phase's folder inside this run directory) to this run's point of
        ``tick``; returns the new name. Idempotent: a point already moved (a splice killed half-way) is kept."""
        source = resolve_inside(other.root, name, field="point of the phase being spliced")
        rel = point_name(tick)
        if source.exists():
            dest = self.root / rel
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(source, dest)
        return rel

    def phase_folder(self, name: str, *, resume: bool) -> RunWriter:
        """A writer of the folder ``name`` inside this run directory, for a phase whose points are spliced in
        later: emptied for a new run, kept as it is on resume; covered by this run directory's lock."""
        exist = "append" if resume else "overwrite"
        return RunWriter(self.root / name, exist=exist, lock=False, storage=self.storage, inside=self.root)

    def remove(self) -> None:
        """Delete this folder (a phase's folder, once spliced into its run directory)."""
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def write_metrics(self, points: list[dict], ticks: list[dict], summary: dict | None = None) -> None:
        """Write ``path_metrics.json`` (points, ticks, summary) and ``path_metrics.csv`` (one row per point)."""
        existing = read_metrics(self.root) if (self.root / METRICS_JSON).is_file() else {}
        merged_summary = {**existing.get("summary", {}), **(summary or {})}
        self.write_json(METRICS_JSON, {"points": points, "ticks": ticks, "summary": merged_summary})
        atomic_write_text(self.root / METRICS_CSV, points_to_csv(points))

    # Set by the orchestrator of a run: what every checkpoint carries besides the method's state (the run's
    # counters and stretches, hf_llpf.run.resume.Stretches).
    checkpoint_extra: Callable[[], dict] | None = None

    def save_checkpoint(self, state: dict) -> None:
        """Write the resume state (safetensors + JSON, see :mod:`hf_llpf.run.state`); never published."""
        if self.checkpoint_extra is not None:
            state = {**state, **self.checkpoint_extra()}
        resume_state.save(self.root / CHECKPOINT_DIR, state, write_text=atomic_write_text)


class NullWriter:
    """What a non-main process gets instead of a :class:`RunWriter`: the same methods, writing nothing.

    The main process writes the path that every process computes; the others go through the same code with
    this writer, so no caller checks which process it is on.
    """

    root = None

    def __init__(self, storage: PointStorage | None = None):
        self.storage = storage or PointStorage()  # the same rounding as the main process: see RunRecorder.point

    def write_json(self, name: str, obj: Any) -> None:
        """Nothing is written."""

    def write_yaml(self, name: str, text: str) -> None:
        """Nothing is written."""

    def write_point(self, tick: int, model: nn.Module, endpoint: Endpoint) -> str:
        """Nothing is written; the point's name is what the main process writes."""
        return point_name(tick)

    def adopt_point(self, other: Any, name: str, tick: int) -> str:
        """Nothing is moved; the point's name is what the main process gives it."""
        return point_name(tick)

    def write_metrics(self, points: list[dict], ticks: list[dict], summary: dict | None = None) -> None:
        """Nothing is written."""

    def save_checkpoint(self, state: dict) -> None:
        """Nothing is written."""

    def phase_folder(self, name: str, *, resume: bool) -> NullWriter:
        """Another writer that writes nothing."""
        return NullWriter(self.storage)

    def remove(self) -> None:
        """Nothing to delete."""

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> NullWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def check_exist(
    root: str | os.PathLike,
    exist: str,
    *,
    protected: Sequence[os.PathLike] = (),
    kind: str = "run",
    inside: str | os.PathLike | None = None,
) -> list[str]:
    """Check the exist policy against what is on disk, changing nothing; returns what an overwrite deletes.

    - Always: ``root`` is not a symbolic link (nor a folder between ``inside`` and it), and is not, does not hold
      and does not lie inside a path of ``protected``.
    - ``"error"``: ``root`` is missing or empty.
    - ``"overwrite"``: ``root`` is missing, empty, or a folder of this tool of ``kind`` (marker, or an older
      run's exact layout) holding no link and nothing the layout does not name.
    - ``"resume"``: ``root`` holds a checkpoint (and no link) and is a run directory of this tool; without a
      checkpoint, it is exactly a run directory of this tool (its marker, nothing foreign, no link) that holds
      no path yet: nothing is deleted, the run starts again over its own files.
    - ``"append"``: a phase's own folder inside a resumed run: kept as it is.

    Raises:
        RunDirectoryError: naming the folder and why; every listing names what is foreign, the links and (for an
            overwrite) what would have been deleted.
    """
    root = FsPath(root)
    if exist not in ("error", "overwrite", "resume", "append"):
        raise RunDirectoryError(f"exist={exist!r}: expected 'error', 'overwrite' or 'resume'")
    check_out_dir(root, field="--out")
    refuse_link(root, inside=FsPath(inside) if inside is not None else None)
    action = {"error": "write into", "overwrite": "overwrite", "resume": "resume into", "append": "write into"}
    occupied = root.is_dir() and any(p.name != LOCK for p in root.iterdir())
    if not (occupied and exist in ("overwrite", "resume")):  # else listed with the folder's other problems
        check_not_protected(root, [FsPath(p) for p in protected], action=action[exist])
    if exist == "resume" and not occupied:
        raise RunDirectoryError(f"cannot resume {str(root)!r}: it does not exist or is empty")
    if not occupied or exist == "append":
        return []
    if exist == "error":
        advice = "--resume to continue it or --overwrite" if kind == "run" else "--overwrite"
        raise RunDirectoryError(f"--out {str(root)!r} already exists and is not empty; pass {advice} to replace it")
    if exist == "resume" and kind == "run" and resume_state.exists(root / CHECKPOINT_DIR):
        # Only whether there is one: it is decoded once, by the resume (a damaged one is refused there).
        return _check_resumable(root, protected)
    found = check_owned(root, kind=kind, action=action[exist], protected=protected)
    if exist == "resume" and kind == "run" and marker_kind(root) != "run":
        raise RunDirectoryError(
            f"cannot resume {str(root)!r}: it has no {CHECKPOINT_DIR}/ and no {MARKER} marker; --resume without a "
            "checkpoint continues only a run directory this version of hf_llpf started. Nothing was changed: pass "
            "--overwrite to start it again, or choose another --out"
        )
    if exist == "resume" and (root / METRICS_JSON).exists():
        raise RunDirectoryError(
            f"cannot resume {str(root)!r}: it holds a path ({METRICS_JSON}) but no {CHECKPOINT_DIR}/ to continue it "
            "from; --resume never rewrites it. It is kept as it is: pass --overwrite to build it again, or choose "
            "another --out"
        )
    return found.owned if exist == "overwrite" else []


def _check_resumable(root: FsPath, protected: Sequence[os.PathLike]) -> list[str]:
    """A folder with a checkpoint: a run directory of this tool without links, holding nothing the command reads
    (files it does not name are kept: a resume deletes nothing)."""
    if not is_run_directory(root) or survey(root, "run").links or read_by_this_run(root, protected):
        check_owned(root, kind="run", action="resume into", protected=protected)
    return []


def check_out_dir(root: FsPath, *, field: str, file: bool = False) -> None:
    """Refuse an output folder (``file``: an output file) that is of the other kind or sits under a file, or whose
    nearest existing parent is not writable, before any work is done."""
    if root.exists() and root.is_dir() == file:
        kind = "a folder, not a file" if file else "a file, not a folder"
        raise RunDirectoryError(f"{field} {str(root)!r} is {kind}; choose another path")
    for parent in root.parents:
        if parent.exists():
            if not parent.is_dir():
                raise RunDirectoryError(f"{field} {str(root)!r} sits under the file {str(parent)!r}")
            if not os.access(parent, os.W_OK):
                raise RunDirectoryError(f"{field} {str(root)!r}: {str(parent)!r} is not writable")
            break


def _empty(root: FsPath, owned: list[str]) -> None:
    """Delete the entries of the layout ``owned`` (from :func:`check_exist`) of a folder of this tool; nothing else
    (the survey found no link and nothing foreign in it). The marker goes last: a folder emptied half-way (a kill)
    is still recognised as this tool's."""
    for name in sorted(owned, key=lambda n: n == MARKER):
        p = root / name.rstrip("/")
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif os.path.lexists(p):
            p.unlink()


def _remove_temporary_files(root: FsPath) -> None:
    """Leftovers of writes killed half-way (:func:`~hf_llpf.run.ownership.is_leftover`: ``.NAME.*.tmp`` files,
    ``.tmp_assets/``, ``points/.tmp_t_*/``), where the tool writes them: the folder itself, ``points/``,
    ``checkpoint/`` and ``plots/`` (never deeper, never through a link)."""
    for rel in ("", POINTS_DIR, CHECKPOINT_DIR, PLOTS_DIR):
        folder = root / rel
        if folder.is_symlink() or not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_symlink() or not is_leftover(p.name, p.is_dir(), rel):
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, FsPath):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_evaluation(root: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write an evaluation's results into a run directory, atomically (docs/evaluation.md, "What is written").

    ``result`` (from :func:`hf_llpf.evaluation.evaluate_path`) is merged into ``root/path_metrics.json``: its
    ``points``, ``linear`` and ``continuity`` replace those there, its ``summary`` sections are merged into the
    summary (the engine's own sections, such as ``run``, are kept), every other key is kept;
    ``path_metrics.csv`` is rewritten from the points.

    Args:
        root: the run directory.
        result: ``{"points", "linear", "continuity", "summary"}``.
    """
    root = FsPath(root)
    existing = read_metrics(root) if (root / METRICS_JSON).is_file() else {}
    merged = {
        **existing,
        "points": result["points"],
        "linear": result["linear"],
        "continuity": result["continuity"],
        "summary": {**existing.get("summary", {}), **result["summary"]},
    }
    atomic_write_text(root / METRICS_JSON, json.dumps(merged, indent=2) + "\n")
    atomic_write_text(root / METRICS_CSV, points_to_csv(result["points"]))
