"""The probe set: the fixed training examples on which a run certifies its path (docs/algorithm.md §10).

The probe is judged exactly as :func:`hf_llpf.evaluation.evaluate_path` judges a point: the model in eval mode,
the same loss function, in the same memory layout (:mod:`hf_llpf.evaluation.layout`), summed as
:func:`~hf_llpf.evaluation.scoring.score` sums it. Its examples are the
first ``size`` of the seeded permutation that the evaluation's subsets are prefixes of, so with the default
seed the probe is the evaluation's continuity subset, and the training subset of ``train_subset=size``.
"""

from __future__ import annotations

import math
from typing import Any

import datasets
import torch
from torch import nn

from hf_llpf.batches import LossFn, batch_size_of, default_loss, move_batch
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.layout import channels_last_batch, eval_view
from hf_llpf.evaluation.sets import EvalBatches, subset_indices


class ProbeSet:
    """Fixed batches and the loss that certifies a point: ``probe.loss(model)``.

    Args:
        batches: the probe's batches, already on the training device (iterated once per probe).
        loss_fn: the path's loss (``None``: the default of :func:`~hf_llpf.evaluation.scoring.score`).
        accelerator: with several processes, the probe loss is averaged across them so that every process
            takes the same decision (they hold the same weights and the same batches).
    """

    def __init__(self, batches: Any, *, loss_fn: LossFn | None = None, accelerator: Any = None):
        self.batches, self.loss_fn, self.accelerator = graduated(list(batches)), loss_fn, accelerator
        self.num_examples = sum(batch_size_of(b) for b in self.batches)
        self.calls = 0  # probes so far
        self.stopped = 0  # of which stopped early, once above the value asked about
        self._cl_batches: list | None = None
        self.examples_run = 0  # examples evaluated by all probes so far (the probing work, machine-independent)
        self.log: list[int] = []  # examples evaluated per probe
        if self.num_examples == 0:
            raise ConfigError("probe_size: the probe set is empty (the training data holds no example)")

    def _channels_last(self) -> list:
        """The probe's batches in the channels-last layout (converted once)."""
        if self._cl_batches is None:
            self._cl_batches = [channels_last_batch(b) for b in self.batches]
        return self._cl_batches

    @torch.no_grad()
    def loss(
        self, model: nn.Module, *, above: float | None = None, estimate: bool = False, first: int | None = None
    ) -> float:
        """Eval-mode mean loss of ``model`` over the probe examples; the model's mode is restored after.

        The full value equals :func:`~hf_llpf.evaluation.scoring.score`'s loss on the same batches (the same
        sum, in the same order). ``above`` lets a pass whose answer is "above ``above``" stop early; only for
        the default loss (never negative) on one process (several processes must all reach the average):

        - always when the examples seen already put the mean over ``above``: the value returned is then the
          partial sum over all the examples, a lower bound itself above ``above`` ("above" decided exactly);
        - with ``estimate``, also when the mean of the examples seen is above ``above`` by two standard errors
          (from the spread of the batch means): the value returned is that mean, an estimate. For decisions
          whose mistake costs only work (one more repair round), never for a certificate;
        - with ``first``, at the latest once that many examples are seen: the value returned is their mean, an
          estimate for a decision on a coarse bar (a segment far above the ceiling).
        """
        acc = self.accelerator
        several = acc is not None and acc.num_processes > 1
        early = above is not None and self.loss_fn is None and not several
        loss_fn = self.loss_fn or default_loss
        was_training = model.training
        model.eval()
        sums, counts = [], []
        try:
            runner, fast = eval_view(model, self.batches[0], self.loss_fn)  # as score runs it
            for batch in self._channels_last() if fast else self.batches:
                counts.append(batch_size_of(batch))
                self.examples_run += counts[-1]
                sums.append(float(loss_fn(runner, batch)) * counts[-1])
                if early and (stopped := _stop(sums, counts, self.num_examples, above, estimate)) is not None:
                    self._count(counts, stopped=True)
                    return stopped
                if early and first is not None and sum(counts) >= min(first, self.num_examples):
                    self._count(counts, stopped=True)
                    return sum(sums) / sum(counts)
        finally:
            model.train(was_training)
        self._count(counts, stopped=False)
        value = sum(sums) / self.num_examples  # summed in order from 0, as score sums
        if several:
            value = float(acc.reduce(torch.tensor(value, dtype=torch.float64, device=acc.device), "mean"))
        return float(value)

    def _count(self, counts: list[int], *, stopped: bool) -> None:
        """Book one probe: ``counts``, the sizes of the batches it evaluated."""
        self.calls += 1
        self.stopped += int(stopped)
        self.log.append(sum(counts))


