"""The divergence guard (docs/algorithm.md §4): a tick whose loss diverged is rolled back exactly, its step halved.

Every method's tick snapshots what it will change (:meth:`DivergenceGuard.snapshot`); the certified tick also
rolls back through it when it backtracks (:meth:`hf_llpf.algorithms.base.Method.certified_tick`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_llpf.config import ConnectConfig
from hf_llpf.errors import DivergenceError
from hf_llpf.train import RepairTrainer


class DivergenceGuard:
    """Snapshot of every tensor a tick changes, so a tick whose loss diverged is rolled back exactly.

    Parameters, buffers and the optimizer's state are copied into buffers kept from the previous tick (no
    allocation, one foreach call: the guard is paid every tick, the rollback almost never); optimizer state
    created during the failed tick (momentum buffers of its first steps) is removed on rollback.
    """

    def __init__(self, model: nn.Module, trainer: RepairTrainer):
        self.model, self.trainer = model, trainer
        self._saved: list[torch.Tensor] | None = None
        self._state_keys: dict[torch.Tensor, set[str]] = {}

    def _live(self) -> list[torch.Tensor]:
        live = list(self.model.state_dict(keep_vars=True).values())
        for state in self.trainer.optimizer.state.values():
            live.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return [t.data if isinstance(t, nn.Parameter) else t for t in live]

    def snapshot(self) -> None:
        """Remember the current state."""
        self._state_keys = {k: set(v) for k, v in self.trainer.optimizer.state.items()}
        live = self._live()
        if self._saved is None or [t.shape for t in self._saved] != [t.shape for t in live]:
            self._saved = [t.detach().clone() for t in live]
        else:
            torch._foreach_copy_(self._saved, [t.detach() for t in live])
        self._live_then = live

    def saved_model_state(self) -> list[torch.Tensor]:
        """The snapshot's model tensors, in ``model.state_dict()`` order (the previous tick's point)."""
        return self._saved[: len(self.model.state_dict())]

    def restore(self) -> None:
        """Return to the last snapshot, optimizer state included."""
        with torch.no_grad():
            torch._foreach_copy_(self._live_then, self._saved)
        opt_state = self.trainer.optimizer.state
        for param in list(opt_state):
            keys = self._state_keys.get(param)
            if keys is None:
                del opt_state[param]
            else:
                for k in set(opt_state[param]) - keys:
                    del opt_state[param][k]

    def failed(self, state: Any, *, loss: float, config: ConnectConfig, name: str, advice: str) -> None:
        """Roll back, halve the step and count the failure; stop with a checkpoint after ``max_failures``.

        ``state`` is the method's :class:`~hf_llpf.algorithms.base.LoopState` (``failures``, ``step_scale``,
        ``tick``).

        Raises:
            DivergenceError: the stretch of failures reached ``config.max_failures``.
        """
        self.restore()
        state.failures += 1
        state.step_scale *= 0.5
        tqdm.write(
            f"{name} tick {state.tick + 1}: loss {loss:.4g} above loss_limit={config.loss_limit} or not finite; "
            f"rolled back, step scale now {state.step_scale:g} (failure {state.failures}/{config.max_failures})"
        )
        if state.failures >= config.max_failures:
            raise DivergenceError(
                f"the loss diverged {state.failures} times (last {loss:.4g} at tick {state.tick + 1}); the run "
                f"stopped with a resumable checkpoint. {advice}, then rerun with --resume."
            )


def diverged(loss: float, config: ConnectConfig) -> bool:
    """A tick's loss that the guard rolls back: not finite, or above ``loss_limit``."""
    return not math.isfinite(loss) or loss > config.loss_limit


__all__ = ["DivergenceGuard", "diverged"]


def check_in_sync(accelerator: Any, params: list[torch.Tensor], *, where: str) -> None:
    """Every process must hold the same weights: compare a cheap checksum (sum and sum of squares) of ``params``.

    Raises:
        DivergenceError: the processes' checksums differ (``where`` says when, e.g. "at tick 12").
    """
    local = torch.stack(
        [torch.stack([p.detach().double().sum(), p.detach().double().square().sum()]) for p in params]
    ).sum(0)  # (2,)
    everyone = accelerator.gather(local.to(accelerator.device).unsqueeze(0))  # (processes, 2)
    if not bool((everyone == everyone[0]).all()):
        raise DivergenceError(
            f"processes hold different weights {where} (checksums {everyone.tolist()}); a move or correction "
            "was not identical on every process"
        )
