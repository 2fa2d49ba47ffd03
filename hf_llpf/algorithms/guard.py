"""The divergence guard (docs/algorithm.md §4): a tick whose loss diverged is rolled back exactly, its step halved.

Every method's tick snapshots what it will change (:meth:`DivergenceGuard.snapshot`); the certified tick also
rolls back through it when it backtracks (:meth:`hf_llpf.algorithms.base.Method.certified_tick`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.config import ConnectConfig, setting_name
from hf_llpf.errors import DivergenceError
from hf_llpf.sharding import local_parts


class DivergenceGuard:
    """Snapshot of every tensor a tick changes, so a tick whose loss diverged is rolled back exactly.

    Parameters, buffers and the optimizer's state are copied into buffers kept from the previous tick (no
    allocation, one foreach call: the guard is paid every tick, the rollback almost never); optimizer state
    created during the failed tick (momentum buffers of its first steps) is removed on rollback. A tensor that
    appears under several names (tied weights: a language model's ``lm_head`` and its embedding) is copied once.
    """

    def __init__(self, model: nn.Module, trainer: RepairTrainer):
        self.model, self.trainer = model, trainer
        self._saved: list[torch.Tensor] | None = None
        self._live_then: list[torch.Tensor] = []
        self._index: list[int] = []  # per live tensor (model state, then optimizer state): its entry of _saved
        self._state_keys: dict[torch.Tensor, set[str]] = {}

    def _live(self) -> list[torch.Tensor]:
        live = list(self.model.state_dict(keep_vars=True).values())
        for state in self.trainer.optimizer.state.values():
            live.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        # Under FSDP2 each process keeps its own shards (a DTensor's local part, a view the restore copies into).
        return local_parts([t.data if isinstance(t, nn.Parameter) else t for t in live])[0]

    def snapshot(self) -> None:
        """Remember the current state."""
        self._state_keys = {k: set(v) for k, v in self.trainer.optimizer.state.items()}
        live, self._index = _distinct(self._live())
        if self._saved is None or [t.shape for t in self._saved] != [t.shape for t in live]:
            self._saved = [t.detach().clone() for t in live]
        else:
            torch._foreach_copy_(self._saved, [t.detach() for t in live])
        self._live_then = live

    def release(self) -> None:
        """Drop the snapshot (the walk is over: nothing is rolled back any more)."""
        self._saved, self._live_then, self._index, self._state_keys = None, [], [], {}

    def saved_model_state(self) -> list[torch.Tensor]:
        """The snapshot's model tensors, in ``model.state_dict()`` order (the previous tick's point; tied names share
        one tensor)."""
        return [self._saved[j] for j in self._index[: len(self.model.state_dict())]]

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

    def failed(
        self, state: Any, *, loss: float, config: ConnectConfig, name: str, advice: Advice, certified: bool
    ) -> None:
        """Roll back, halve the step and count the failure; stop with a checkpoint after ``max_failures``.

        ``state`` is the method's :class:`~hf_llpf.algorithms.base.LoopState` (``failures``, ``step_scale``,
        ``tick``); ``advice`` the method's own settings that act on a diverging tick; ``certified`` whether a
        loss ceiling is enforced (then ``max_iters`` does not act: the certifier's repair rounds, within
        ``repair_budget``, replace it).

        Raises:
            DivergenceError: the stretch of failures reached ``config.max_failures``.
        """
        self.restore()
        state.failures += 1
        state.step_scale *= 0.5
        tqdm.write(
            f"{name} tick {state.tick + 1}: loss {loss:.4g} above guard.loss_limit={config.loss_limit} or not "
            f"finite; rolled back, step scale now {state.step_scale:g} (failure {state.failures}/"
            f"{config.max_failures})"
        )
        if state.failures >= config.max_failures:
            what = divergence_advice(config, advice, loss=loss, certified=certified)
            raise DivergenceError(
                f"the loss diverged {state.failures} times (last {loss:.4g} at tick {state.tick + 1}); the run "
                f"stopped with a resumable checkpoint. {what}"
            )


def _distinct(tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[int]]:
    """Each tensor once (tied weights are one tensor under two names): the distinct tensors, and per given tensor
    the index of its own among them."""
    first: dict[tuple, int] = {}
    index = []
    for t in tensors:
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else (id(t),)
        index.append(first.setdefault(key, len(first)))
    distinct = [None] * len(first)
    for t, j in zip(tensors, index, strict=True):
        distinct[j] = t if distinct[j] is None else distinct[j]
    return distinct, index


@dataclass(frozen=True)
class Advice:
    """A method's settings that act on a diverging tick: ``resumable`` ones (a ``--resume`` may change them) and
    ``new_run`` ones (``--resume`` refuses a change: only a new run can take them)."""

    resumable: tuple[str, ...] = ()
    new_run: tuple[str, ...] = ()


def divergence_advice(config: ConnectConfig, advice: Advice, *, loss: float, certified: bool) -> str:
    """What to change after the guard stopped a run: only settings that act, each said with the way it can change.

    A resume keeps the halved step and starts a new stretch of failures, so even an unchanged ``--resume`` tries
    shorter moves; ``lr`` (the repair's learning rate, the usual cause of a loss that grows or is not finite) is
    fixed for the run, as are the method's settings outside :data:`hf_llpf.run.resume.RESUMABLE_SETTINGS`.
    Settings are named as a user writes them (``m2m.step_r``, ``repair.lr``).
    """
    # Only the step settings in force act (the step is the largest of them, docs/algorithm.md §2.1).
    resumable = [f"lower {setting_name(k)} (now {_now(config, k)})" for k in advice.resumable if _value(config, k)]
    if certified:  # under a loss ceiling the certifier's repair rounds, within repair_budget, replace max_iters
        resumable.append(
            f"raise repair.budget (now {config.repair_budget}) so a tick's repair may train longer before it "
            "backtracks"
        )
    else:
        resumable.append(f"raise repair.max_iters (now {config.max_iters}) so the repair trains longer")
    resumable.append(f"raise guard.max_failures (now {config.max_failures}) so the step is halved more times")
    if math.isfinite(loss):
        resumable.append(f"raise guard.loss_limit (now {config.loss_limit:g}) if a loss of {loss:.4g} is acceptable")
    new_run = [f"lower {setting_name(k)} (now {_now(config, k)})" for k in advice.new_run]
    new_run.append(
        f"lower repair.lr (now {config.lr:g}), the repair's learning rate, when the repair training itself "
        "diverges (its loss grows or is not finite)"
    )
    refused = " or ".join((*map(setting_name, advice.new_run), "repair.lr"))
    return (
        f"To continue this run, {'; or '.join(resumable)}; then rerun with --resume (the step stays halved). "
        f"In a new run instead (another --out; --resume refuses a changed {refused}): {'; or '.join(new_run)}."
    )


def _value(config: ConnectConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _now(config: ConnectConfig, key: str) -> str:
    value = _value(config, key)
    return f"{value:g}" if isinstance(value, float) else str(value)


def diverged(loss: float, config: ConnectConfig) -> bool:
    """A tick's loss that the guard rolls back: not finite, or above ``loss_limit``."""
    return not math.isfinite(loss) or loss > config.loss_limit


__all__ = ["Advice", "DivergenceGuard", "divergence_advice", "diverged"]


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
