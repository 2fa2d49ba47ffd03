"""BatchNorm recalibration: recompute the running statistics of a point on training data (docs/evaluation.md).

An interpolated or moved point carries running statistics that belong to neither end; recomputing them on
the training subset shows how much of a loss rise is the statistics alone. Reported beside the raw figures
(the ``*_recal`` columns), never instead of them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable, *, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm layer's running statistics on ``batches``; nothing else changes.

    The running statistics are reset, then accumulated as a cumulative average (``momentum=None``) over the
    batches in train mode for the BatchNorm layers only (dropout and the rest stay in eval mode), with no
    gradients, so the parameters stay bit-identical. Momentum and modes are restored afterwards.

    Args:
        model: the model (changed in place).
        batches: training batches, as ``(inputs, labels)`` tuples or dicts.
        max_batches: use at most this many batches (``None``: all).

    Returns:
        The number of BatchNorm layers recalibrated (0: the model has none, nothing was done).
    """
    layers = _bn_modules(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            if isinstance(batch, dict):
                model(**{k: v for k, v in batch.items() if k != "labels"})
            else:
                model(batch[0])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(layers)


__all__ = ["recalibrate_bn"]
