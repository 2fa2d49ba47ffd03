"""Who owns a run directory: the marker that makes it recognisably ours, and the lock of the run writing it.

- ``.hf_llpf-run`` marks a folder as one of this tool (its JSON names the kind: ``run``, ``comparison``,
  ``repeats``). ``--overwrite`` empties only such a folder (or one in the layout older versions wrote, holding
  nothing but run files), and only when it holds nothing else, no link and nothing the command reads
  (:mod:`hf_llpf.run.ownership`).
- ``.hf_llpf-lock`` is held for the whole run (PID, host, start time). A second run into the same folder is
  refused; a lock whose process is gone (same host, PID not alive) is stale and taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from hf_llpf.errors import RunDirectoryError
from hf_llpf.run.layout import LOCK, MARKER
from hf_llpf.run.ownership import is_ours, read_by_this_run


def is_run_directory(root: Path) -> bool:
    """Whether ``root`` is a run directory of this tool: its marker, or an older run's exact layout (see
    :func:`hf_llpf.run.ownership.is_ours`)."""
    return is_ours(root, "run")


def write_marker(root: Path, kind: str = "run") -> None:
    """Mark ``root`` as a folder of this tool of ``kind`` (``run``, ``comparison``, ``repeats``); idempotent."""
    from hf_llpf import __version__

    marker = root / MARKER
    if not marker.is_symlink() and marker.is_file():
        return
    if os.path.lexists(marker):  # a link or a folder in its place: never written through
        raise RunDirectoryError(f"{str(marker)!r} is not a plain file (a link or a folder); remove it first")
    marker.write_text(json.dumps({"hf_llpf": __version__, "kind": kind}) + "\n")


def check_not_protected(root: Path, protected: list[Path], *, action: str, field: str = "--out") -> None:
    """Refuse ``action`` on ``root`` when it is, holds, or lies inside a folder or file the command reads."""
    hits = read_by_this_run(root, protected)
    if hits:
        raise RunDirectoryError(
            f"{field} {str(root)!r}: refusing to {action} it: it is, holds or lies inside {hits[0]!r}, which this "
            f"command reads (an endpoint, the data or the recipe); hf_llpf never writes there: choose another {field}"
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory, held by this process until :meth:`release`."""

    def __init__(self, root: Path):
        self.path = root / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        """Take the lock, or raise naming the process that holds it."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RunDirectoryError(f"could not lock {self.path.parent}: {self.path} keeps reappearing")

    def _take_over_if_stale(self) -> None:
        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            owner, pid, host = None, -1, socket.gethostname()  # unreadable: written by a process killed mid-write
        if host == socket.gethostname() and (pid == -1 or not _alive(pid)):
            self.path.unlink(missing_ok=True)
            return
        where = f"process {pid} on {host}" if owner else "another process"
        raise RunDirectoryError(
            f"run directory {str(self.path.parent)!r} is in use by {where} (lock {self.path}); wait for that run "
            "to end, or choose another --out. If no such run is alive (another machine), delete the lock file."
        )

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
