"""What a batch is to hf_llpf: moving one to a device, its size, and the default loss on it.

A batch is a tensor, a tuple/list ``(inputs[, labels])`` or a dict of tensors (``transformers`` style, labels
under ``"labels"``). Training (:mod:`hf_llpf.training`, :mod:`hf_llpf.algorithms.repair`), evaluation
(:mod:`hf_llpf.evaluation`) and the stage trace (:mod:`hf_llpf.stages.trace`) share these helpers so that all three
read a batch the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_llpf.errors import DataMismatchError

LossFn = Callable[[nn.Module, Any], torch.Tensor]


def move_batch(batch: Any, device: torch.device | str) -> Any:
    """Put every tensor of a batch (tensor, tuple/list or dict, nested) on ``device``.

    Other objects are returned as they are. A dict (or dict subclass) comes back as a plain ``dict``; a
    tuple or list keeps its type.

    Args:
        batch: the batch.
        device: where its tensors go.

    Returns:
        The batch with its tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        # Asynchronous copies only towards an accelerator: a non-blocking copy into host memory may still be
        # running when the CPU reads the tensor.
        return batch.to(device, non_blocking=torch.device(device).type != "cpu")
    if isinstance(batch, dict):
        return {k: move_batch(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_batch(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """Number of examples in a batch: the first dimension of its inputs (of its first tensor for a dict)."""
    if isinstance(batch, dict):
        first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        return int(first.shape[0])
    return int(batch[0].shape[0])


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy for ``(inputs, labels)`` batches; the model's own ``outputs.loss`` for dict batches.

    Raises:
        DataMismatchError: a dict batch and a model whose output has no ``loss``.
    """
    if isinstance(batch, dict):
        out = model(**batch)
        if getattr(out, "loss", None) is None:
            raise DataMismatchError("a dict batch needs a model that returns outputs.loss (pass labels in the batch)")
        return out.loss
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


__all__ = ["LossFn", "batch_size_of", "default_loss", "move_batch"]


def cpu_only() -> bool:
    """True when this machine has no accelerator device Accelerate could use (CUDA, MPS, XPU).

    Accelerate is then told ``cpu=True``: that is what makes it set up several CPU processes (gloo) under
    ``torchrun``/``accelerate launch``; with a device present, Accelerate chooses it.
    """
    mps, xpu = getattr(torch.backends, "mps", None), getattr(torch, "xpu", None)
    return not (
        torch.cuda.is_available()
        or (mps is not None and mps.is_available())
        or (xpu is not None and xpu.is_available())
    )
