"""The fixed data of an evaluation: the same batches, in the same order, for every point (docs/evaluation.md).

A path is judged on a seeded training subset, the whole test split (when the data have one) and a smaller seeded
continuity subset; every point and every point of the linear baseline sees exactly the same examples, so their
figures compare.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger

from hf_llpf.batches import batch_size_of, move_batch
from hf_llpf.config import DataConfig
from hf_llpf.data.bundle import DataBundle, SeededLoader, load_data
from hf_llpf.data.intake import eval_batches, read_data
from hf_llpf.data.text import TextBundle
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.run import RunPath
from hf_llpf.run.layout import CONFIG_YAML

logger = get_logger(__name__)

# Normalised batches of a split are kept (on the device) when they hold at most this many numbers (256 MB as
# float32); larger splits are normalised again for every point instead.
_CACHE_LIMIT = 1 << 26


class EvalBatches:
    """Fixed batches of one split: unshuffled, unaugmented, the same for every point.

    Args:
        loader: the split's fixed batches (``DataBundle.eval_loader``: images, or text dicts).
        device: where the batches are used.
        cache: keep the batches on the device (small splits), instead of building them again for every point.
        origin: how the examples were chosen (see :class:`EvalSets`; ``None``: the whole split).
    """

    def __init__(self, loader: SeededLoader, *, device: torch.device, cache: bool, origin: dict | None = None):
        self.loader = loader
        self.device = device
        self.num_examples = len(loader.data)
        self.origin = origin or {"form": "whole split"}
        self._cached: list | None = None
        if cache:
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
        origin: how the examples were chosen (see :class:`EvalSets`; ``None``: the caller's own batches, used
            whole).

    Raises:
        ConfigError: ``batches`` is a one-shot iterator (it would be empty from the second point on).
    """

    def __init__(self, batches: Any, *, device: torch.device, limit: int | None = None, origin: dict | None = None):
        if iter(batches) is batches:
            raise ConfigError("evaluation data: a one-shot iterator was given; pass a list or a DataLoader")
        self.batches, self.device, self.limit = batches, device, limit
        sizes = [batch_size_of(b) for b in self]
        self.num_examples = sum(sizes)
        self.origin = origin or {"form": "own batches", "batches": len(sizes)}

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
        train: the training examples (every point's train loss/accuracy and the BN recalibration): a seeded
            subset of loaded data, or the caller's own batches whole.
        test: the whole test split (``None``: the data given have no test split; the evaluation has no test
            column).
        continuity: a smaller seeded training subset for the interior points of each segment.

    Each set's ``origin`` says how its examples were chosen (recorded as ``summary["evaluation"]["train_data"]``):
    ``{"form": "seeded subset", "seed": S}`` or ``{"form": "whole split"}`` for loaded data, ``{"form": "own
    batches", "batches": N}`` for the caller's own (a list, a ``DataLoader``, a ``Dataset`` read in batches), which
    ``train_subset`` and ``seed`` never cut.
    """

    train: EvalBatches | BatchSource
    test: EvalBatches | BatchSource | None
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
    n = data.split_size("train")
    k = n if train_subset is None else min(train_subset, n)
    train_idx = subset_indices(n, k, seed)
    cont_idx = subset_indices(n, min(continuity_subset, k), seed)

    def batches(split: str, indices: torch.Tensor | None) -> EvalBatches:
        loader = data.eval_loader(split, indices=indices, batch_size=batch_size)
        whole = data.eval_numel(split)
        cached = whole if indices is None else whole * len(indices) // max(data.split_size(split), 1)
        origin = {"form": "whole split"} if indices is None else {"form": "seeded subset", "seed": seed}
        return EvalBatches(loader, device=device, cache=cached <= _CACHE_LIMIT, origin=origin)

    test = batches("test", None)
    return EvalSets(train=batches("train", train_idx), test=test, continuity=batches("train", cont_idx))


def sets_for(
    data: DataBundle | dict,
    *,
    train_subset: int | None,
    continuity_subset: int,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> EvalSets:
    """The evaluation sets of loaded data, or of the caller's own ``{"train": source, "test": source or None}``
    (:func:`resolve_data`).

    The caller's own batches are read as :func:`~hf_llpf.data.intake.eval_batches` fixes them (a dataset in batches
    of ``batch_size``, a shuffling ``DataLoader`` in order): ``train_subset`` and ``seed`` do not apply to them; the
    continuity set is the first ``continuity_subset`` examples of ``data["train"]``. Without a test split the sets
    have no ``test`` and the evaluation no test column.
    """
    if isinstance(data, (DataBundle, TextBundle)):
        return make_eval_sets(
            data,
            train_subset=train_subset,
            continuity_subset=continuity_subset,
            batch_size=batch_size,
            seed=seed,
            device=device,
        )
    train = eval_batches(data["train"], batch_size=batch_size)
    test = None if data.get("test") is None else BatchSource(eval_batches(data["test"], batch_size=batch_size),
                                                             device=device)  # fmt: skip
    # Sets of this module passed on as batches (compare's recorded probes) keep saying how they were chosen.
    origin = getattr(data["train"], "origin", None)
    return EvalSets(
        BatchSource(train, device=device, origin=origin),
        test,
        BatchSource(train, device=device, limit=continuity_subset, origin=origin),
    )


def resolve_data(path: RunPath, data: Any) -> DataBundle | dict:
    """The data to judge ``path`` on, read as every entry point reads data (:func:`~hf_llpf.data.intake.read_data`):
    loaded data as given, a spec loaded, the caller's own splits as ``{"train": source, "test": source or None}``
    (a dataset or batches alone: the training split, no test split), or the run's recorded data.

    Args:
        path: the path (its ``llpf_config.yaml`` ``data`` is the default).
        data: any form of :mod:`hf_llpf.data.intake`, or ``None``.

    Raises:
        RunDirectoryError: ``data`` is ``None`` and the run directory has no ``llpf_config.yaml``.
        ConfigError: ``data`` is ``None`` and ``llpf_config.yaml`` has no ``data`` section, or records data passed
            from Python (which must be passed again).
        DataMismatchError: ``data`` is none of the forms.
    """
    given = read_data(data)
    if given.form == "default":
        given = read_data(_recorded_spec(path), field="llpf_config.yaml data")
    if given.form == "bundle":
        return given.bundle
    if given.form == "python":
        return {"train": given.train, "test": given.test}
    spec = given.spec
    if isinstance(spec, DataConfig) and spec.source.startswith("<"):
        raise ConfigError(
            f"{str(path.root)!r} was built on data passed from Python ({spec.source}, recorded: {spec.recorded}); "
            "pass the same data again: data=batches (the training split alone: no test figure), "
            "data={'train': batches, 'test': batches}, or a DataBundle"
        )
    bundle = load_data(spec)
    _warn_if_changed(spec, bundle.config)
    return bundle


def _recorded_spec(path: RunPath) -> Any:
    """The data ``llpf_config.yaml`` records.

    Raises:
        RunDirectoryError: the run directory has no ``llpf_config.yaml``. ConfigError: it has no ``data`` section.
    """
    if not (path.root / CONFIG_YAML).is_file():
        raise RunDirectoryError(
            f"{str(path.root)!r} has no llpf_config.yaml to say which data the path was built on; pass data="
        )
    data = path.config.get("data")
    if data is None:
        raise ConfigError("llpf_config.yaml has no 'data' section; pass data= (a data spec or DataBundle)")
    return data


def _warn_if_changed(was: Any, now: DataConfig) -> None:
    """The data read now against the fingerprints the run recorded (same files, same tokenizer)."""
    old = getattr(was, "recorded", None) or {}
    new = now.recorded or {}
    changed = [k for k in ("train_fingerprint", "test_fingerprint", "tokenizer_sha256") if old.get(k) != new.get(k)]
    if old and changed:
        logger.warning(
            f"data {now.source!r}: {', '.join(changed)} differ from what the run recorded ({old.get(changed[0])} → "
            f"{new.get(changed[0])}): the data or tokenizer changed since the path was built (or were read from "
            "another copy); the figures describe the data as they are now"
        )


__all__ = ["BatchSource", "EvalBatches", "EvalSets", "make_eval_sets", "resolve_data", "sets_for", "subset_indices"]
