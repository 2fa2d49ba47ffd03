"""Text data: text classification and causal-LM blocks, tokenized once, batched as ``transformers`` dicts.

- **text classification**: each example's text (or text pair) is tokenized and truncated to ``max_length``;
  batches are padded to their longest example (``DataCollatorWithPadding``) and carry ``labels``, so the model's
  own ``outputs.loss`` (cross-entropy) is the loss and the logits' argmax the accuracy.
- **causal LM**: the texts are tokenized, joined (with the EOS token between texts when the tokenizer has one)
  and cut into blocks of ``max_length`` tokens; the last partial block is dropped. ``labels`` are the inputs:
  the model shifts them, so the loss is the mean next-token cross-entropy (its exp the perplexity) and the
  accuracy is next-token accuracy (:mod:`hf_llpf.evaluation.scoring`).

Batches come from a :class:`TextLoader`: the seeded, resumable order of :class:`hf_llpf.data.bundle.SeededLoader`
(same ``stream``/``state_dict``/sharding), so a resumed run draws the batches an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import torch

from hf_llpf.config import DataConfig
from hf_llpf.data.loader import SeededLoader
from hf_llpf.data.sources import check_column, check_labels, describe_columns, feature_type, recorded, string_columns
from hf_llpf.data.task import LABEL_COLUMNS, pick_column, text_columns
from hf_llpf.data.tokenizer import load_tokenizer, model_max_length, tokenizer_fingerprint
from hf_llpf.errors import DataMismatchError

_DEFAULT_MAX_LENGTH = 512  # when neither the tokenizer nor the model gives a limit


class TextLoader(SeededLoader):
    """Seeded, resumable dict batches over tokenized examples (padded per batch, or equal-length blocks)."""

    def __init__(
        self,
        data: datasets.Dataset,
        *,
        collate: Any,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = False,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        self._init_stream(data, batch_size, seed, shuffle, drop_last, num_shards, shard_index)
        self.augment, self.collate = False, collate

    def _make(self, idx: torch.Tensor, epoch: int, b: int, *, augment: bool) -> dict[str, torch.Tensor]:
        rows = self.data[idx.tolist()]  # column -> list of values
        examples = [dict(zip(rows, values, strict=True)) for values in zip(*rows.values(), strict=True)]
        return dict(self.collate(examples))


def _stack_blocks(examples: list[dict]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([e["input_ids"] for e in examples], dtype=torch.long)  # B, T
    return {"input_ids": ids, "labels": ids.clone()}


@dataclass
class TextBundle:
    """Train/test text data, tokenized: what :func:`hf_llpf.data.bundle.load_data` returns for text.

    Attributes:
        train, test: the raw splits (columns as in the source).
        train_features, test_features: tokenized examples (``input_ids``, ... and ``labels``).
        tokenizer: the tokenizer used.
        num_classes: label classes (``None`` for causal LM).
        config: the resolved :class:`~hf_llpf.config.DataConfig`.
    """

    train: datasets.Dataset
    test: datasets.Dataset
    train_features: datasets.Dataset
    test_features: datasets.Dataset
    tokenizer: Any
    num_classes: int | None
    config: DataConfig

    @property
    def task(self) -> str:
        return self.config.task

    def _collate(self) -> Any:
        if self.task == "causal-lm":
            return _stack_blocks
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(self.tokenizer, return_tensors="pt")

    def _features(self, split: str) -> datasets.Dataset:
        return self.train_features if split == "train" else self.test_features

    def loader(
        self,
        split: str = "train",
        *,
        batch_size: int,
        seed: int,
        shuffle: bool | None = None,
        augment: bool | None = None,
        drop_last: bool = False,
    ) -> TextLoader:
        """A seeded loader over one split (training: shuffled); ``augment`` has no meaning for text."""
        shuffle = split == "train" if shuffle is None else shuffle
        collate = self._collate()
        return TextLoader(
            self._features(split),
            collate=collate,
            batch_size=batch_size,
            seed=seed,
            shuffle=shuffle,
            drop_last=drop_last,
        )

    def split_size(self, split: str) -> int:
        """Examples (causal LM: blocks) in ``split``."""
        return len(self._features(split))

    def eval_loader(self, split: str, *, indices: torch.Tensor | None, batch_size: int) -> TextLoader:
        """Fixed (unshuffled) batches of ``split``, or of its examples ``indices``."""
        data = self._features(split)
        data = data if indices is None else data.select(indices.tolist())
        return TextLoader(data, collate=self._collate(), batch_size=batch_size, seed=0, shuffle=False)

    def eval_numel(self, split: str) -> int:
        """Tokens in ``split`` (whether the evaluation may keep its batches on the device)."""
        return sum(len(ids) for ids in self._features(split)["input_ids"])


def text_bundle(
    config: DataConfig, train: datasets.Dataset, test: datasets.Dataset, *, tokenizer: Any = None, model: Any = None
) -> TextBundle:
    """Tokenize the splits for ``config.task`` (``text-classification`` or ``causal-lm``).

    Args:
        config: the data settings; ``tokenizer`` names the tokenizer when none is given.
        train, test: the raw splits.
        tokenizer: the tokenizer (default: ``AutoTokenizer`` of ``config.tokenizer``).
        model: the endpoint, when known: its maximum length and its head's label count are checked.

    Raises:
        ConfigError: no tokenizer given or named.
        DataMismatchError / UnknownNameError: columns missing or of the wrong kind, labels outside the head.
    """
    if tokenizer is None:
        if config.tokenizer is None:
            from hf_llpf.errors import ConfigError

            raise ConfigError(
                f"data.tokenizer: text data ({config.source!r}) need a tokenizer; pass data.tokenizer=<folder or "
                "Hub id>, or connect endpoints that have one (endpoint A's own is used)"
            )
        tokenizer = load_tokenizer(config.tokenizer)
    limit = model_max_length(tokenizer, model)
    max_length = config.max_length or limit or _DEFAULT_MAX_LENGTH
    if limit is not None and max_length > limit:
        raise DataMismatchError(f"data.max_length={max_length}: the tokenizer/model take at most {limit} tokens")
    if config.task == "causal-lm":
        text, _ = text_columns(train, config, label=None)
        label, pair, num_classes = None, None, None
    else:
        if tokenizer.pad_token is None:  # batches are padded to their longest example
            raise DataMismatchError(
                f"the tokenizer ({config.tokenizer}) has no pad token, and text classification batches are padded; "
                "set one and save it with the endpoint (tokenizer.pad_token = tokenizer.eos_token, and the model's "
                "config.pad_token_id to match)"
            )
        label = pick_column(train, config.label_column, LABEL_COLUMNS, "label_column")
        check_labels(train, label)  # first: a text column named as the labels is that error, not "no text"
        text, pair = text_columns(train, config, label=label)
    for ds, split in ((train, "train"), (test, "test")):
        for name, field in ((text, "text_column"), (pair, "text_pair_column")):
            if name is not None:
                _check_text(ds, check_column(ds, name, field), field, split)
        if label is not None:
            check_labels(ds, check_column(ds, label, "label_column"), num_labels=_num_labels(model))
    if label is not None:
        feature = train.features[label]
        num_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else max(train[label]) + 1
    resolved = config.model_copy(
        update={"text_column": text, "text_pair_column": pair, "label_column": label, "max_length": max_length}
    )
    fingerprint = tokenizer_fingerprint(tokenizer)
    encode = _blocks if config.task == "causal-lm" else _classification
    features = [encode(ds, tokenizer, resolved, fingerprint) for ds in (train, test)]
    record = recorded(resolved, *features, num_classes=num_classes, tokenizer_sha256=fingerprint)
    record["texts"] = {"train": len(train), "test": len(test)}
    resolved = resolved.model_copy(update={"recorded": record})
    return TextBundle(train, test, features[0], features[1], tokenizer, num_classes, resolved)


def _num_labels(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "num_labels", None) if config is not None else None


def _check_text(ds: datasets.Dataset, name: str, field: str, split: str) -> None:
    """A string column with no missing value, and not only empty texts (a model learns and is judged on nothing:
    refused rather than certified)."""
    if name not in string_columns(ds):
        raise DataMismatchError(
            f"{field} {name!r} holds {feature_type(ds.features[name])} values (e.g. {ds[0][name]!r:.60}); expected "
            f"text (a string column). Columns: {describe_columns(ds)}"
        )
    values = ds[name]
    missing = [i for i, v in enumerate(values) if v is None]
    if missing:
        raise DataMismatchError(
            f"{field} {name!r}: {len(missing)} of the {len(values)} texts of the {split} split are missing (null; "
            f"first at row {missing[0]} of the split); drop or fill those rows"
        )
    if not any(v.strip() for v in values):
        raise DataMismatchError(
            f"{field} {name!r}: all {len(values)} texts of the {split} split are empty; a path built and judged on "
            "empty texts says nothing about the models. Check text_column (columns: " + describe_columns(ds) + ")"
        )


def _classification(ds: datasets.Dataset, tok: Any, config: DataConfig, fingerprint: str) -> datasets.Dataset:
    """``input_ids`` (+ ``attention_mask``/``token_type_ids``) truncated to ``max_length``, and ``labels``."""
    text, pair, label = config.text_column, config.text_pair_column, config.label_column

    def encode(rows: dict) -> dict:
        enc = tok(rows[text], rows[pair] if pair else None, truncation=True, max_length=config.max_length)
        return {**enc, "labels": rows[label]}

    return ds.map(
        encode,
        batched=True,
        remove_columns=ds.column_names,
        # An explicit fingerprint: the tokenizer object does not hash reliably, what decides the ids does.
        new_fingerprint=_fingerprint(ds, fingerprint, config),
        desc="tokenizing",
    )


def _blocks(ds: datasets.Dataset, tok: Any, config: DataConfig, fingerprint: str) -> datasets.Dataset:
    """Blocks of ``max_length`` tokens of the joined texts (EOS between texts); the partial last block dropped."""
    text, size = config.text_column, config.max_length
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []

    def chunk(rows: dict) -> dict:
        ids = [i for t in tok(rows[text], add_special_tokens=False)["input_ids"] for i in [*t, *eos]]
        return {"input_ids": [ids[k : k + size] for k in range(0, len(ids) - size + 1, size)]}

    # One map call over all texts (batch_size=None): blocks then span text boundaries, as in GPT-2's training.
    out = ds.map(
        chunk,
        batched=True,
        batch_size=None,
        remove_columns=ds.column_names,
        new_fingerprint=_fingerprint(ds, fingerprint, config),
        desc="tokenizing into blocks",
    )
    if len(out) == 0:
        total = sum(len(t) + len(eos) for t in tok(ds[text], add_special_tokens=False)["input_ids"])
        raise DataMismatchError(
            f"data {config.source!r}: a split holds {total} tokens, fewer than one block of data.max_length={size}; "
            "pass a smaller data.max_length or more text"
        )
    return out


def _fingerprint(ds: datasets.Dataset, tokenizer: str, config: DataConfig) -> str:
    import hashlib

    key = [ds._fingerprint, tokenizer, config.task, config.text_column, config.text_pair_column, config.max_length]
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


__all__ = ["TextBundle", "TextLoader", "text_bundle"]
