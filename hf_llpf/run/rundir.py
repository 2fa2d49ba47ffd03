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
from collections.abc import Sequence
from pathlib import Path as FsPath
from typing import Any

import torch
from torch import nn

import hf_llpf.run.state as resume_state
from hf_llpf.errors import RunDirectoryError
from hf_llpf.models import Endpoint, save_model
from hf_llpf.partial import cleaned_on_failure
from hf_llpf.run.layout import (
    CHECKPOINT_DIR,
    LOCK,
    MARKER,
    METRICS_CSV,
    METRICS_JSON,
    is_temporary,
    point_name,
    temporary_point_name,
)
from hf_llpf.run.lock import RunLock, check_not_protected, is_run_directory, write_marker
from hf_llpf.run.reader import read_metrics
from hf_llpf.run.records import points_to_csv
from hf_llpf.run.storage import PointStorage
from hf_llpf.safe_paths import resolve_inside


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
        exist: what to do when it already exists: ``"error"`` (refuse), ``"overwrite"`` (empty it first; only a
            run directory of this tool, see :mod:`hf_llpf.run.lock`) or ``"resume"`` (keep it).
        protected: folders and files the run reads (local endpoints, data): never deleted or written over.
        lock: take the run directory's lock (not for a phase's folder inside a run directory that holds one).
        storage: the dtype and shard size points are written in (default: the endpoints' dtype, 5GB shards).

    Raises:
        RunDirectoryError: ``root`` is a file, under a file, not writable, in use by another run, not a run
            directory while ``overwrite``/``resume`` is asked, or holds a protected path. Nothing is deleted then.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        exist: str = "error",
        protected: Sequence[os.PathLike] = (),
        lock: bool = True,
        storage: PointStorage | None = None,
    ):
        self.root = FsPath(root)
        self.storage = storage or PointStorage()
        check_out_dir(self.root, field="--out")
        protected_paths = [FsPath(p) for p in protected]
        keep_checkpoint = self._check_exist_policy(exist, protected_paths)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.lock = RunLock(self.root).acquire() if lock else None
        except OSError as err:
            raise RunDirectoryError(f"--out {str(self.root)!r}: cannot write there ({err.strerror})") from None
        try:
            if exist == "overwrite" or (exist == "resume" and not keep_checkpoint):
                _empty(self.root)  # resume before the first checkpoint: nothing to keep, start again
            _remove_temporary_files(self.root)
            write_marker(self.root)
        except BaseException:
            self.close()
            raise

    def _check_exist_policy(self, exist: str, protected: list[FsPath]) -> bool:
        """Check ``exist`` against what is on disk before anything is changed; True when a checkpoint is kept."""
        if exist not in ("error", "overwrite", "resume", "append"):
            raise RunDirectoryError(f"exist={exist!r}: expected 'error', 'overwrite' or 'resume'")
        occupied = self.root.is_dir() and any(p.name != LOCK for p in self.root.iterdir())
        if exist == "append":  # a phase's own folder inside a resumed run: kept as it is
            return True
        if exist == "resume" and not occupied:
            raise RunDirectoryError(f"cannot resume {str(self.root)!r}: it does not exist or is empty")
        if not occupied:
            return False
        if exist == "error":
            raise RunDirectoryError(
                f"run directory {str(self.root)!r} already exists; pass --resume to continue it or "
                "--overwrite to replace it"
            )
        check_not_protected(self.root, protected, action="overwrite" if exist == "overwrite" else "resume into")
        if not is_run_directory(self.root):
            found = sorted(p.name for p in self.root.iterdir())[:8]
            raise RunDirectoryError(
                f"--out {str(self.root)!r} is not a run directory of hf_llpf (no {MARKER}; it holds {found}): "
                f"refusing to {exist} it; choose a new or empty folder"
            )
        # Only whether there is one: it is decoded once, by the resume (a damaged one is refused there, and
        # nothing is deleted before).
        return exist == "resume" and resume_state.exists(self.root / CHECKPOINT_DIR)

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
        rel = point_name(tick)
        final = self.root / rel
        tmp = self.root / temporary_point_name(tick)
        if tmp.exists():
            shutil.rmtree(tmp)
        store = self.storage
        with cleaned_on_failure(tmp):  # a full disk leaves no half-written point behind
            save_model(model, tmp, kind=endpoint.kind, arch=endpoint.arch, dtype=store.dtype,
                       max_shard_size=store.max_shard_size)  # fmt: skip
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
        return RunWriter(self.root / name, exist="append" if resume else "overwrite", lock=False, storage=self.storage)

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

    def save_checkpoint(self, state: dict) -> None:
        """Write the resume state (safetensors + JSON, see :mod:`hf_llpf.run.state`); never published."""
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


def _empty(root: FsPath) -> None:
    """Delete everything in a run directory except its lock."""
    for p in root.iterdir():
        if p.name == LOCK:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _remove_temporary_files(root: FsPath) -> None:
    """Leftovers of writes killed half-way (``.NAME.*.tmp`` files, ``points/.tmp_*`` folders)."""
    for p in sorted(root.rglob(".*"), reverse=True):
        if is_temporary(p.name) and p.is_dir():
            shutil.rmtree(p)
        elif is_temporary(p.name) and p.is_file():
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
