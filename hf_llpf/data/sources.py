"""Reading a data spec: the raw train/test ``datasets.Dataset`` splits and the columns they hold.

A *data spec* (``DataConfig.source``) is one of
- ``"digits"``: scikit-learn's 8x8 digits (shipped inside its wheel), split 80/20 with a fixed seed;
- a Hub dataset id such as ``"uoft-cs/cifar10"`` (read through ``datasets.load_dataset``);
- a local path: a parquet, Arrow, CSV, JSON/JSON-lines or plain-text file (or a folder of parquet files), a
  folder written by ``save_to_disk``, or an image folder (``class_name/image.png``).

A source with one split gets a fixed 80/20 train/test split (``split_seed``). What the columns are used for
(images, text, labels) is decided by :mod:`hf_llpf.data.bundle` and :mod:`hf_llpf.data.text`; this module only
reads, and describes columns for error messages.
"""

from __future__ import annotations

import os
from typing import Any

import datasets
import numpy as np

from hf_llpf.config import DataConfig
from hf_llpf.errors import ConfigError, DataMismatchError, OfflineError, UnknownNameError

BUILTIN_DATASETS = ("digits",)
# Local files by suffix: the `datasets` packaged builder that reads them.
_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "json",
    ".txt": "text",
}


def read_splits(config: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """The train and test splits of ``config.source``, both non-empty.

    Raises:
        UnknownNameError: unknown dataset or split (the message lists what exists).
        OfflineError: a Hub dataset was asked for while the Hub cannot be reached.
        DataMismatchError: the source cannot be read, or a split holds no examples.
    """
    splits = _digits(config.split_seed) if config.source == "digits" else _load_source(config)
    if config.test_split not in splits and list(splits) == [config.train_split]:
        # A source with one split: hold out 20 % with a fixed seed, the same way every time.
        n = len(splits[config.train_split])
        if n < 2:
            raise DataMismatchError(
                f"data {config.source!r}: {n} example(s) in its one split {config.train_split!r}; 20% of a single "
                "split are held out as the test split, which needs at least 2 examples (pass more data, or a source "
                "with a test split)"
            )
        held_out = splits[config.train_split].train_test_split(test_size=0.2, seed=config.split_seed)
        splits = datasets.DatasetDict({config.train_split: held_out["train"], config.test_split: held_out["test"]})
    train, test = _pick_split(splits, config.train_split), _pick_split(splits, config.test_split)
    for split, ds in ((config.train_split, train), (config.test_split, test)):
        if len(ds) == 0:
            raise DataMismatchError(f"data {config.source!r}: split {split!r} has no examples")
    return train, test


def describe_columns(ds: datasets.Dataset) -> str:
    """``name (type), ...`` for every column: what error messages list."""
    return ", ".join(f"{name} ({feature_type(f)})" for name, f in ds.features.items())


def feature_type(feature: object) -> str:
    """A short name of a column's type: ``string``, ``int64``, ``image``, ``class label``, ``list of int64``."""
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.ClassLabel):
        return f"class label ({feature.num_classes} classes)"
    if isinstance(feature, datasets.Value):
        return feature.dtype
    inner = getattr(feature, "feature", None)
    if isinstance(feature, (datasets.Sequence, datasets.List, list)) or inner is not None:
        inner = inner if inner is not None else feature[0]
        return f"list of {feature_type(inner)}"
    return type(feature).__name__


def string_columns(ds: datasets.Dataset) -> list[str]:
    """The columns holding one string per example."""
    strings = ("string", "large_string")
    return [n for n, f in ds.features.items() if isinstance(f, datasets.Value) and f.dtype in strings]


def check_column(ds: datasets.Dataset, name: str, field_name: str) -> str:
    """``name`` when ``ds`` has that column; an error listing the columns otherwise."""
    if name not in ds.column_names:
        raise UnknownNameError(field_name, name, ds.column_names, hint=f"columns found: {describe_columns(ds)}")
    return name


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


