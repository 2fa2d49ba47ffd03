"""Data: a data spec becomes train/test ``datasets.Dataset`` s and seeded, resumable batch loaders.

:func:`load_data` is the one entry point: it reads the spec (:mod:`hf_llpf.data.sources`: ``"digits"``, a Hub id, a
local file or folder), decides the task (:mod:`hf_llpf.data.task`) and builds an image :class:`DataBundle` here or a
text bundle (:mod:`hf_llpf.data.text`: text classification, causal LM). docs/data.md lists the options.

Images are decoded once into a uint8 tensor kept in memory, or, for large sets, per batch
(:mod:`hf_llpf.data.images`); normalisation and the optional CIFAR augmentation (random crop with padding 4 +
horizontal flip) run on whole batches. That keeps the
minimal-training loop free of per-sample Python and worker processes (the reference's fresh 8-worker
DataLoader per tick was 9x slower than needed), and lets a loader resume at any batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch

from hf_llpf.config import DataConfig, build
from hf_llpf.data.images import LazyImages, image_tensors
from hf_llpf.data.loader import SeededLoader, cifar_augment
from hf_llpf.data.sources import BUILTIN_DATASETS, check_column, check_labels, read_splits, recorded
from hf_llpf.data.task import IMAGE_COLUMNS, LABEL_COLUMNS, data_task, pick_column
from hf_llpf.data.text import TextBundle, text_bundle
from hf_llpf.errors import DataMismatchError

__all__ = [
    "BUILTIN_DATASETS",
    "DataBundle",
    "ImageData",
    "SeededLoader",
    "TextBundle",
    "check_labels_fit",
    "cifar_augment",
    "load_data",
]


@dataclass
class ImageData:
    """One split: uint8 images ``N, C, H, W`` (in memory, or :class:`~hf_llpf.data.images.LazyImages` decoded per
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
        train_tensors, test_tensors: the same splits as uint8 images (resized if asked; in memory or decoded
            on access) and labels.
        num_classes: number of label classes.
        config: the resolved :class:`~hf_llpf.config.DataConfig`.
        task: ``"image"`` (a text bundle, :class:`~hf_llpf.data.text.TextBundle`, says which text task it holds).
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


def load_data(spec: str | DataConfig, *, tokenizer: Any = None, **options) -> Any:
    """Turn a data spec into train/test datasets and their batches: images, text classification or causal LM.

    Args:
        spec: ``"digits"``, a Hub dataset id, a local path, or a :class:`~hf_llpf.config.DataConfig`.
        tokenizer: the tokenizer of text data (default: ``DataConfig.tokenizer``, loaded with ``AutoTokenizer``).
        **options: fields of :class:`~hf_llpf.config.DataConfig` (``image_column``, ``label_column``,
            ``text_column``, ``max_length``, ``task``, ``train_split``, ``test_split``, ``image_size``, ...).

    Returns:
        A :class:`DataBundle` (images) or a :class:`hf_llpf.data.text.TextBundle` (text), whose ``config`` is the
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


def check_labels_fit(model: torch.nn.Module, data: DataBundle) -> None:
    """Raise :class:`DataMismatchError` when the labels exceed the model's classifier head."""
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        return
    top = int(max(data.train_tensors.labels.max(), data.test_tensors.labels.max()))
    if top >= num_classes:
        raise DataMismatchError(
            f"the data have labels up to {top} ({data.num_classes} classes) but the model's head has "
            f"num_classes={num_classes}; allowed: labels in [0, {num_classes - 1}]"
        )


def _split_tensors(ds: datasets.Dataset, image_col: str, label_col: str, config: DataConfig, channels) -> ImageData:
    images = image_tensors(ds, image_col, image_size=config.image_size, channels=channels, decode=config.decode)
    return ImageData(images, torch.as_tensor(np.asarray(ds[label_col]), dtype=torch.int64))


def _check_channels(config: DataConfig, channels: int) -> None:
    for name in ("mean", "std"):
        values = getattr(config, name)
        if len(values) not in (1, channels):
            raise DataMismatchError(
                f"data.{name}={list(values)!r}: {len(values)} values for images of {channels} channel"
                f"{'s' if channels != 1 else ''}; give one value or {channels}"
            )
