"""Which task a run is: image classification, text classification or causal language modelling.

The endpoints say it by their head (a timm/built-in image model, ``*ForSequenceClassification``,
``*ForCausalLM``/``*LMHeadModel``), the data by their columns (an image column, a text column, a label column).
When both speak they must agree; a text endpoint given images, or an image model given text, is an error naming
both. The column lists here are the ones detected when no ``*_column`` option is given (docs/data.md).
"""

from __future__ import annotations

from typing import Any

import datasets

from hf_llpf.config import DataConfig
from hf_llpf.data.sources import describe_columns, string_columns
from hf_llpf.errors import DataMismatchError, UnknownNameError

IMAGE_COLUMNS = ("image", "img", "pixel_values")
LABEL_COLUMNS = ("label", "labels", "fine_label")
TEXT_COLUMNS = ("text", "sentence", "content", "review", "document")
TEXT_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"), ("text", "text_pair"))
TASKS = ("image", "text-classification", "causal-lm")


def endpoint_task(model: Any) -> str | None:
    """The task of a model's head, or ``None`` when the class does not say (a plain ``nn.Module``)."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    if config is None or not hasattr(config, "to_dict"):  # timm / built-in image models, plain modules
        return "image" if hasattr(model, "num_classes") or hasattr(model, "pretrained_cfg") else None
    if name.endswith("ForSequenceClassification"):
        return "text-classification"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if name.endswith("ForImageClassification"):
        return "image"
    return None


def data_task(train: datasets.Dataset, config: DataConfig, *, hint: str | None = None) -> str:
    """The task the columns of ``train`` hold; ``hint`` (the endpoints' task) chooses between text tasks."""
    if config.image_column is not None or _image_column(train) is not None:
        if config.text_column is None:
            return "image"
    if config.text_column is not None or string_columns(train):
        if hint in ("text-classification", "causal-lm"):
            return hint
        has_labels = config.label_column is not None or any(c in train.column_names for c in LABEL_COLUMNS)
        return "text-classification" if has_labels else "causal-lm"
    return "image"  # no text: the image path names the columns it needs


def _image_column(ds: datasets.Dataset) -> str | None:
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            return name
    return next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)


def check_task(
    endpoint_kind: str | None, data_kind: str, *, endpoint: str, data: str, train: Any = None, who: str = "endpoint A"
) -> None:
    """Refuse a text endpoint given images and an image endpoint given text, naming both.

    Args:
        endpoint_kind: :func:`endpoint_task` of endpoint A (``None``: the model does not say).
        data_kind: the task of the data.
        endpoint: how endpoint A was given (its source), for the message.
        who: what the model is called in the message.
        data: the data spec, for the message.
        train: the training split (its columns are listed).
    """
    if endpoint_kind is None or endpoint_kind == data_kind:
        return
    columns = f" (columns: {describe_columns(train)})" if train is not None else ""
    wanted = {
        "image": "an image column (e.g. --data digits, an image folder)",
        "text-classification": "a text column and a label column",
        "causal-lm": "a text column",
    }
    if {endpoint_kind, data_kind} == {"text-classification", "causal-lm"}:
        raise DataMismatchError(
            f"{who} ({endpoint}) is {_NAMES[endpoint_kind]} model and data.task={data_kind!r}; "
            f"drop data.task or set it to {endpoint_kind!r}"
        )
    raise DataMismatchError(
        f"{who} ({endpoint}) is {_NAMES[endpoint_kind]} model, but data {data!r} hold "
        f"{_NAMES[data_kind].split(' ', 1)[1]} data{columns}; pass --data with {wanted[endpoint_kind]}"
    )


_NAMES = {
    "image": "an image classification",
    "text-classification": "a text classification",
    "causal-lm": "a causal LM",
}


def pick_column(ds: datasets.Dataset, wanted: str | None, candidates: tuple[str, ...], field_name: str) -> str:
    """The column ``wanted``, else the first of ``candidates`` present; an error listing the columns otherwise."""
    if wanted is not None:
        if wanted not in ds.column_names:
            raise UnknownNameError(field_name, wanted, ds.column_names, hint=f"columns: {describe_columns(ds)}")
        return wanted
    for name in candidates:
        if name in ds.column_names:
            return name
    raise UnknownNameError(
        field_name,
        None,
        ds.column_names,
        hint=f"none of {list(candidates)} exists (columns: {describe_columns(ds)}); pass data.{field_name}=NAME",
    )


def text_columns(ds: datasets.Dataset, config: DataConfig, *, label: str | None) -> tuple[str, str | None]:
    """The text column (and pair column) of ``ds``: as given, or detected when that is unambiguous."""
    if config.text_column is not None:
        pair = config.text_pair_column
        for name, field in ((config.text_column, "text_column"), (pair, "text_pair_column")):
            if name is not None:
                pick_column(ds, name, (), field)
        return config.text_column, pair
    strings = [c for c in string_columns(ds) if c != label]
    for first, second in TEXT_PAIRS:
        if first in strings and second in strings:
            return first, second
    named = [c for c in TEXT_COLUMNS if c in strings]
    if len(named) == 1 or len(strings) == 1:
        return (named or strings)[0], config.text_pair_column
    raise UnknownNameError(
        "text_column",
        None,
        strings or ds.column_names,
        hint=f"{'several' if strings else 'no'} string columns (columns: {describe_columns(ds)}); pass "
        "data.text_column=NAME (and data.text_pair_column=NAME for sentence pairs)",
    )


__all__ = ["IMAGE_COLUMNS", "LABEL_COLUMNS", "TASKS", "check_task", "data_task", "endpoint_task", "pick_column"]
