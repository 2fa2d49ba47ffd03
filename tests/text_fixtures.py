"""Tiny text endpoints trained on generated text, saved with their own tokenizer (no download, no internet).

The data and the tokenizer are :mod:`generated_text`'s (the text benchmark uses the same).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from generated_text import review, reviews, word_tokenizer, write_reviews, write_text_file
from tiny_models import tiny_bert, tiny_gpt2

__all__ = [
    "bert_endpoints",
    "gpt2_endpoints",
    "review",
    "reviews",
    "word_tokenizer",
    "write_reviews",
    "write_text_file",
]


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