def _stop(sums: list[float], counts: list[int], total: int, above: float, estimate: bool) -> float | None:
    """The value to stop a probe with, once its batches so far decide "above" (``None``: go on)."""
    seen_sum, seen = sum(sums), sum(counts)
    if seen_sum > above * total:
        return seen_sum / total
    if not estimate or len(sums) < 2 or seen >= total:
        return None
    mean = seen_sum / seen
    # A batch mean of n examples varies as sigma^2 / n: n·(batch mean - mean)^2 estimates the examples' variance.
    variance = sum(s * s / c - 2 * s * mean + c * mean * mean for s, c in zip(sums, counts, strict=True))
    variance = max(variance, 0.0) / (len(sums) - 1)
    error = math.sqrt(variance / seen * (1 - seen / total))  # with the finite-population correction
    return mean if mean - 2 * error > above else None


def graduated(batches: list) -> list:
    """The same examples in the same order, re-cut into batches of 32, 32, 64, then 128 (:data:`CHUNKS`).

    Small first batches let a probe whose answer is "above" stop after 32 or 64 examples; the large later
    ones make a full pass cheaper than batches of 64. Batches that cannot be joined (text padded to different
    lengths, anything but tensors) are kept as they are.
    """
    joined = _join(batches)
    if joined is None:
        return batches
    total, out, start = batch_size_of(joined), [], 0
    for size in _chunk_sizes(total):
        out.append(_slice(joined, start, start + size))
        start += size
    return out


CHUNKS = (32, 32, 64)  # then 128 each
_LATER = 128


def _chunk_sizes(total: int) -> list[int]:
    sizes, left = [], total
    for size in (*CHUNKS, *([_LATER] * (total // _LATER + 1))):
        if left <= 0:
            break
        sizes.append(min(size, left))
        left -= sizes[-1]
    return sizes


def _join(batches: list) -> Any:
    """All batches concatenated along the first axis, or ``None`` when they do not join."""
    if len(batches) == 0 or not all(type(b) is type(batches[0]) for b in batches):
        return None
    first = batches[0]
    keys = list(first) if isinstance(first, dict) else range(len(first)) if isinstance(first, (list, tuple)) else None
    if keys is None:
        return None
    columns = {}
    for k in keys:
        parts = [b[k] for b in batches]
        if not all(isinstance(t, torch.Tensor) and t.ndim >= 1 and t.shape[1:] == parts[0].shape[1:] for t in parts):
            return None
        columns[k] = torch.cat(parts)
    return columns if isinstance(first, dict) else _like(first, [columns[k] for k in keys])


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return _like(batch, [v[start:stop] for v in batch])


def _like(batch: Any, values: list) -> Any:
    """A list, tuple or named tuple of ``values``, as ``batch`` is."""
    return type(batch)(*values) if hasattr(batch, "_fields") else type(batch)(values)


def build_probe(
    train_data: Any,
    loader: Any,
    bundle: Any,
    *,
    size: int,
    seed: int = 0,
    batch_size: int = 64,
    device: torch.device,
    loss_fn: LossFn | None = None,
    accelerator: Any = None,
) -> ProbeSet:
    """The probe set of a run's training data.

    Args:
        train_data: what the caller passed as training data (a ``datasets.Dataset`` is subset directly).
        loader: the training batch source built from it (used for any other iterable of batches).
        bundle: the loaded data when it came from a spec (a ``DataBundle`` or ``TextBundle``: its fixed batches).
        size: number of probe examples (all of them when the training data is smaller).
        seed: seed of the subset's permutation (the evaluation's default is 0).
        batch_size: probe batch size (small batches let a probe above the ceiling stop early; the loss
            changes only by rounding).
        device: where the probe runs (the training device).
        loss_fn: the path's loss.
        accelerator: for the cross-process average.
    """
    if bundle is not None:  # image or text data loaded from a spec: the evaluation's own fixed batches
        indices = subset_indices(bundle.split_size("train"), size, seed)
        loader = bundle.eval_loader("train", indices=indices, batch_size=batch_size)
        batches = list(EvalBatches(loader, device=device, cache=True))
    elif isinstance(train_data, datasets.Dataset):
        idx = subset_indices(len(train_data), size, seed)
        ds = train_data.with_format("torch")
        ds = ds if idx is None else ds.select(idx.tolist())
        batches = [move_batch(b, device) for b in torch.utils.data.DataLoader(ds, batch_size=batch_size)]
    else:
        batches = _first_examples(loader, size, device)
    return ProbeSet(batches, loss_fn=loss_fn, accelerator=accelerator)


def _first_examples(loader: Any, size: int, device: torch.device) -> list:
    """The first ``size`` examples of one pass over ``loader`` (its own order: seed a shuffled loader)."""
    out, seen = [], 0
    for batch in loader:
        n = batch_size_of(batch)
        if seen + n > size:
            batch = _head(batch, size - seen)
            n = size - seen
        out.append(move_batch(batch, device))
        seen += n
        if seen >= size:
            break
    return out


def _head(batch: Any, k: int) -> Any:
    if isinstance(batch, dict):
        return {key: v[:k] if isinstance(v, torch.Tensor) else v for key, v in batch.items()}
    return type(batch)(v[:k] if isinstance(v, torch.Tensor) else v for v in batch)


__all__ = ["ProbeSet", "build_probe"]
