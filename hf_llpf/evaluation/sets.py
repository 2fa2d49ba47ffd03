"""The fixed data of an evaluation: the same batches, in the same order, for every point (docs/evaluation.md).

A path is judged on a seeded training subset, the whole test split and a smaller seeded continuity subset;
every point and every point of the linear baseline sees exactly the same examples, so their figures compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hf_llpf.batches import batch_size_of, move_batch
from hf_llpf.config import DataConfig, build
from hf_llpf.data import DataBundle, ImageData, SeededLoader, load_data
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.run import Path
from hf_llpf.run.layout import CONFIG_YAML

# Normalised batches of a split are kept (on the device) when they hold at most this many numbers (256 MB as
# float32); larger splits are normalised again for every point instead.
_CACHE_LIMIT = 1 << 26


class EvalBatches:
    """Fixed batches of one split: unshuffled, unaugmented, the same for every point.

    Args:
        tensors: the split in memory.
        indices: which examples (sorted); ``None`` for all.
        config: the data's normalisation (mean, std).
        batch_size: examples per batch.
        device: where the batches are used.
    """

    def __init__(
        self,
        tensors: ImageData,
        *,
        indices: torch.Tensor | None,
        config: DataConfig,
        batch_size: int,
        device: torch.device,
    ):
        data = tensors if indices is None else ImageData(tensors.images[indices], tensors.labels[indices])
        self.loader = SeededLoader(
            data, batch_size=batch_size, seed=0, shuffle=False, augment=False, mean=config.mean, std=config.std
        )
        self.device = device
        self.num_examples = len(data)
        self._cached: list | None = None
        if data.images.numel() <= _CACHE_LIMIT:
            self._cached = [move_batch(b, device) for b in self.loader]

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self._cached is not None:
            yield from self._cached
        else:
            for batch in self.loader:
                yield move_batch(batch, self.device)


class BatchSource:
    """User-given batches (a re-iterable such as an unshuffled ``DataLoader`` or a list), optionally cut short.

    Args:
        batches: ``(inputs, labels)`` tuples or dicts; iterated once per evaluated point.
        device: where the batches are used.
        limit: stop after the batch that reaches this many examples (``None``: all).

    Raises:
        ConfigError: ``batches`` is a one-shot iterator (it would be empty from the second point on).
    """

    def __init__(self, batches: Any, *, device: torch.device, limit: int | None = None):
        if iter(batches) is batches:
            raise ConfigError("evaluation data: a one-shot iterator was given; pass a list or a DataLoader")
        self.batches, self.device, self.limit = batches, device, limit
        self.num_examples = sum(batch_size_of(b) for b in self)

    def __iter__(self) -> Iterator[Any]:
        seen = 0
        for batch in self.batches:
            if self.limit is not None and seen >= self.limit:
                return
            seen += batch_size_of(batch)
            yield move_batch(batch, self.device)


@dataclass
class EvalSets:
    """The fixed data of one evaluation.

    Attributes:
        train: the seeded training subset (every point's train loss/accuracy and the BN recalibration).
        test: the whole test split.
        continuity: a smaller seeded training subset for the interior points of each segment.
    """

    train: EvalBatches | BatchSource
    test: EvalBatches | BatchSource
    continuity: EvalBatches | BatchSource


def subset_indices(n: int, k: int | None, seed: int) -> torch.Tensor | None:
    """The sorted first ``k`` of a seeded permutation of ``range(n)`` (``None``: all ``n`` examples).

    Every fixed subset of hf_llpf (evaluation training subset, continuity subset, probe set) is such a prefix,
    so a smaller one is part of a larger one with the same seed.
    """
    if k is None or k >= n:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:k].sort().values


def make_eval_sets(
    data: DataBundle,
    *,
    train_subset: int | None = None,
    continuity_subset: int = 512,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | None = None,
) -> EvalSets:
    """Build the fixed evaluation batches.

    Both training subsets are prefixes of one seeded permutation, so the continuity subset is part of the
    training subset (or all of it).

    Args:
        data: the loaded data.
        train_subset: number of training examples (``None``: all).
        continuity_subset: number of training examples for continuity.
        batch_size: evaluation batch size.
        seed: seed of the subsets' permutation.
        device: where the batches are used (CPU by default).

    Returns:
        The three sets.
    """
    device = device or torch.device("cpu")
    n = len(data.train_tensors)
    k = n if train_subset is None else min(train_subset, n)
    train_idx = subset_indices(n, k, seed)
    cont_idx = subset_indices(n, min(continuity_subset, k), seed)
    common = {"config": data.config, "batch_size": batch_size, "device": device}
    return EvalSets(
        train=EvalBatches(data.train_tensors, indices=train_idx, **common),
        test=EvalBatches(data.test_tensors, indices=None, **common),
        continuity=EvalBatches(data.train_tensors, indices=cont_idx, **common),
    )


def sets_for(
    data: DataBundle | dict,
    *,
    train_subset: int | None,
    continuity_subset: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> EvalSets:
    """The evaluation sets of loaded data, or of the caller's own ``{"train": batches, "test": batches}``.

    The caller's own batches are used as given: ``train_subset``, ``batch_size`` and ``seed`` do not apply to
    them; the continuity set is the first ``continuity_subset`` examples of ``data["train"]``.
    """
    if isinstance(data, DataBundle):
        return make_eval_sets(
            data,
            train_subset=train_subset,
            continuity_subset=continuity_subset,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
    return EvalSets(
        BatchSource(data["train"], device=device),
        BatchSource(data["test"], device=device),
        BatchSource(data["train"], device=device, limit=continuity_subset),
    )


def resolve_data(path: Path, data: Any) -> DataBundle | dict:
    """The data to judge ``path`` on: ``data`` as given, loaded from a spec, or the run's recorded data.

    Args:
        path: the path (its ``llpf_config.yaml`` ``data`` is the default).
        data: a :class:`~hf_llpf.data.DataBundle`, ``{"train": ..., "test": ...}`` batches, a data spec
            (name or dict), a ``DataConfig``, or ``None``.

    Raises:
        RunDirectoryError: ``data`` is ``None`` and the run directory has no ``llpf_config.yaml``.
        ConfigError: ``data`` is ``None`` and ``llpf_config.yaml`` has no ``data`` section.
    """
    if isinstance(data, DataBundle) or (isinstance(data, dict) and set(data) == {"train", "test"}):
        return data
    if data is None:
        if not (path.root / CONFIG_YAML).is_file():
            raise RunDirectoryError(
                f"{str(path.root)!r} has no llpf_config.yaml to say which data the path was built on; pass data="
            )
        data = path.config.get("data")
        if data is None:
            raise ConfigError("llpf_config.yaml has no 'data' section; pass data= (a data spec or DataBundle)")
    if isinstance(data, dict):
        data = build(DataConfig, data)
    return load_data(data)


__all__ = ["BatchSource", "EvalBatches", "EvalSets", "make_eval_sets", "resolve_data", "sets_for", "subset_indices"]