def _digits(seed: int) -> datasets.DatasetDict:
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = np.round(raw.images * (255.0 / 16.0)).astype(np.uint8)  # N, 8, 8; values 0..16 → 0..255
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    full = datasets.Dataset.from_dict({"image": list(images), "label": raw.target.tolist()}, features=features)
    return full.train_test_split(test_size=0.2, seed=seed, stratify_by_column="label")


def _load_source(config: DataConfig) -> datasets.DatasetDict:
    source = config.source
    if os.path.exists(source):
        try:
            return _load_local(source)
        except (ValueError, OSError, TypeError, datasets.exceptions.DatasetGenerationError) as err:
            if isinstance(err, UnknownNameError):
                raise
            if "corresponds to no data" in str(err):
                raise DataMismatchError(f"data {source!r} has no examples") from None
            raise DataMismatchError(
                f"data {source!r} could not be read ({type(err).__name__}: {str(err).splitlines()[0][:300]})"
            ) from None
    if "/" not in source or not _could_be_hub_id(source):
        raise UnknownNameError(
            "dataset",
            source,
            [*BUILTIN_DATASETS, "<org>/<name> on the Hub", "a local path"],
            hint=f"no local file or folder {source!r} exists" if ("/" in source or "." in source) else "",
        )
    try:
        return datasets.load_dataset(source, config.config_name, revision=config.revision)
    except Exception as err:  # the datasets library raises many types for "cannot reach the Hub"
        if "config name is missing" in str(err).lower() or "builderconfig" in str(err).lower():
            raise ConfigError(
                f"data.config_name={config.config_name!r}: the Hub dataset {source!r} has several configurations; "
                f"{str(err).splitlines()[0][:300]}"
            ) from None
        if _looks_offline(err):
            raise OfflineError(
                f"no local file or folder {source!r}, and the Hub dataset {source!r} cannot be fetched while offline "
                f"({type(err).__name__}). Check the path, or download the dataset elsewhere and pass the local "
                "folder (save_to_disk or parquet) as --data."
            ) from err
        raise


def _could_be_hub_id(source: str) -> bool:
    """``org/name``: two parts of letters, digits, ``-_.``; a path with more parts or a file suffix is local."""
    parts = source.split("/")
    return (
        len(parts) == 2
        and all(p and p not in (".", "..") for p in parts)
        and not source.endswith(tuple(_FILE_BUILDERS))
    )


def _load_local(source: str) -> datasets.DatasetDict:
    if os.path.isdir(source) and (
        os.path.exists(os.path.join(source, "dataset_dict.json")) or os.path.exists(os.path.join(source, "state.json"))
    ):
        loaded = datasets.load_from_disk(source)
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    suffix = os.path.splitext(source)[1].lower()
    if os.path.isfile(source) and suffix in _FILE_BUILDERS:
        loaded = datasets.load_dataset(_FILE_BUILDERS[suffix], data_files={"train": source})
        if suffix == ".txt":  # a text file: one example per line; blank lines separate nothing we could use
            loaded = loaded.filter(lambda row: bool(row["text"].strip()))
        return loaded
    if os.path.isdir(source) and _has_files(source, ".parquet"):
        return datasets.load_dataset("parquet", data_files={"train": os.path.join(source, "**", "*.parquet")})
    if os.path.isdir(source):
        return datasets.load_dataset("imagefolder", data_dir=source)
    raise UnknownNameError(
        "data source",
        source,
        ["a parquet/arrow/csv/json/jsonl/txt file", "a save_to_disk folder", "a parquet folder", "an image folder"],
    )


def _looks_offline(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(k in text for k in ("offline", "connection", "resolve", "couldn't reach", "network", "max retries"))


def _has_files(folder: str, suffix: str) -> bool:
    return any(name.endswith(suffix) for _, _, names in os.walk(folder) for name in names)


def _pick_split(splits: datasets.DatasetDict, name: str) -> datasets.Dataset:
    if name in splits:
        return splits[name]
    raise UnknownNameError("split", name, list(splits))


__all__ = ["BUILTIN_DATASETS", "check_column", "check_labels", "describe_columns", "feature_type", "read_splits"]
__all__ += ["recorded", "string_columns"]
