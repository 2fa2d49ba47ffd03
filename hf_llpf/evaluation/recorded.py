"""Recording which data an evaluation actually saw: :class:`ProbeRecorder` (docs/baselines.md).

Batches handed to :func:`hf_llpf.evaluate_path` as ``data={"train": ..., "test": ...}`` may be wrapped in a
recorder; it hashes every complete pass the evaluator makes over them, so a comparison can show (and a test
assert) that every path was judged on exactly the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch


def _digest_batch(h: Any, batch: Any) -> None:
    items = batch.values() if isinstance(batch, dict) else batch
    for t in items:
        if isinstance(t, torch.Tensor):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


class ProbeRecorder:
    """Re-iterable batches that record the SHA-256 of every complete pass made over them.

    Args:
        batches: the fixed batches (re-iterable).

    Attributes:
        digests: the digest of each complete pass, in order (a pass stopped early is not recorded).
    """

    def __init__(self, batches: Any):
        self.batches = batches
        self.digests: list[str] = []

    def __iter__(self) -> Iterator[Any]:
        h = hashlib.sha256()
        for batch in self.batches:
            _digest_batch(h, batch)
            yield batch
        self.digests.append(h.hexdigest())

    @property
    def origin(self) -> dict | None:
        """How the recorded batches' examples were chosen (:class:`~hf_llpf.evaluation.sets.EvalSets`), when they
        say."""
        return getattr(self.batches, "origin", None)

    def take(self) -> list[str]:
        """The distinct digests recorded since the last call (one, when every pass saw the same data)."""
        seen, self.digests = sorted(set(self.digests)), []
        return seen


def probe_digest(batches: Any) -> str:
    """The SHA-256 of one pass over ``batches`` (what :class:`ProbeRecorder` records)."""
    h = hashlib.sha256()
    for batch in batches:
        _digest_batch(h, batch)
    return h.hexdigest()


__all__ = ["ProbeRecorder", "probe_digest"]
