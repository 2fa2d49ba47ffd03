"""The one tiny-BERT and tiny-GPT-2 of the test suite (built from configs; no download), for every test file.

Each takes a seed (the weights' initialisation) and config overrides for the few tests that need another size.
"""

from __future__ import annotations

import torch

BERT = {
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
    "num_labels": 3,
}
GPT2 = {"vocab_size": 100, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_positions": 32, "use_cache": False}


def tiny_bert(seed: int = 0, **overrides):
    """A tiny BertForSequenceClassification in eval mode (about 10k parameters with the defaults)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(**{**BERT, **overrides})).eval()


def tiny_gpt2(seed: int = 0, **overrides):
    """A tiny GPT2LMHeadModel in eval mode (``lm_head`` tied to the token embedding, as GPT-2 is)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(**{**GPT2, **overrides})
    cfg.bos_token_id = cfg.eos_token_id = 0
    return GPT2LMHeadModel(cfg).eval()
