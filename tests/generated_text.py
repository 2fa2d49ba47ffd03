"""Generated text data and a word-level tokenizer, for the text tests and the text benchmark (no download).

The tokenizer is a ``tokenizers`` WordLevel model over the generated words, wrapped in ``PreTrainedTokenizerFast``
(saved next to an endpoint with ``save_pretrained``, as a Hub text model ships it). Reviews are short sentences of
neutral words with one positive word (label 1), one negative word (label 0) or neither (label 2).
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets

POSITIVE = ["good", "great", "fine", "lovely", "superb", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "boring", "weak"]
NEUTRAL = ["film", "movie", "plot", "actor", "scene", "story", "the", "a", "was", "is", "very", "quite"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]


def word_tokenizer(*, lowercase: bool = False, extra: tuple[str, ...] = ()):
    """A WordLevel tokenizer over the generated words: ``[CLS] text [SEP]`` for classification, ``[EOS]``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*SPECIALS, *POSITIVE, *NEGATIVE, *NEUTRAL, *extra])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[EOS]",
        model_max_length=32,
    )


def review(rng: random.Random) -> tuple[str, int]:
    """One generated review and its label: 0 negative, 1 positive, 2 neither."""
    label = rng.randrange(3)
    words = [rng.choice(NEUTRAL) for _ in range(rng.randrange(3, 9))]
    if label < 2:
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if label == 1 else NEGATIVE))
    return " ".join(words), label


def reviews(n: int, seed: int = 0) -> datasets.Dataset:
    """``n`` generated reviews (columns ``text``, ``label``)."""
    rng = random.Random(seed)
    rows = [review(rng) for _ in range(n)]
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})


def write_reviews(path: Path, n: int = 160, seed: int = 0) -> Path:
    """A local parquet of ``n`` reviews (columns ``text``, ``label``)."""
    reviews(n, seed).to_parquet(str(path))
    return path


def write_text_file(path: Path, lines: int = 120, seed: int = 0) -> Path:
    """A plain-text file of generated sentences, one per line (blank lines between some)."""
    rng = random.Random(seed)
    out = []
    for i in range(lines):
        out.append(review(rng)[0])
        if i % 10 == 9:
            out.append("")
    path.write_text("\n".join(out) + "\n")
    return path
