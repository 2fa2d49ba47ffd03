"""Every exception hf_llpf raises on purpose, in one place.

Each error names the field, the value that was given and what is allowed, so a user can fix the
input without reading the source.
"""

from __future__ import annotations

from collections.abc import Iterable


def _listing(values: Iterable[object], limit: int = 20) -> str:
    """Format allowed values for an error message, cut after ``limit`` entries."""
    values = [str(v) for v in values]
    shown = ", ".join(values[:limit])
    if len(values) > limit:
        shown += f", ... ({len(values) - limit} more)"
    return shown


class LLPFError(Exception):
    """Base class of every hf_llpf error."""


class ConfigError(LLPFError, ValueError):
    """A setting (recipe key, CLI override, keyword argument) is invalid.

    ``problems`` lists every problem found, so all of them are reported at once.
    """

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("invalid settings:\n  - " + "\n  - ".join(self.problems))


class UnknownNameError(LLPFError, ValueError):
    """A name (model, dataset, split, column, key) does not exist; the message lists what does."""

    def __init__(self, field: str, value: object, allowed: Iterable[object], hint: str = ""):
        self.field, self.value, self.allowed = field, value, list(allowed)
        msg = f"unknown {field} {value!r}; available: {_listing(self.allowed)}"
        super().__init__(msg + (f". {hint}" if hint else ""))


class EndpointMismatchError(LLPFError, ValueError):
    """Two endpoints do not share one architecture (different tensor names or shapes)."""


class DataMismatchError(LLPFError, ValueError):
    """The data do not fit the model (labels outside the head, wrong input shape)."""


class CorruptCheckpointError(LLPFError, ValueError):
    """A weights file is unreadable, truncated or not a safetensors file."""


class OfflineError(LLPFError, RuntimeError):
    """A Hub resource was needed while the Hub cannot be reached (offline mode or no network)."""


class RunDirectoryError(LLPFError, ValueError):
    """A run directory exists, is missing, or is not a run directory."""


class DivergenceError(LLPFError, RuntimeError):
    """The path could not continue: the loss diverged too many times (a resumable checkpoint is kept)."""


class NotApplicableError(LLPFError, ValueError):
    """A method does not apply to this model (e.g. weight matching on a graph whose permutations are unknown);
    the message starts with ``not applicable:`` and gives the reason."""

    def __init__(self, method: str, reason: str):
        self.method, self.reason = method, reason
        super().__init__(f"{method}: not applicable: {reason}")


class UnsafeEndpointError(LLPFError, ValueError):
    """An endpoint's files ask for something hf_llpf never does: build a model by loading a file from a path
    (a pickle checkpoint), or fetch weights from elsewhere. The message names the file, the key and why."""


class HubConflictError(LLPFError, ValueError):
    """A push would delete or replace files of the Hub repo that no earlier push of hf_llpf published; nothing
    was uploaded. The message lists them and the options that allow it."""


class ShardingError(LLPFError, ValueError):
    """Tensors spread over processes in a way hf_llpf does not handle (a placement other than FSDP2's dim-0 chunks,
    shards of different meshes, a target shard that does not match the model's); the message says what is allowed."""
