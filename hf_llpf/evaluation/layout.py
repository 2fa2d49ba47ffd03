"""Eval-mode forward passes of convolutional models on a channels-last view, on the CPU.

On the CPU, PyTorch's convolution, BatchNorm and pooling kernels are often much faster on channels-last (NHWC)
tensors than on the default NCHW ones for the small images of the built-in data, and a BatchNorm folded into the
convolution before it (:mod:`hf_llpf.evaluation.folding`) is not run at all (``python -m benchmarks speed layout``
times both; docs/benchmarks.md). Both the certifier's probe (:mod:`hf_llpf.evaluation.probe`) and the evaluation's
:func:`~hf_llpf.evaluation.scoring.score` run through :func:`eval_view`, so they keep computing the same numbers; the
loss differs from the NCHW one by rounding (the benchmark prints the difference).

The working model itself is never converted (its optimizer, divergence guard and saved points see plain
contiguous tensors): a channels-last *copy* of it, its view, has the model's state copied in before each pass.
A model whose view fails or disagrees with it on the first batch (a ``.view()`` on an activation, say) keeps
running as it is; a folded view that disagrees is replaced by one without folds first.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch import nn

from hf_llpf.batches import LossFn, default_loss
from hf_llpf.evaluation.folding import fold_batchnorm

# Per model object: its channels-last view, or None where it must run as it is (decided on its first batch).
_VIEWS: weakref.WeakKeyDictionary[nn.Module, _View | None] = weakref.WeakKeyDictionary()
_TOLERANCE = 1e-4  # relative: what "agrees" means on the first batch (far above rounding)


def channels_last_batch(batch: Any) -> Any:
    """``batch`` with its 4-D floating tensors (images) in the channels-last memory format."""

    def convert(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point():
            return v.contiguous(memory_format=torch.channels_last)
        return v

    if isinstance(batch, dict):
        return {k: convert(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(convert(v) for v in batch)
    return convert(batch)


def _eligible(model: nn.Module, batch: Any) -> bool:
    """In eval mode, on the CPU, with a 2-D convolution and a 4-D image input."""
    if model.training:
        return False
    # A model with a view (or one refused) was scanned already: the scan is the costly part of a small probe.
    if model not in _VIEWS and not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return False
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or hasattr(first, "device_mesh"):  # a DTensor: FSDP2 shards it
        return False
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
    return any(isinstance(v, torch.Tensor) and v.ndim == 4 and v.is_floating_point() for v in values)


class _View:
    """A model's channels-last copy (BatchNorm folded where the graph allows, :mod:`.folding`) and how the
    model's state is copied into it before each pass."""

    def __init__(self, model: nn.Module, *, fold: bool = True):
        runner = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
        self.runner, self.folds = fold_batchnorm(runner) if fold else (runner, [])
        state, mine = model.state_dict(), self.runner.state_dict()
        self.layout = [(key, t.shape) for key, t in state.items()]  # what sync checks the model still has
        self.keys = [k for k in state if k in mine and not any(f.owns(k) for f in self.folds)]
        self.targets = [mine[k] for k in self.keys]

    @torch.no_grad()
    def sync(self, model: nn.Module) -> bool:
        """Copy ``model``'s parameters and buffers into the view (the copy converts the layout); False when the
        model's tensors no longer match the view's (its structure changed: the view is built again)."""
        state = model.state_dict()
        if [(key, t.shape) for key, t in state.items()] != self.layout:
            return False
        torch._foreach_copy_(self.targets, [state[k] for k in self.keys])
        for fold in self.folds:
            fold.load(state)
        return True


def _agrees(view: _View, model: nn.Module, batch: Any, loss_fn: LossFn) -> bool:
    """Whether the view computes ``model``'s loss on ``batch`` (to :data:`_TOLERANCE`)."""
    try:
        with torch.no_grad():
            view.sync(model)
            plain = float(loss_fn(model, batch))
            fast = float(loss_fn(view.runner, channels_last_batch(batch)))
    except Exception:  # the model cannot run channels-last (or traced): it runs as it is
        return False
    return abs(fast - plain) <= _TOLERANCE * max(abs(plain), 1e-6)


def _make_view(model: nn.Module, batch: Any, loss_fn: LossFn) -> _View | None:
    """A channels-last view of ``model``, kept only when it computes the same loss on ``batch``: with its
    BatchNorm layers folded where they fold, else as the model is."""
    for fold in (True, False):
        try:
            view = _View(model, fold=fold)
        except Exception:  # the model cannot be copied or converted: it runs as it is
            return None
        if _agrees(view, model, batch, loss_fn):
            return view
        if not view.folds:  # the view without folding is this one
            return None
    return None


def eval_view(model: nn.Module, batch: Any, loss_fn: LossFn | None = None) -> tuple[nn.Module, bool]:
    """The module to run ``model``'s eval-mode passes with, and whether its batches go channels-last.

    Args:
        model: the model (its state at this moment is what the view computes with).
        batch: the first batch of the pass (decides, for a model seen the first time, whether the view is used).
        loss_fn: the pass's loss (the first batch's loss must agree between the model and its view).

    Returns:
        ``(view, True)`` for an eligible model whose view agrees, with the model's state copied in; else
        ``(model, False)``.
    """
    if not _eligible(model, batch):
        return model, False
    view = _VIEWS.get(model, model)
    if view is not None and (view is model or not view.sync(model)):
        view = _VIEWS[model] = _make_view(model, batch, loss_fn or default_loss)
    return (model, False) if view is None else (view.runner, True)


__all__ = ["channels_last_batch", "eval_view"]
