"""The tokenizer of text data: endpoint A's own, loaded with ``AutoTokenizer``, checked against endpoint B's.

Both endpoints must tokenize the same way, or the path's points would read different token ids as the same
input: the vocabularies, the special tokens and the encodings of the first training texts are compared, and
the first difference is the error. Remote code is never run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from accelerate.logging import get_logger

from hf_llpf.errors import ConfigError, DataMismatchError

logger = get_logger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def tokenizer_spec(endpoint: Any) -> str | None:
    """Where an endpoint's tokenizer is: its folder, or ``org/name@sha`` for a Hub endpoint (``None``: nowhere)."""
    if getattr(endpoint, "kind", None) != "transformers":
        return None
    source = str(endpoint.source)
    if Path(source).is_dir():
        return source if any((Path(source) / f).is_file() for f in _TOKENIZER_FILES) else None
    if source.startswith("<"):  # a module passed from Python
        return None
    repo, _, rev = source.partition("@")
    revision = endpoint.revision or rev
    return f"{repo}@{revision}" if revision else repo


def load_tokenizer(spec: str, *, field: str = "data.tokenizer") -> Any:
    """``AutoTokenizer.from_pretrained`` of a folder or a Hub id ``org/name[@revision]`` (no remote code).

    Raises:
        ConfigError: nothing there loads as a tokenizer (the message names ``field`` and the spec).
    """
    from transformers import AutoTokenizer

    location, revision = spec, None
    if not Path(spec).exists() and "@" in spec:
        location, _, revision = spec.partition("@")
    try:
        return AutoTokenizer.from_pretrained(location, revision=revision, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f"{field}={spec!r}: no tokenizer could be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); give a folder or Hub id holding one (save_pretrained writes it)"
        ) from None


def endpoint_tokenizers(ea: Any, eb: Any, *, texts: list[str]) -> tuple[Any, str]:
    """Endpoint A's tokenizer (checked against B's when B has one) and the spec it was loaded from.

    Raises:
        ConfigError: endpoint A has no tokenizer.
        DataMismatchError: the two tokenizers differ (the first difference is named).
    """
    spec_a = tokenizer_spec(ea)
    if spec_a is None:
        raise ConfigError(
            f"data.tokenizer: endpoint A ({ea.source}) has no tokenizer next to its weights; save it with the "
            "endpoint (tokenizer.save_pretrained(folder)) or pass data.tokenizer=<folder or Hub id>"
        )
    tok_a = load_tokenizer(spec_a, field="endpoint A's tokenizer")
    spec_b = tokenizer_spec(eb) if eb is not None else None
    if spec_b is None:
        if eb is not None:
            logger.info(f"endpoint B ({eb.source}) has no tokenizer: endpoint A's is used", main_process_only=True)
        return tok_a, spec_a
    if spec_b != spec_a:
        check_same_tokenizer(tok_a, load_tokenizer(spec_b, field="endpoint B's tokenizer"), texts=texts)
    return tok_a, spec_a


def check_same_tokenizer(a: Any, b: Any, *, texts: list[str]) -> None:
    """Refuse two tokenizers that read the same text differently; the error names the first difference."""
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        for token, i in sorted(va.items(), key=lambda kv: kv[1]):
            if vb.get(token) != i:
                where = f"id {vb[token]}" if token in vb else "absent"
                raise DataMismatchError(
                    f"the endpoints' tokenizers differ: token {token!r} is id {i} in A's tokenizer and {where} in "
                    f"B's ({len(va)} vs {len(vb)} tokens); both endpoints must share one tokenizer"
                )
        extra = next(t for t in vb if t not in va)
        raise DataMismatchError(f"the endpoints' tokenizers differ: token {extra!r} is in B's tokenizer only")
    for name in ("pad_token", "bos_token", "eos_token", "unk_token", "cls_token", "sep_token", "mask_token"):
        if getattr(a, name, None) != getattr(b, name, None):
            raise DataMismatchError(
                f"the endpoints' tokenizers differ: {name} is {getattr(a, name, None)!r} in A's tokenizer and "
                f"{getattr(b, name, None)!r} in B's"
            )
    for text in texts:
        ids_a, ids_b = a(text)["input_ids"], b(text)["input_ids"]
        if ids_a != ids_b:
            raise DataMismatchError(
                f"the endpoints' tokenizers differ: {text[:60]!r} becomes {ids_a[:12]} with A's tokenizer and "
                f"{ids_b[:12]} with B's (normalisation or pre-tokenization differ)"
            )


# What a fast tokenizer's JSON holds of the last call (calling it with truncation or padding sets them): the run
# passes its own truncation and padding at every call, so they are not part of what the tokenizer is.
_CALL_STATE = ("truncation", "padding")


def without_call_state(tokenizer_json: str | bytes) -> str | None:
    """A fast tokenizer's ``tokenizer.json`` with its call state (truncation, padding) cleared, as canonical JSON
    (``None`` when the text is not a JSON object)."""
    try:
        data = json.loads(tokenizer_json)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    return json.dumps({**data, **dict.fromkeys(_CALL_STATE)}, sort_keys=True, ensure_ascii=False)


def tokenizer_fingerprint(tok: Any) -> str:
    """A short sha256 of what decides the token ids: the fast tokenizer's JSON without its call state (so an untouched
    tokenizer gives the same fingerprint before and after it was called with truncation), else the vocabulary."""
    backend = getattr(tok, "backend_tokenizer", None)
    text = None if backend is None else without_call_state(backend.to_str())
    if text is None:
        text = json.dumps(sorted(tok.get_vocab().items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_max_length(tok: Any, model: Any = None) -> int | None:
    """The longest input the tokenizer and the model take (``None``: neither says)."""
    limits = []
    if getattr(tok, "model_max_length", None) and tok.model_max_length < 1_000_000:  # 1e30: "not set"
        limits.append(int(tok.model_max_length))
    config = getattr(model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if isinstance(getattr(config, name, None), int):
            limits.append(getattr(config, name))
            break
    return min(limits) if limits else None


__all__ = [
    "check_same_tokenizer",
    "endpoint_tokenizers",
    "load_tokenizer",
    "model_max_length",
    "tokenizer_fingerprint",
    "tokenizer_spec",
    "without_call_state",
]
