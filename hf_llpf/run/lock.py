"""Who owns a run directory: the marker that makes it recognisably ours, and the lock of the run writing it.

- ``.hf_llpf-run`` marks a folder as a run directory of this tool. ``--overwrite`` empties only such a folder
  (or one in the layout older versions wrote, holding nothing but run files), never a folder that holds an
  endpoint, the data, or anything else.
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
from hf_llpf.run.layout import CONFIG_YAML, LOCK, MARKER, RUN_FILES


def is_run_directory(root: Path) -> bool:
    """Whether ``root`` is a run directory of this tool (marker, or an older run's layout and nothing else)."""
    if (root / MARKER).is_file():
        return True
    names = {p.name for p in root.iterdir()}
    return CONFIG_YAML in names and all(n in RUN_FILES or n.startswith(".") for n in names)


def write_marker(root: Path) -> None:
    """Mark ``root`` as a run directory (idempotent)."""
    from hf_llpf import __version__

    if not (root / MARKER).is_file():
        (root / MARKER).write_text(json.dumps({"hf_llpf": __version__}) + "\n")


def check_not_protected(root: Path, protected: list[Path], *, action: str) -> None:
    """Refuse ``action`` on ``root`` when it is, or contains, a folder or file the run reads."""
    here = Path(os.path.realpath(root))
    for p in protected:
        other = Path(os.path.realpath(p))
        if other == here or here in other.parents:
            raise RunDirectoryError(
                f"--out {str(root)!r}: refusing to {action} it: it holds {str(p)!r}, which this run reads "
                "(an endpoint or the data); choose another --out"
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
        except (OSError, ValueError, RecursionError, KeyError, TypeError):
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
