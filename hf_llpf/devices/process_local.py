"""One process's own view of an Accelerator, for work that is not shared between processes.

Under ``accelerate launch``/``torchrun`` with several processes, ``--repeats R`` gives each process whole paths
of its own (repeat r goes to process ``r mod P``) instead of splitting every batch of one path. Such a path must
not take part in any collective operation: no DDP gradient averaging, no reduction of the stopping loss, no
barrier. :class:`ProcessLocal` wraps the run's Accelerator so that :func:`hf_llpf.connect` and
:func:`hf_llpf.evaluation.evaluate_path` see one process on this process's device, with the Accelerator's mixed
precision kept for the training steps.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from torch import nn


class ProcessLocal:
    """A single-process stand-in for ``accelerator`` on this process (see the module docstring).

    Device placement, mixed precision (autocast, and the fp16 gradient scaler through ``backward`` and the
    prepared optimizer) come from the wrapped Accelerator; ``num_processes`` is 1 and every collective is the
    identity. Experiment trackers are not used: several processes would log the same run names.
    """

    num_processes = 1
    process_index = 0
    local_process_index = 0
    is_main_process = True
    is_local_main_process = True

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator

    @property
    def device(self) -> torch.device:
        """This process's device."""
        return self.accelerator.device

    @property
    def mixed_precision(self) -> str:
        """The wrapped Accelerator's mixed precision."""
        return self.accelerator.mixed_precision

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Place ``model`` on this process's device; its forward runs under the Accelerator's autocast."""
        model = model.to(self.device)
        if self.mixed_precision != "no":
            forward, autocast = model.forward, self.accelerator.autocast

            def autocast_forward(*args: Any, **kwargs: Any) -> Any:
                with autocast():
                    return forward(*args, **kwargs)

            model.forward = autocast_forward
        return model

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer) -> Any:
        """The Accelerator's optimizer wrapper (it steps the fp16 gradient scaler); no cross-process effect."""
        return self.accelerator.prepare_optimizer(optimizer)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled under fp16; the model is not DDP-wrapped, so nothing is averaged."""
        self.accelerator.backward(loss)

    def unwrap_model(self, model: nn.Module) -> nn.Module:
        """The model itself (it is never wrapped)."""
        return model

    def reduce(self, tensor: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """The identity: one process."""
        return tensor

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """The identity: one process."""
        return tensor

    def wait_for_everyone(self) -> None:
        """No barrier: the other processes are busy with their own paths."""

    def init_trackers(self, *args: Any, **kwargs: Any) -> None:
        """Trackers are off for process-local paths."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        """Trackers are off for process-local paths."""

    def end_training(self) -> None:
        """Trackers are off for process-local paths."""
