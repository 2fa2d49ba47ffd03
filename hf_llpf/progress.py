"""When progress bars show, and keeping the libraries' own bars and info logs quiet (docs/cli.md#progress-and-logs).

A bar shows only when it was asked for (``progress=True``, no ``--no-progress``), stderr is a terminal and
``TQDM_DISABLE`` is not set to a true value: a redirected log gets no ``\\r`` updates.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

_TRUE = ("1", "true", "yes", "on")


def progress_enabled(requested: bool = True) -> bool:
    """``requested`` and stderr is a terminal and ``TQDM_DISABLE`` is not true."""
    if not requested or os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE:
        return False
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


@contextlib.contextmanager
def quiet_libraries(quiet: bool = True) -> Iterator[None]:
    """While ``quiet``: no progress bars and only errors from transformers, no progress bars from huggingface_hub
    (their "Loading weights" / "Writing model shards" bars would appear for every point). Restored afterwards."""
    if not quiet:
        yield
        return
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tf_logging

    bars, verbosity = tf_logging.is_progress_bar_enabled(), tf_logging.get_verbosity()
    hub_bars_off = hub_utils.are_progress_bars_disabled()
    tf_logging.disable_progress_bar()
    tf_logging.set_verbosity_error()
    hub_utils.disable_progress_bars()
    try:
        yield
    finally:
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
        if not hub_bars_off:
            hub_utils.enable_progress_bars()


def counting_bar(items, *, desc: str, unit: str, requested: bool = True, main: bool = True):
    """``items`` wrapped in a tqdm bar of ``len(items)`` when a bar shows (:func:`progress_enabled`) on the main
    process; ``items`` itself otherwise."""
    if not (main and progress_enabled(requested)):
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False)


_REQUESTED: contextvars.ContextVar[bool] = contextvars.ContextVar("hf_llpf_progress_requested", default=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


class ProgressLines:
    """Progress as log lines, for a run whose output is not a terminal (a file, ``nohup``, a pipe), where a bar
    shows nothing: one line when a stage is done and at least every ``interval`` seconds between, with an ETA
    from the stages this session has done and what they cost.

    The ETA prices each remaining stage at the geometric mean of two rates: the mean time of every stage done
    this session and that of the more recent half of them (at least the last one). A path's stages do not cost
    alike: the first often costs many times the next ones (the step is short until easy ticks lengthen it) and
    the last few often cost more again (a bump near θ_B); the whole mean carries the start to the end, the recent
    mean forgets that the end can be dear, and each alone was off by more than their mean
    (docs/cli.md#progress-and-logs).

    Args:
        what: how the lines start (``"llpf m2m"``).
        total: the number of stages.
        done: the stages already done when the session starts (a resumed run).
        log: where a line goes (the ``hf_llpf`` logger's ``info``, main process only).
        enabled: write lines at all (progress asked, and no bar showing).
        interval: the longest silence between two lines, in seconds.
    """

    def __init__(self, what: str, *, total: int, done: int, log: Any, enabled: bool, interval: float = 60.0):
        self.what, self.total, self.log, self.enabled, self.interval = what, total, log, enabled, interval
        self.start = self.last = time.monotonic()
        self.last_done = done
        self.marks = [(done, self.start)]  # (stages done, when): the session's start, then each stage done

    def update(self, done: int, fields: dict[str, Any]) -> None:
        """Write a line when ``done`` grew or ``interval`` has passed; ``fields`` follow in their order."""
        now = time.monotonic()
        if done > self.marks[-1][0]:
            self.marks.append((done, now))
        if not self.enabled or (done == self.last_done and now - self.last < self.interval):
            return
        self.last, self.last_done = now, done
        shown = ", ".join(f"{k} {v}" for k, v in fields.items())
        self.log(f"{self.what}: {done}/{self.total} stages done, {shown}; {_duration(now - self.start)} so far, "
                 f"{self._eta(done, now)}")  # fmt: skip

    def _eta(self, done: int, now: float) -> str:
        if done >= self.total:
            return "last stage arriving"
        seen = len(self.marks) - 1  # stage completions this session
        if seen < 1:
            return "ETA after the first stage"
        (done0, t0), (done1, t1) = self.marks[seen - max(1, math.ceil(seen / 2))], self.marks[seen]
        recent, whole = (t1 - t0) / (done1 - done0), (t1 - self.start) / (done1 - self.marks[0][0])
        per_stage = math.sqrt(recent * whole)
        left = self.total - done
        # The stage under way has had (now - t1) of its price; one that outran it is taken as nearly done.
        return f"ETA ~{_duration(max(left * per_stage - (now - t1), (left - 1) * per_stage))}"


def loss_label(loss: float | None) -> str:
    """A tick's repair loss as a progress bar shows it: ``no repair`` for a tick that needed none (its loss is
    ``nan`` in the records, which on a bar reads like a diverged run)."""
    return f"{loss:.4f}" if loss is not None and math.isfinite(loss) else "no repair"


@contextlib.contextmanager
def progress_requested(requested: bool) -> Iterator[None]:
    """Within the block, the libraries' bars follow ``requested`` (a run's ``progress=``) as :func:`library_bars`
    reads it."""
    token = _REQUESTED.set(bool(requested))
    try:
        yield
    finally:
        _REQUESTED.reset(token)


def library_bars() -> contextlib.AbstractContextManager:
    """Around a save or load of a point through transformers / huggingface_hub: quiet unless bars are enabled
    (asked for by the current run, stderr a terminal, ``TQDM_DISABLE`` unset)."""
    return quiet_libraries(not progress_enabled(_REQUESTED.get()))
