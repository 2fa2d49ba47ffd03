"""The minimal repair training of each tick (the paper's repair step; docs/algorithm.md): :class:`RepairTrainer`.

It is the engine's training, apart from endpoint training (:mod:`hf_llpf.training`): the methods, the certifier
and the divergence guard drive it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from hf_llpf.batches import LossFn, default_loss, move_batch
from hf_llpf.data.loader import SeededLoader
from hf_llpf.errors import DataMismatchError


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm layer of ``model``; returns how many.

    The momentum is a module attribute, not part of the state dict: points written from ``model`` load with
    their architecture's own momentum.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.momentum = momentum
    return len(layers)


def batch_stream(train_data: Any) -> Iterator[Any]:
    """Endless batches from a SeededLoader (resumable), a DataLoader or any re-iterable of batches."""
    if isinstance(train_data, SeededLoader):
        yield from train_data.stream()
        return
    while True:
        empty = True
        for batch in train_data:
            empty = False
            yield batch
        if empty:
            raise DataMismatchError("the training data yielded no batch")


def resumed_stream(train_data: Any, drawn: int) -> Iterator[Any]:
    """The endless batches of the caller's own data (not a SeededLoader) after the first ``drawn`` were taken (the
    repair's and a curve's :class:`~hf_llpf.baselines.pathdir.ResumableBatches` on a resume).

    The skipped batches are read and dropped, one pass's worth at most where the data has a length; a resume
    then trains on the batches an uninterrupted run would, as long as each pass yields them in the same order
    (a list, a DataLoader without shuffling; a shuffling DataLoader draws a new order anyway).
    """
    try:
        per_pass = len(train_data)
    except TypeError:  # an iterable without a length (an IterableDataset's loader): skip every batch drawn
        per_pass = 0
    stream = batch_stream(train_data)
    for _ in range(drawn % per_pass if per_pass > 0 else drawn):
        next(stream)
    return stream


class RepairTrainer:
    """The minimal training of each tick (the paper's repair step; docs/algorithm.md).

    SGD on the training data with every parameter trainable, in train mode: at least ``min_iters`` and at
    most ``max_iters`` batches, stopping as soon as the mean of the last ``min_iters`` batch losses is at
    most ``loss_threshold``. The optimizer is built once, so its state (momentum) carries across ticks; the
    batch stream is one endless iterator, never re-created per tick (a fresh multi-worker DataLoader per
    tick made the reference implementation 9x slower).

    With ``bn_momentum`` every BatchNorm layer of ``model`` gets that running-statistics momentum, so the eval-mode
    statistics follow the weights a tick has just moved within a few batches (BatchNorm's usual 0.1 left them
    describing the weights before the move: measured max loss 0.077 instead of 0.045 on one small_cnn path).

    With ``sharded=True`` the model is already sharded by FSDP2 (``fully_shard``) over the processes: it is trained
    as it is, each process reading its own part of every batch as under data parallelism; after each repair every
    process takes the main process's buffers.

    With ``per_tensor_lr=True`` every parameter has its own optimizer group, so :meth:`set_lr_factors` can
    give each tensor its own learning rate (AngleConformal, docs/algorithm.md §6).

    Under several processes the model is wrapped for data parallelism by the Accelerator (gradients are
    averaged), each process reads its own shard of every batch, and the loss that drives the stopping rule is
    averaged across processes, so every process runs the same number of iterations and stays in step. The
    Accelerator's mixed precision (``bf16``/``fp16``) applies to these forward/backward passes only.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        min_iters: int,
        max_iters: int,
        loss_threshold: float,
        bn_momentum: float | None = None,
        loss_fn: LossFn | None = None,
        accelerator: Accelerator | None = None,
        per_tensor_lr: bool = False,
        sharded: bool = False,
    ):
        self.accelerator = accelerator or Accelerator(cpu=True)
        self.module = model  # the bare model: moves and corrections act on its parameters
        self.distributed = self.accelerator.num_processes > 1
        self.train_data = train_data
        self.stream = batch_stream(train_data)
        self.loss_fn = loss_fn or default_loss
        self.min_iters, self.max_iters, self.loss_threshold = min_iters, max_iters, loss_threshold
        self.base_lr = lr
        self.lr_scale = 1.0  # the certifier lowers the repair's rate where its budget could not repair a point
        if bn_momentum is not None:
            set_bn_momentum(model, bn_momentum)
        params = list(model.parameters())
        groups = [{"params": [p]} for p in params] if per_tensor_lr else [{"params": params}]
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        # prepare_* wraps for DDP (several processes) and mixed precision; on one plain process it changes nothing.
        # A model sharded with fully_shard is not wrapped again: FSDP2 reduce-scatters (averages) its gradients.
        self.sharded = sharded
        self.model = model if sharded else self.accelerator.prepare_model(model)
        self.optimizer = optimizer if sharded else self.accelerator.prepare_optimizer(optimizer)
        if isinstance(train_data, SeededLoader) and self.distributed:
            train_data.num_shards = self.accelerator.num_processes
            train_data.shard_index = self.accelerator.process_index
        self._group_of = {id(p): i for i, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        self.iterations = 0  # over the whole run
        self.drawn = 0  # batches taken from the stream: where a resume continues the caller's own batches
        self.rounds = 0  # calls of :meth:`repair` over the whole run: a tick's repair rounds (bookkeeping only)

    def repair(self, iters: int | None = None) -> tuple[float, int]:
        """Run one tick's minimal training; returns (mean of the last ``min_iters`` losses, iterations).

        With ``iters`` (the certifier's extra rounds) exactly that many iterations are run, without the
        threshold stop (a non-finite loss still stops them).
        """
        self.model.train()
        window: list[float] = []
        device = self.accelerator.device
        limit, threshold = (self.max_iters, self.loss_threshold) if iters is None else (iters, -math.inf)
        for i in range(1, limit + 1):
            batch = move_batch(next(self.stream), device)
            self.drawn += 1
            loss = self.loss_fn(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.optimizer.step()
            value = self.accelerator.reduce(loss.detach(), "mean") if self.distributed else loss.detach()
            window.append(value.item())  # the stopping rule needs it; one sync per batch
            if len(window) > self.min_iters:
                window.pop(0)
            if i >= self.min_iters and not math.isfinite(window[-1]):
                break
            if i >= self.min_iters and sum(window) / len(window) <= threshold:
                break
        self.iterations += i
        self.rounds += 1
        # Each iteration sets the gradients anew: between repairs they are dead, and the probes, point writes and
        # checkpoints that follow would hold them beside the model.
        self.optimizer.zero_grad(set_to_none=True)
        if self.sharded:
            self._share_buffers()
        return sum(window) / len(window), i

    def _share_buffers(self) -> None:
        """Every process takes the main process's buffers (BatchNorm's running statistics, which each process's own
        batches updated), as DDP's broadcast of the buffers before each forward gives under data parallelism: what
        the main process writes is what every process holds."""
        for b in self.module.buffers():
            torch.distributed.broadcast(b.data, src=0)

    def param_index(self, param: torch.Tensor) -> int:
        """The optimizer parameter group that holds ``param``."""
        return self._group_of[id(param)]

    def set_lr_factors(self, groups: list[int], factors: list[float]) -> None:
        """Set ``lr = base lr × factor`` for each listed parameter group (needs ``per_tensor_lr=True``)."""
        if len(self.optimizer.param_groups) == 1 and len(groups) > 1:
            raise RuntimeError("per-tensor learning rates need RepairTrainer(per_tensor_lr=True)")
        for g, f in zip(groups, factors, strict=True):
            self.optimizer.param_groups[g]["lr"] = self.base_lr * self.lr_scale * f

    def scale_lr(self, scale: float) -> None:
        """Every group's learning rate to ``scale`` times its unscaled value (its own factor kept)."""
        for g in self.optimizer.param_groups:
            g["lr"] = g["lr"] * scale / self.lr_scale
        self.lr_scale = scale

    def release(self) -> None:
        """Free the gradients and the optimizer's state (momentum): the training is over. The iteration count
        stays; a later :meth:`repair` would start without momentum."""
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer.state.clear()

    def state_dict(self) -> dict:
        """Optimizer state, iteration and round counts and the data position (a SeededLoader's own state, or the
        batches drawn from any other data)."""
        state = {"optimizer": self.optimizer.state_dict(), "iterations": self.iterations, "rounds": self.rounds}
        if isinstance(self.train_data, SeededLoader):
            state["data"] = self.train_data.state_dict()
        else:
            state["drawn"] = self.drawn
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (the batch stream continues from the saved position)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.iterations = int(state["iterations"])
        self.rounds = int(state.get("rounds", 0))  # a checkpoint of an earlier version did not count them
        if "data" in state and isinstance(self.train_data, SeededLoader):
            self.train_data.load_state_dict(state["data"])
            self.stream = batch_stream(self.train_data)
        elif "drawn" in state and not isinstance(self.train_data, SeededLoader):
            self.drawn = int(state["drawn"])
            self.stream = resumed_stream(self.train_data, self.drawn)
