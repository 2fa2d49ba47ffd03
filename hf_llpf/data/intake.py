"""What a caller passes as data, read one way by every entry point (docs/data.md, "Data forms").

:func:`hf_llpf.connect`, :func:`hf_llpf.walk_to_origin`, :func:`hf_llpf.build_baseline`, :func:`hf_llpf.compare`,
:func:`hf_llpf.evaluate_run` / :func:`~hf_llpf.evaluation.evaluate_path` and :func:`hf_llpf.verify.verify_path` all
read their data through :func:`read_data`, so each form means the same everywhere:

- ``None``: the settings' data (a run) or the data the run recorded (an evaluation);
- a data spec (a name, a Hub id, a local file or folder, also as a ``pathlib.Path``), a dict of
  :class:`~hf_llpf.config.DataConfig` fields or a ``DataConfig``: loaded with its training and test splits;
- a :class:`~hf_llpf.data.bundle.DataBundle` or :class:`~hf_llpf.data.text.TextBundle`: used as loaded;
- a ``datasets.Dataset`` (torch-formatted columns) or re-iterable batches (a ``DataLoader``, a list): the training
  split alone;
- ``{"train": ..., "test": ...}`` (``"test"`` optional), each a ``datasets.Dataset`` or re-iterable batches: the
  caller's own splits. A run trains on ``"train"``; an evaluation also judges every point on ``"test"``, and
  without one reports no test figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import torch

from hf_llpf.config import DataConfig, build
from hf_llpf.data.bundle import DataBundle
from hf_llpf.data.text import TextBundle
from hf_llpf.errors import ConfigError, DataMismatchError

SPLITS = ("train", "test")
FORMS = (
    "a data spec, DataConfig, DataBundle, datasets.Dataset, an iterable of batches (DataLoader), or "
    "{'train': batches[, 'test': batches]}"
)


@dataclass(frozen=True)
class GivenData:
    """Data as the caller passed them (:func:`read_data`).

    Attributes:
        form: ``"default"`` (``None``), ``"spec"`` (to be loaded), ``"bundle"`` (loaded) or ``"python"`` (the
            caller's own dataset or batches).
        spec: the source name or ``DataConfig`` (form ``"spec"``).
        bundle: the loaded data (form ``"bundle"``).
        train: the training split as given: a ``datasets.Dataset`` or re-iterable batches (form ``"python"``).
        test: the test split as given, or ``None`` (only ``{"train": ..., "test": ...}`` has one).
    """

    form: Literal["default", "spec", "bundle", "python"]
    spec: str | DataConfig | None = None
    bundle: DataBundle | TextBundle | None = None
    train: Any = None
    test: Any = None


def read_data(data: Any, *, field: str = "data") -> GivenData:
    """What ``data`` is, in one of the forms this module lists.

    Args:
        data: the data as passed.
        field: the argument's name, for the error (``train_data`` for connect).

    Raises:
        DataMismatchError: ``data`` (or one of its splits) is none of the forms.
        ConfigError: a dict of splits without ``"train"`` or with another key.
    """
    if data is None:
        return GivenData("default")
    if isinstance(data, (str, DataConfig)):
        return GivenData("spec", spec=data)
    if isinstance(data, os.PathLike):  # a local file or folder, named as a path
        return GivenData("spec", spec=os.fspath(data))
    if isinstance(data, (DataBundle, TextBundle)):
        return GivenData("bundle", bundle=data)
    if isinstance(data, dict) and not set(data) & set(SPLITS):
        return GivenData("spec", spec=build(DataConfig, data))  # a dict of DataConfig fields
    if isinstance(data, dict):
        return _splits(data, field)
    return GivenData("python", train=_python_source(data, field))


def _splits(data: dict, field: str) -> GivenData:
    """The caller's own splits ``{"train": ..., "test": ...}`` (``"test"`` optional or ``None``), each checked.

    Raises:
        ConfigError: no ``"train"``, or another key. DataMismatchError: a split that is no dataset nor batches.
    """
    other = sorted(map(str, set(data) - set(SPLITS)))
    if other or "train" not in data:
        wrong = f"key {other[0]!r}" if other else "no 'train' key"
        raise ConfigError(f"{field}: a dict of splits has {wrong}; allowed keys: 'train' (required), 'test'")
    train, test = _python_source(data["train"], f"{field}['train']"), data.get("test")
    return GivenData("python", train=train, test=None if test is None else _python_source(test, f"{field}['test']"))


def _python_source(source: Any, field: str) -> Any:
    """``source`` when it is a ``datasets.Dataset`` or an iterable of batches (not a string, a dict or a spec).

    Raises:
        DataMismatchError: anything else, naming ``field``, its type and the forms allowed.
    """
    if isinstance(source, datasets.Dataset):
        return source
    if hasattr(source, "__iter__") and not isinstance(source, (str, bytes, dict, DataConfig, DataBundle, TextBundle)):
        return source
    raise DataMismatchError(f"{field}={type(source).__name__}: expected {FORMS}")


def training_data(data: Any, *, field: str = "train_data") -> Any:
    """The training data within ``data``: a dict of splits' ``"train"``, anything else as it is (checked alike by
    :func:`read_data`). What a run trains on, and what its certifier probes."""
    given = read_data(data, field=field)
    return given.train if given.form == "python" else data


def eval_batches(source: Any, *, batch_size: int) -> Any:
    """The fixed batches an evaluation reads from a split given from Python: every pass the same batches in the same
    order, as every point must see.

    A ``datasets.Dataset`` is read in order in batches of ``batch_size``; a ``DataLoader`` that shuffles (a random
    sampler: the one a run trains on, typically) is read in its dataset's order, with its batch size and collate
    function, every example kept; any other source (a list, an unshuffled ``DataLoader``) as it is.
    """
    if isinstance(source, datasets.Dataset):
        return torch.utils.data.DataLoader(source.with_format("torch"), batch_size=batch_size)
    if isinstance(source, torch.utils.data.DataLoader) and isinstance(source.sampler, torch.utils.data.RandomSampler):
        return torch.utils.data.DataLoader(
            source.dataset, batch_size=source.batch_size or batch_size, collate_fn=source.collate_fn
        )
    return source


__all__ = ["FORMS", "GivenData", "SPLITS", "eval_batches", "read_data", "training_data"]
