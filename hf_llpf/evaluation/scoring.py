"""Scoring a model as it is: mean loss and accuracy over fixed batches, and the columns of one point.

:func:`score` is the one scoring function of hf_llpf: the evaluation of every point and the endpoint
metrics of ``hf-llpf train`` (:mod:`hf_llpf.training.endpoint`) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, NamedTuple

import torch
from torch import nn

from hf_llpf.batches import LossFn, batch_size_of, default_loss
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.layout import channels_last_batch, eval_view
from hf_llpf.evaluation.recalibration import recalibrate_bn

EVAL_COLUMNS = ("eval_train_loss", "eval_train_acc", "test_loss", "test_acc")
Scorer = Callable[..., dict[str, float]]
RECAL = "_recal"


def _labels_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, dict):
        return batch.get("labels")
    return batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None


def _correct(model: nn.Module, output: Any, batch: Any) -> tuple[int, int]:
    """Correct predictions and how many were counted (0, 0 when the labels are not classes)."""
    logits = getattr(output, "logits", output)
    labels = _labels_of(batch)
    if not isinstance(logits, torch.Tensor) or labels is None or labels.dtype.is_floating_point:
        return 0, 0
    name = type(model).__name__
    if labels.ndim >= 2 and (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")):
        # Causal language models predict token t+1 from position t (transformers shifts inside the loss too).
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    if logits.shape[:-1] != labels.shape:
        return 0, 0
    keep = labels != -100  # transformers' ignore index (padding, prompt tokens)
    hits = (logits.argmax(-1) == labels) & keep
    return int(hits.sum()), int(keep.sum())


class Sums(NamedTuple):
    """What :func:`score` adds up over batches: loss × batch size, examples, correct predictions, predictions
    counted. Sums of several processes' shares add up to the sums over all the batches."""

    loss: float = 0.0
    examples: int = 0
    hits: int = 0
    counted: int = 0

    def result(self) -> dict[str, float]:
        """``{"loss": mean loss, "acc": accuracy}`` (``acc`` ``nan`` when no label was a class).

        Raises:
            ConfigError: no example was scored.
        """
        if self.examples == 0:
            raise ConfigError("evaluation data: no batch to evaluate on (the split or subset is empty)")
        return {"loss": self.loss / self.examples, "acc": self.hits / self.counted if self.counted else math.nan}


@torch.no_grad()
def score_sums(model: nn.Module, batches: Iterable, *, loss_fn: LossFn | None = None) -> Sums:
    """The :class:`Sums` of ``model`` (as it is: mode unchanged) over ``batches``, which may hold none."""
    captured: list = []
    handle, runner, fast = None, model, False
    total, count, hits, counted = 0.0, 0, 0, 0
    try:
        for batch in batches:
            if handle is None:  # the first batch decides the layout the passes run in (hf_llpf.evaluation.layout)
                runner, fast = eval_view(model, batch, loss_fn)
                # The forward hook sees the output the loss function produced, so accuracy costs no second forward.
                handle = runner.register_forward_hook(lambda _m, _a, out: captured.append(out))
            captured.clear()
            n = batch_size_of(batch)
            total += float((loss_fn or default_loss)(runner, channels_last_batch(batch) if fast else batch)) * n
            count += n
            if captured:
                h, c = _correct(model, captured[-1], batch)
                hits, counted = hits + h, counted + c
    finally:
        if handle is not None:
            handle.remove()
    return Sums(total, count, hits, counted)


def score(model: nn.Module, batches: Iterable, *, loss_fn: LossFn | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (as it is: mode unchanged) over ``batches``.

    Convolutional models in eval mode on the CPU run channels-last (:mod:`hf_llpf.evaluation.layout`). The loss
    is ``loss_fn(model, batch)`` (default: cross-entropy, or the model's own ``outputs.loss`` for
    dict batches), weighted by the batch size. Accuracy is read from the model's output (logits argmax vs
    integer labels; token accuracy for causal language models); ``nan`` when the labels are not classes.

    Args:
        model: the model, on the batches' device.
        batches: ``(inputs, labels)`` tuples or dicts (a list, a loader, :class:`EvalBatches`, ...).
        loss_fn: the loss ``loss_fn(model, batch) -> scalar`` (a batch mean).

    Returns:
        ``{"loss": float, "acc": float}``.

    Raises:
        ConfigError: ``batches`` holds no batch.
    """
    return score_sums(model, batches, loss_fn=loss_fn).result()


def _columns(scorer: Scorer, sets: Any, loss_fn: LossFn | None, suffix: str) -> dict[str, float]:
    train = scorer(sets.train, loss_fn=loss_fn)
    row = {f"eval_train_loss{suffix}": train["loss"], f"eval_train_acc{suffix}": train["acc"]}
    if sets.test is not None:  # data without a test split: no test column, so that nothing claims a test figure
        test = scorer(sets.test, loss_fn=loss_fn)
        row |= {f"test_loss{suffix}": test["loss"], f"test_acc{suffix}": test["acc"]}
    return row


def evaluate_point(
    model: nn.Module,
    sets: Any,
    *,
    loss_fn: LossFn | None = None,
    recalibrate: bool = False,
    recal_batches: int | None = None,
    scorer: Scorer | None = None,
) -> dict[str, float]:
    """The evaluation columns of the point currently loaded in ``model``.

    Args:
        model: the model holding the point (put in eval mode).
        sets: the :class:`~hf_llpf.evaluation.sets.EvalSets` (its ``train`` and ``test`` are used).
        loss_fn: the path's loss.
        recalibrate: also score after BatchNorm recalibration on the training subset.
        recal_batches: batches used by the recalibration (``None``: all).
        scorer: ``scorer(batches, loss_fn=...)`` → ``{"loss", "acc"}`` of ``model`` (default: :func:`score`; the
            sharded evaluation's merges the processes' shares).

    Returns:
        ``eval_train_loss``, ``eval_train_acc``, ``test_loss``, ``test_acc`` (the last two only when ``sets`` has a
        test split), and with ``recalibrate`` the same columns with ``_recal`` after BatchNorm recalibration on the
        training subset (which changes the model's running statistics: load the point again before reusing the
        model).
    """
    model.eval()
    scorer = scorer or partial(score, model)
    row = _columns(scorer, sets, loss_fn, "")
    if recalibrate:
        recalibrate_bn(model, sets.train, max_batches=recal_batches)
        row |= _columns(scorer, sets, loss_fn, RECAL)
    return row


__all__ = ["EVAL_COLUMNS", "RECAL", "Sums", "evaluate_point", "score", "score_sums"]
