"""Generated text data and tiny text endpoints with their own tokenizer (no download, no internet).

The tokenizer is a ``tokenizers`` WordLevel model over the generated words, wrapped in
``PreTrainedTokenizerFast`` and saved next to each endpoint, as a Hub text model ships it.
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import torch
from tiny_models import tiny_bert, tiny_gpt2

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


def _fit(model: torch.nn.Module, batches: list[dict], steps: int) -> torch.nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def bert_endpoints(root: Path, *, steps: int = 40, tokenizer=None) -> tuple[Path, Path]:
    """Two tiny BERT classifiers (seeds 0 and 1) fine-tuned on generated reviews, saved with the tokenizer."""
    from transformers import DataCollatorWithPadding

    tok = tokenizer or word_tokenizer()
    data = reviews(96, seed=7)
    collate = DataCollatorWithPadding(tok)
    enc = [tok(t) | {"labels": y} for t, y in zip(data["text"], data["label"], strict=True)]
    batches = [dict(collate(enc[i : i + 16])) for i in range(0, len(enc), 16)]
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = _fit(tiny_bert(seed, vocab_size=len(tok)), batches, steps)
        folder = root / f"bert_{seed}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out.append(folder)
    return out[0], out[1]


def gpt2_endpoints(root: Path, *, steps: int = 40) -> tuple[Path, Path]:
    """Two tiny GPT-2 language models (seeds 0 and 1) trained on generated sentences, saved with the tokenizer."""
    tok = word_tokenizer()
    rng = random.Random(3)
    ids = [i for _ in range(200) for i in [*tok(review(rng)[0], add_special_tokens=False)["input_ids"], 4]]
    blocks = torch.tensor([ids[k : k + 16] for k in range(0, len(ids) - 16, 16)])
    batches = [{"input_ids": blocks[i : i + 8], "labels": blocks[i : i + 8]} for i in range(0, len(blocks), 8)]
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = _fit(tiny_gpt2(seed, vocab_size=len(tok)), batches, steps)
        folder = root / f"gpt2_{seed}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out.append(folder)
    return out[0], out[1]
