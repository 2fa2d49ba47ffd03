"""Where a certified segment starts: the last saved point of the path (docs/algorithm.md §10.3).

The path that is published and judged joins its *saved* points by straight segments. With ``save_every: 1``
every tick's point is saved, so a tick's segment starts at the previous tick's point, which the divergence
guard's snapshot already holds. With ``save_every`` > 1 a tick's point may not be saved, and the segment that
its point would close starts at the last saved point: :class:`SegmentStart` keeps a copy of that point, so each
tick probes the midpoint of the segment from it. When that segment is above the ceiling while the tick's point
is under, the previous tick's point (its own segment from the last saved point was certified) is saved, and
the tick is tried again from there (:meth:`hf_llpf.algorithms.base.Method.certified_tick`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hf_llpf.sharding import local_state


class SegmentStart:
    """The state of the last saved point while ``tracking`` (``save_every`` > 1 with a ceiling).

    Args:
        tracking: keep a copy of each saved point; off, the start is the previous tick's point (the guard's).
    """

    def __init__(self, tracking: bool):
        self.tracking = tracking
        self.tick: int | None = None  # the method's own tick number of the last saved point
        self.tensors: list[torch.Tensor] | None = None  # its state, in model.state_dict() order

    def saved(self, model: nn.Module, tick: int) -> None:
        """``model`` (as written) is now the path's last saved point, at the method's ``tick``."""
        if not self.tracking:
            return
        state = local_state(model)  # under FSDP2, this process's shards
        if self.tensors is None or [t.shape for t in self.tensors] != [t.shape for t in state]:
            self.tensors = [t.clone() for t in state]
        else:
            torch._foreach_copy_(self.tensors, state)
        self.tick = tick

    def start(self, previous_tick: list[torch.Tensor]) -> list[torch.Tensor]:
        """The start of the current tick's segment (``previous_tick``: the previous tick's point)."""
        return self.tensors if self.tracking and self.tensors is not None else previous_tick

    def behind(self, tick: int) -> bool:
        """True when the last saved point is older than ``tick``, the previous tick (only while tracking)."""
        return self.tracking and self.tick is not None and self.tick < tick

    def release(self) -> None:
        """Drop the saved point's copy (the walk is over: no segment starts there any more)."""
        self.tensors = None

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs (nothing unless tracking)."""
        return {"tick": self.tick, "tensors": self.tensors} if self.tracking else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a checkpoint without it: the method starts the segments where it resumes)."""
        if self.tracking and state:
            self.tick, self.tensors = state.get("tick"), state.get("tensors")


__all__ = ["SegmentStart"]
