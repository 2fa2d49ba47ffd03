"""The ``hf_llpf`` logger's handler: decisions (e.g. the cross-sphere method choice) go to stderr.

Library modules never attach handlers; the CLI calls :func:`configure` (INFO by default, ``-q`` WARNING,
``-v`` DEBUG), and Python users may do the same::

    import hf_llpf.reporting.logging
    hf_llpf.reporting.logging.configure("info")

Modules log through ``accelerate.logging.get_logger(__name__)``: a wrapper of the stdlib logger of the same
name (``hf_llpf....``), so its messages reach this handler (logged on the main process only).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterator

NAME = "hf_llpf"
_HANDLER_FLAG = "_hf_llpf_handler"


def configure(level: int | str = "info", *, stream=None) -> logging.Logger:
    """Set the level of the ``hf_llpf`` logger and give it one stderr handler (calling it again replaces it).

    Args:
        level: ``"debug"``, ``"info"``, ``"warning"``, ``"error"`` or a :mod:`logging` level number.
        stream: where the messages go (default ``sys.stderr`` at the time of each message).

    Returns:
        The ``hf_llpf`` logger.
    """
    logger = logging.getLogger(NAME)
    logger.setLevel(level.upper() if isinstance(level, str) else level)
    for h in [h for h in logger.handlers if getattr(h, _HANDLER_FLAG, False)]:
        logger.removeHandler(h)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.setFormatter(logging.Formatter("hf-llpf: %(message)s"))
    handler.addFilter(_drop_lone_rank)
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.propagate = False  # one line per message, also when the root logger has a handler
    return logger


_RANK_PREFIX = re.compile(r"^\[RANK \d+\] ")


def _drop_lone_rank(record: logging.LogRecord) -> bool:
    """Drop the ``[RANK n]`` prefix that Accelerate's logger puts on every message when this is the only process:
    it tells processes apart, and alone it is noise on every line."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1 and isinstance(record.msg, str):
        record.msg = _RANK_PREFIX.sub("", record.msg, count=1)
    return True


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (pytest's capsys and redirected streams see the messages)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class RunLog:
    """The run's log file, ``RUN_DIR/hf_llpf.log``: every message of the ``hf_llpf`` logger, from the start of the
    command (held in memory until the run directory is open) to its end, each with its time and level.

    The file is opened without following a link and appended to, so a resumed run's stretches follow one another.
    Messages reach it at the logger's level (``-q``: warnings only).
    """

    def __init__(self):
        self.logger = logging.getLogger(NAME)
        self.format = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
        self.handler: logging.Handler = logging.handlers.MemoryHandler(
            capacity=100_000, flushLevel=logging.CRITICAL + 1
        )
        self.handler.addFilter(_drop_lone_rank)
        self.logger.addHandler(self.handler)

    def open(self, path: str | os.PathLike) -> None:
        """Write what was held, and everything after, to ``path`` (created with the user's umask)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666)
        target = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
        target.setFormatter(self.format)
        target.addFilter(_drop_lone_rank)
        held = self.handler
        held.setTarget(target)
        held.flush()
        self.logger.removeHandler(held)
        self.logger.addHandler(target)
        self.handler = target

    def close(self) -> None:
        """Stop writing (idempotent); the file is closed."""
        self.logger.removeHandler(self.handler)
        self.handler.close()
        stream = getattr(self.handler, "stream", None)
        if stream is not None:
            stream.close()


class _Collector(logging.Handler):
    """Holds a library's messages: each distinct text once, in order, with its level and how often it came."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, list[int]] = {}  # message -> [level, count]

    def emit(self, record: logging.LogRecord) -> None:
        entry = self.seen.setdefault(record.getMessage(), [record.levelno, 0])
        entry[0], entry[1] = max(entry[0], record.levelno), entry[1] + 1


@contextlib.contextmanager
def folded(library: str = "huggingface_hub", *, into: str = NAME) -> Iterator[None]:
    """Within the block, ``library``'s log messages are held and each distinct one is said once at the end, through
    the ``into`` logger (so at its level: ``-q`` keeps warnings), with how often it came: ``huggingface_hub
    (135 times): No files have been modified since last commit. ...`` instead of 135 lines (one per commit that
    changed nothing). The library's own handlers and propagation are restored afterwards, also after an error."""
    lib = logging.getLogger(library)
    saved = list(lib.handlers), lib.propagate
    collector = _Collector()
    lib.handlers[:] = [collector]
    lib.propagate = False
    try:
        yield
    finally:
        lib.handlers[:], lib.propagate = saved
        out = logging.getLogger(into)
        for message, (level, count) in collector.seen.items():
            out.log(level, f"{library}" + (f" ({count} times)" if count > 1 else "") + f": {message}")


@contextlib.contextmanager
def configured(level: int | str = "info") -> Iterator[logging.Logger]:
    """:func:`configure` for the duration of a block (the CLI's ``main``); the logger's previous level, handlers
    and propagation are restored afterwards."""
    logger = logging.getLogger(NAME)
    saved = logger.level, list(logger.handlers), logger.propagate
    try:
        yield configure(level)
    finally:
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]
