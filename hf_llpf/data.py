"""Data: a data spec becomes train/test ``datasets.Dataset`` s and seeded, resumable batch loaders.

:func:`load_data` is the one entry point: it reads the spec (:mod:`hf_llpf.sources`: ``"digits"``, a Hub id, a
local file or folder), decides the task (:mod:`hf_llpf.task`) and builds an image :class:`DataBundle` here or a
text bundle (:mod:`hf_llpf.text`: text classification, causal LM). docs/data.md lists the options.

Images are decoded once into a uint8 tensor kept in memory, or, for large sets, per batch
(:mod:`hf_llpf.images`); normalisation and the optional CIFAR augmentation (random crop with padding 4 +
horizontal flip) run on whole batches. That keeps the
minimal-training loop free of per-sample Python and worker processes (the reference's fresh 8-worker
DataLoader per tick was 9x slower than needed), and lets a loader resume at any batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from hf_llpf.config import DataConfig, build
from hf_llpf.errors import DataMismatchError, UnknownNameError
from hf_llpf.images import LazyImages, image_tensors
from hf_llpf.sources import BUILTIN_DATASETS, check_column, describe_columns, feature_type, read_splits
from hf_llpf.task import IMAGE_COLUMNS, LABEL_COLUMNS, data_task, pick_column

__all__ = ["BUILTIN_DATASETS", "DataBundle", "ImageData", "SeededLoader", "cifar_augment", "load_data"]


@dataclass
class ImageData:
    """One split: uint8 images ``N, C, H, W`` (in memory, or :class:`~hf_llpf.images.LazyImages` decoded per
    batch) and int64 labels ``N``."""

    images: torch.Tensor | LazyImages
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DataBundle:
    """What :func:`load_data` returns: the two ``datasets.Dataset`` splits and their tensors.

    Attributes:
        train, test: the splits as ``datasets.Dataset`` (columns as in the source).
        train_tensors, test_tensors: the same splits decoded to uint8 tensors (resized if asked).
        num_classes: number of label classes.
        config: the resolved :class:`~hf_llpf.config.DataConfig`.
    """

    train: datasets.Dataset
    test: datasets.Dataset
    train_tensors: ImageData
    test_tensors: ImageData
    num_classes: int
    config: DataConfig

    task = "image"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return tuple(self.train_tensors.images.shape[1:])

    def split_size(self, split: str) -> int:
        """Examples in ``split`` (``"train"`` or ``"test"``)."""
        return len(self.train_tensors if split == "train" else self.test_tensors)

    def labels(self, split: str) -> torch.Tensor:
        """The class labels of ``split``."""
        return (self.train_tensors if split == "train" else self.test_tensors).labels

    def eval_loader(self, split: str, *, indices: torch.Tensor | None, batch_size: int) -> SeededLoader:
        """Fixed batches (unshuffled, unaugmented) of ``split``, or of its examples ``indices``."""
        data = self.train_tensors if split == "train" else self.test_tensors
        if indices is not None:
            images = data.images.subset(indices) if isinstance(data.images, LazyImages) else data.images[indices]
            data = ImageData(images, data.labels[indices])
        mean, std = self.config.mean, self.config.std
        return SeededLoader(data, batch_size=batch_size, seed=0, shuffle=False, augment=False, mean=mean, std=std)

    def eval_numel(self, split: str) -> int:
        """Numbers in the normalised batches of ``split`` (whether the evaluation may keep them on the device)."""
        return (self.train_tensors if split == "train" else self.test_tensors).images.numel()

    def loader(
        self,
        split: str = "train",
        *,
        batch_size: int,
        seed: int,
        shuffle: bool | None = None,
        augment: bool | None = None,
        drop_last: bool = False,
    ) -> SeededLoader:
        """A seeded loader over one split; training defaults: shuffled, augmented if the config says so."""
        is_train = split == "train"
        data = self.train_tensors if is_train else self.test_tensors
        return SeededLoader(
            data,
            batch_size=batch_size,
            seed=seed,
            shuffle=is_train if shuffle is None else shuffle,
            augment=(is_train and self.config.augment) if augment is None else augment,
            mean=self.config.mean,
            std=self.config.std,
            drop_last=drop_last,
        )


class SeededLoader:
    """Batches ``(inputs, labels)`` from in-memory tensors, in an order fixed by ``seed`` and the epoch.

    Iterating gives one epoch. ``stream()`` gives an endless stream across epochs whose position is
    captured by :meth:`state_dict` and restored by :meth:`load_state_dict`, so a resumed run draws exactly
    the batches an uninterrupted run would have. ``num_shards``/``shard_index`` give each data-parallel
    process its own slice of every batch.
    """

    def __init__(
        self,
        data: ImageData,
        *,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        augment: bool = False,
        mean: tuple[float, ...] = (0.5,),
        std: tuple[float, ...] = (0.5,),
        drop_last: bool = False,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        self._init_stream(data, batch_size, seed, shuffle, drop_last, num_shards, shard_index)
        self.augment = augment
        c = data.images.shape[1]
        self._mean = torch.tensor(_per_channel(mean, c), dtype=torch.float32).view(1, c, 1, 1)
        self._std = torch.tensor(_per_channel(std, c), dtype=torch.float32).view(1, c, 1, 1)

    def _init_stream(
        self, data, batch_size: int, seed: int, shuffle: bool, drop_last: bool, num_shards: int, shard_index: int
    ) -> None:
        """The order and position state every loader of this kind shares (images here, text in hf_llpf.text)."""
        if batch_size < 1:
            raise UnknownNameError("batch_size", batch_size, ["a positive integer"])
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.num_shards, self.shard_index = num_shards, shard_index
        self.epoch, self.position = 0, 0  # position: batches already drawn in this epoch

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(len(self.data))
        g = torch.Generator().manual_seed(_mix(self.seed, epoch))
        return torch.randperm(len(self.data), generator=g)

    def _batch(self, order: torch.Tensor, epoch: int, b: int) -> Any:
        idx = order[b * self.batch_size : (b + 1) * self.batch_size]
        if self.num_shards > 1:
            idx = idx[self.shard_index :: self.num_shards]
        return self._make(idx, epoch, b, augment=self.augment)

    def first_batch(self, n: int = 8) -> Any:
        """The first ``n`` examples as one batch, in data order, unaugmented, without moving the stream."""
        return self._make(torch.arange(min(n, len(self.data))), 0, 0, augment=False)

    def _make(self, idx: torch.Tensor, epoch: int, b: int, *, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.data.images[idx].float().div_(255.0)  # B, C, H, W in [0, 1]
        if augment:
            # The augmentation's randomness depends only on (seed, epoch, batch): resumable and reproducible.
            g = torch.Generator().manual_seed(_mix(self.seed, epoch, b + 1))
            x = cifar_augment(x, generator=g)
        x = (x - self._mean) / self._std
        return x, self.data.labels[idx]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(self.epoch)
        for b in range(len(self)):
            yield self._batch(order, self.epoch, b)
        self.epoch += 1

    def stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless batches across epochs, continuing from the current ``(epoch, position)``."""
        while True:
            order = self._order(self.epoch)
            while self.position < len(self):
                b = self.position
                self.position += 1
                yield self._batch(order, self.epoch, b)
            self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        """The stream position (enough to resume exactly)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a position saved by :meth:`state_dict`."""
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])


