"""Who owns a run directory: the marker that makes it recognisably ours, and the lock of the run writing it.

- ``.hf_llpf-run`` marks a folder as one of this tool (its JSON names the kind: ``run``, ``comparison``,
  ``repeats``). ``--overwrite`` empties only such a folder (or one in the layout older versions wrote, holding
  nothing but run files), and only when it holds nothing else, no link and nothing the command reads
  (:mod:`hf_llpf.run.ownership`).
- ``.hf_llpf-lock`` is held for the whole run (PID, host, start time, command). A second run into the same folder
  is refused; a lock whose process is gone (same host, PID not alive) is stale and taken over.
- Readers and writers never mix (:func:`holding`): a command that reads a run directory (``evaluate``'s data,
  ``push``, ``export``, the card) holds a shared ``flock`` on the folder for its whole call, one that writes into
  it (a run, ``evaluate``, ``push``'s card) the exclusive lock. Each is refused, naming the process that holds the
  folder, while the other kind holds it; nothing waits.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hf_llpf.errors import RunDirectoryError
from hf_llpf.run.layout import LOCK, MARKER, METRICS_JSON
from hf_llpf.run.ownership import is_ours, read_by_this_run

try:
    import fcntl
except ImportError:  # Windows: the lock file alone keeps writers apart there
    fcntl = None


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


def _main_process() -> bool:
    """Whether this is the process of a launch that owns the run directory (the only one that locks it).

    The other processes of a multi-process launch (``RANK`` > 0) read and compute under the main process's lock.
    """
    return os.environ.get("RANK", "0") in ("", "0")


def _dir_flock(root: Path, *, exclusive: bool) -> int | None:
    """An open descriptor of ``root`` holding a ``flock`` (shared or exclusive), or None where the file system has
    no ``flock`` (the lock file alone then keeps writers apart).

    Raises:
        BlockingIOError: another process holds a lock that conflicts (no waiting).
    """
    if fcntl is None:
        return None
    fd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # no flock on this file system
        os.close(fd)
        return None
    return fd


def _flock_holders(root: Path) -> list[int]:
    """The processes holding a ``flock`` on ``root`` (from ``/proc/locks``; empty where there is none)."""
    try:
        st = os.stat(root)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  READ 12345 08:01:131 0 EOF" (blocked waiters are marked "->" and skipped)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == key and parts[4].isdigit():
            pids.append(int(parts[4]))
    return sorted(set(pids) - {os.getpid()})


def lock_owner(root: Path) -> dict | None:
    """Who holds the lock file of ``root`` while alive: ``{"pid", "host", "command"}``, or None (no lock file, or
    one left by a process that is gone on this host, or one left half-written by a killed process)."""
    try:
        owner = json.loads((root / LOCK).read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        return None  # unreadable: written by a process killed mid-write
    if host == socket.gethostname() and not _alive(pid):
        return None
    return {"pid": pid, "host": host, "command": owner.get("command")}


def _holder_text(owner: dict) -> str:
    command = f" ({owner['command']})" if owner.get("command") else ""
    return f"process {owner['pid']} on {owner['host']}{command}"


class RunLock:
    """An exclusive lock on a run directory, held by this process until :meth:`release`.

    Two locks together: the lock file ``.hf_llpf-lock`` (PID, host, start time, command: what a refusal names) and
    a ``flock`` on the folder itself, which readers (:func:`holding`) share: a writer is refused while a reader
    holds the folder, and a reader while a writer does. The kernel drops the ``flock`` of a killed process.

    Args:
        root: the run directory.
        command: what holds it, for the messages of the processes refused (default: the command line).
        action: what a command that is not a run (``"evaluate"``, ``"push"``) takes the lock for: its refusal
            says to run it again once the holder has ended (a run's says to choose another ``--out``).
    """

    def __init__(self, root: Path, *, command: str | None = None, action: str | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK
        self.command = command or _command_line()
        self.action = action
        self.held = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock, or raise naming the process that holds it."""
        try:
            self._fd = _dir_flock(self.root, exclusive=True)
        except BlockingIOError:
            owner = lock_owner(self.root)
            if owner is not None:
                self._refuse(owner)
            raise RunDirectoryError(_in_use_by_readers(self.root, self.action)) from None
        try:
            self._create()
        except BaseException:
            self._unflock()
            raise
        self.held = True
        return self

    def _create(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return
        raise RunDirectoryError(f"could not lock {self.path.parent}: {self.path} keeps reappearing")

    def _take_over_if_stale(self) -> None:
        owner = lock_owner(self.root)
        if owner is None:
            self.path.unlink(missing_ok=True)
            return
        self._refuse(owner)

    def _refuse(self, owner: dict) -> None:
        if self.action is not None:
            _refuse_reader(self.root, owner, self.action)
        raise RunDirectoryError(
            f"run directory {str(self.path.parent)!r} is in use by {_holder_text(owner)} (lock {self.path}); wait "
            "for it to end, or choose another --out. If no such process is alive (another machine), delete the "
            "lock file."
        )

    def _unflock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases its flock
            self._fd = None

    def release(self) -> None:
        """Give the lock back (idempotent)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        self._unflock()


def _in_use_by_readers(root: Path, action: str | None) -> str:
    pids = _flock_holders(root)
    who = f"process {', '.join(map(str, pids))}" if pids else "another process"
    what = f"{action} {str(root)!r}: the run directory" if action else f"run directory {str(root)!r}"
    then = f"run {action} again" if action else "run this again, or choose another --out"
    return f"{what} is being read by {who} (an evaluate, push or export of it); wait for it to end, then {then}"


def _command_line() -> str:
    """``hf-llpf <command>`` when run by the CLI, else the program's name (what a refusal names)."""
    argv = [a for a in sys.argv if a]
    prog = Path(argv[0]) if argv else Path("python")
    cli = prog.name == "hf-llpf" or prog.parts[-3:] == ("hf_llpf", "cli", "__main__.py")
    return f"hf-llpf {argv[1]}" if cli and len(argv) > 1 else prog.name


# Run directories this process holds: realpath -> [RunLock or flock descriptor, exclusive, depth]. A command
# that holds one calls functions that lock it again (evaluate_run inside compare_run): those are no-ops.
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def holding(root: str | os.PathLike, *, exclusive: bool, action: str) -> Iterator[None]:
    """Hold the run directory ``root`` for the block: exclusively to write into it (the writer's :class:`RunLock`),
    shared to read it (several readers at once, no writer).

    A reader is refused while a run writes the folder (its lock file names a live process, or its ``flock`` is
    held), a writer while readers hold it; nothing waits. Nested calls in one process are no-ops (a shared hold
    becomes exclusive when asked). Only the main process of a multi-process launch locks.

    Args:
        root: the run directory (not a directory: nothing is locked, the caller reports it).
        exclusive: write (True) or read (False).
        action: what the caller does, for the refusal (``"evaluate"``, ``"push"``, ...).

    Raises:
        RunDirectoryError: naming the process that holds it and saying to wait for it to end.
    """
    root = Path(root)
    ours = any((root / name).exists() for name in (MARKER, LOCK, METRICS_JSON))
    if not root.is_dir() or not _main_process() or (exclusive and not ours):
        yield  # not a run directory (the caller refuses it; no lock file is left in someone else's folder)
        return
    key = os.path.realpath(root)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None:
            if exclusive and not held[1]:
                _upgrade(root, held, action)
            held[2] += 1
        else:
            try:
                token = _take(root, exclusive=exclusive, action=action)
            except OSError as err:
                raise RunDirectoryError(
                    f"{action} {str(root)!r}: cannot lock the run directory ({err.strerror})"
                ) from None
            _HELD[key] = [token, exclusive, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            held = _HELD[key]
            held[2] -= 1
            if held[2] == 0:
                del _HELD[key]
                _give_back(held[0])


def _take(root: Path, *, exclusive: bool, action: str) -> RunLock | int | None:
    if exclusive:
        return RunLock(root, command=_command_line(), action=action).acquire()
    try:
        fd = _dir_flock(root, exclusive=False)
    except BlockingIOError:  # a writer holds it (its lock file may not be written yet)
        _refuse_reader(root, lock_owner(root), action)
    owner = lock_owner(root)  # a writer of an older version, or on another host, holds no flock
    if owner is not None:
        if fd is not None:
            os.close(fd)
        _refuse_reader(root, owner, action)
    return fd


def _refuse_reader(root: Path, owner: dict | None, action: str) -> None:
    who = _holder_text(owner) if owner else "another process"
    raise RunDirectoryError(
        f"{action} {str(root)!r}: the run directory is still being written by {who} (lock "
        f"{root / LOCK}); wait for it to end, then run {action} again. If no such process is alive (another "
        "machine), delete the lock file."
    )


def _upgrade(root: Path, held: list, action: str) -> None:
    """Make this process's shared hold of ``root`` exclusive (a reader that goes on to write)."""
    _give_back(held[0])  # a flock cannot be converted from another descriptor of the same process
    held[0] = None
    held[0], held[1] = RunLock(root, command=_command_line(), action=action).acquire(), True


def _give_back(token: RunLock | int | None) -> None:
    if isinstance(token, RunLock):
        token.release()
    elif token is not None:
        os.close(token)


def holds_run_directory(param: str, *, exclusive: bool, action: str) -> Callable:
    """Decorator: the function holds the run directory named by its argument ``param`` (a folder, or a
    :class:`~hf_llpf.run.RunPath`, whose ``root`` is taken) for its whole call; see :func:`holding`."""

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def held(*args: Any, **kwargs: Any) -> Any:
            value = signature.bind_partial(*args, **kwargs).arguments.get(param)
            # a folder, or a reader (hf_llpf.run.RunPath: not os.PathLike) whose root is the folder; a path downloaded
            # from the Hub (repo_id) is a read-only snapshot no run writes
            root = value if isinstance(value, (str, os.PathLike)) else getattr(value, "root", None)
            if hasattr(value, "repo_id"):
                root = None
            if not isinstance(root, (str, os.PathLike)):
                return fn(*args, **kwargs)
            with holding(root, exclusive=exclusive, action=action):
                return fn(*args, **kwargs)

        return held

    return wrap