def cifar_augment(x: torch.Tensor, *, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation on a batch: random crop with zero padding ``pad`` and horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # B, C, H+2p, W+2p
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    rows = (dy.view(b, 1) + torch.arange(h).view(1, h)).view(b, 1, h, 1)  # B, 1, H, 1
    cols = dx.view(b, 1) + torch.arange(w).view(1, w)  # B, W
    cols = torch.where(flip.view(b, 1), cols.flip(1), cols).view(b, 1, 1, w)  # B, 1, 1, W
    bi = torch.arange(b).view(b, 1, 1, 1)
    ci = torch.arange(x.shape[1]).view(1, -1, 1, 1)
    return padded[bi, ci, rows, cols]


def load_data(spec: str | DataConfig, *, tokenizer: Any = None, **options) -> Any:
    """Turn a data spec into train/test datasets and their batches: images, text classification or causal LM.

    Args:
        spec: ``"digits"``, a Hub dataset id, a local path, or a :class:`~hf_llpf.config.DataConfig`.
        tokenizer: the tokenizer of text data (default: ``DataConfig.tokenizer``, loaded with ``AutoTokenizer``).
        **options: fields of :class:`~hf_llpf.config.DataConfig` (``image_column``, ``label_column``,
            ``text_column``, ``max_length``, ``task``, ``train_split``, ``test_split``, ``image_size``, ...).

    Returns:
        A :class:`DataBundle` (images) or a :class:`hf_llpf.text.TextBundle` (text), whose ``config`` is the
        resolved settings (the columns used, ``recorded``: task, example counts, fingerprints).

    Raises:
        UnknownNameError: unknown dataset, split or column (the message lists what exists).
        OfflineError: a Hub dataset was asked for while the Hub cannot be reached.
        DataMismatchError: a column of the wrong kind, or labels that are not classes.
    """
    config = spec if isinstance(spec, DataConfig) else build(DataConfig, {"source": spec, **options})
    train, test = read_splits(config)
    return build_bundle(config, train, test, tokenizer=tokenizer)


def build_bundle(
    config: DataConfig,
    train: datasets.Dataset,
    test: datasets.Dataset,
    *,
    tokenizer: Any = None,
    channels: int | None = None,
) -> Any:
    """The bundle of splits already read, for ``config.task`` (``auto``: from the columns alone); images are
    converted to ``channels`` (the model's, when known)."""
    task = data_task(train, config) if config.task == "auto" else config.task
    if task != "image":
        from hf_llpf.text import text_bundle

        return text_bundle(config.model_copy(update={"task": task}), train, test, tokenizer=tokenizer)
    image_col = pick_column(train, config.image_column, IMAGE_COLUMNS, "image_column")
    label_col = pick_column(train, config.label_column, LABEL_COLUMNS, "label_column")
    check_column(test, image_col, "image_column")
    check_column(test, label_col, "label_column")
    for ds in (train, test):
        check_labels(ds, label_col)
    train_t, test_t = (_split_tensors(ds, image_col, label_col, config, channels) for ds in (train, test))
    if train_t.images.shape[1:] != test_t.images.shape[1:]:  # e.g. grey train and colour test images
        raise DataMismatchError(
            f"data {config.source!r}: train images are {tuple(train_t.images.shape[1:])} and test images "
            f"{tuple(test_t.images.shape[1:])} (C, H, W); pass data.image_size=N (and a model with fixed channels)"
        )
    _check_channels(config, train_t.images.shape[1])
    feature = train.features[label_col]
    num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else int(train_t.labels.max()) + 1
    resolved = config.model_copy(
        update={"task": "image", "image_column": image_col, "label_column": label_col, "recorded": None}
    )
    resolved = resolved.model_copy(update={"recorded": recorded(resolved, train, test, num_classes=num_classes)})
    return DataBundle(train, test, train_t, test_t, num_classes, resolved)


def _split_tensors(ds: datasets.Dataset, image_col: str, label_col: str, config: DataConfig, channels) -> ImageData:
    images = image_tensors(ds, image_col, image_size=config.image_size, channels=channels, decode=config.decode)
    return ImageData(images, torch.as_tensor(np.asarray(ds[label_col]), dtype=torch.int64))


def recorded(config: DataConfig, train: datasets.Dataset, test: datasets.Dataset, **more: Any) -> dict[str, Any]:
    """What a run records of the data it read (``DataConfig.recorded``): the task, sizes, fingerprints."""
    return {
        "task": config.task,
        "train_examples": len(train),
        "test_examples": len(test),
        # datasets' fingerprints change when the files' content does: evaluate compares them.
        "train_fingerprint": getattr(train, "_fingerprint", None),
        "test_fingerprint": getattr(test, "_fingerprint", None),
        **more,
    }


def check_labels(ds: datasets.Dataset, label_col: str, *, num_labels: int | None = None) -> None:
    """Class labels must be integers from 0 (below ``num_labels`` when given): refuse strings, floats (never
    truncated), negative values and labels the model's head has no output for."""
    feature = ds.features[label_col]
    if not isinstance(feature, datasets.ClassLabel):
        dtype = feature_type(feature)
        if not (isinstance(feature, datasets.Value) and dtype.startswith(("int", "uint"))):
            raise DataMismatchError(
                f"label_column {label_col!r} holds {dtype} values (e.g. {ds[0][label_col]!r}); expected integer "
                f"class labels 0..K-1 (a ClassLabel or an int column). Columns: {describe_columns(ds)}"
            )
    values = ds[label_col]
    low, high = min(values), max(values)
    if low < 0:
        raise DataMismatchError(f"label_column {label_col!r} holds the label {low}; class labels are 0 or more")
    if num_labels is not None and high >= num_labels:
        raise DataMismatchError(
            f"label_column {label_col!r} holds labels up to {high}, but the model's head has {num_labels} outputs; "
            f"allowed: labels in [0, {num_labels - 1}]"
        )


def _check_channels(config: DataConfig, channels: int) -> None:
    for name in ("mean", "std"):
        values = getattr(config, name)
        if len(values) not in (1, channels):
            raise DataMismatchError(
                f"data.{name}={list(values)!r}: {len(values)} values for images of {channels} channel"
                f"{'s' if channels != 1 else ''}; give one value or {channels}"
            )


def _per_channel(values: tuple[float, ...], channels: int) -> list[float]:
    return list(values) * channels if len(values) == 1 else list(values)


def _mix(*values: int) -> int:
    """A stable 63-bit seed from several integers (Python's hash() of ints is stable too, but this is explicit)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) & 0x7FFFFFFFFFFFFFFF
    return h
