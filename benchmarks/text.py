"""Text paths from the command line: two tiny BERT classifier pairs on generated parquets, tiny GPT-2s on a text file.

    python -m benchmarks text [--threads 1] [--pairs bert bert_wordpiece gpt2]

Per pair: two random inits (seeds 0 and 1, built from a config) are saved with their tokenizer, fine-tuned by
``hf-llpf train INIT --data ...``, connected by ``hf-llpf connect A B --data ...`` with the defaults (the certificate
on the whole training split, the automatic ceiling) and judged by ``hf-llpf evaluate`` (all through
:func:`hf_llpf.cli.main`, as typed). The pairs:

- ``bert``: the word-level tokenizer of ``tests/generated_text.py``, 1,000 generated reviews (800 train);
- ``bert_wordpiece``: a WordPiece tokenizer trained on the reviews (a small vocabulary, so that some words are
  split into pieces, as a new user's tokenizer would), 2,000 generated reviews (1,600 train);
- ``gpt2``: the word-level tokenizer, 1,500 generated lines in a text file (blocks of 32 tokens).

Printed per pair: the certificate's route, N (training examples certified on), the ceiling and its rule, certified
or not, the maximum train loss over the whole training split (the evaluation's saved points, and the run's final
check of every point and segment midpoint), SGD iterations, the endpoints' test loss, linear interpolation's
maximum and the seconds of each command (docs/benchmarks.md, "Text paths"); the rows are appended to
``benchmarks/results/text.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness
from hf_llpf.cli import main as cli
from tests.generated_text import reviews as generated_reviews
from tests.generated_text import word_tokenizer, write_reviews, write_text_file

ENTRY = "text"

TRAIN = ["optimizer=adamw", "lr=0.003", "weight_decay=0.01", "batch_size=32", "--threads"]
CONNECT = ["--no-progress", "--threads"]  # the defaults
PAIRS = ("bert", "bert_wordpiece", "gpt2")


def wordpiece_tokenizer(texts: list[str], vocab_size: int = 90):
    """A WordPiece tokenizer trained on ``texts`` (lower-cased, ``[CLS] text [SEP]``); a vocabulary this small
    splits some of the generated words into pieces."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=32,
    )  # fmt: skip


def _inits(root: Path, kind: str, tok: Any = None) -> list[Path]:
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    tok = tok if tok is not None else word_tokenizer()
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        if kind.startswith("bert"):
            config = BertConfig(
                vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, max_position_embeddings=32, num_labels=3,
            )  # fmt: skip
            model = BertForSequenceClassification(config)
        else:
            config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=32, use_cache=False)
            config.bos_token_id = config.eos_token_id = tok.eos_token_id
            model = GPT2LMHeadModel(config)
        folder = root / f"{kind}_init_{seed}"
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        out.append(folder)
    return out


def _timed(args: list[str]) -> float:
    start = time.perf_counter()
    code = cli(args)
    if code != 0:
        raise SystemExit(f"`hf-llpf {' '.join(args)}` exited with {code}")
    return time.perf_counter() - start


def pair_data(root: Path, kind: str) -> tuple[Path, Any, list[str], int]:
    """A pair's generated data in ``root``: (the file, its tokenizer or ``None`` for the word-level one, the extra
    settings of its commands, the epochs of its training)."""
    if kind == "bert":
        return write_reviews(root / "reviews.parquet", n=1000), None, [], 6
    if kind == "bert_wordpiece":
        tok = wordpiece_tokenizer(generated_reviews(2000, seed=1)["text"])
        return write_reviews(root / "reviews_2000.parquet", n=2000, seed=1), tok, [], 6
    return write_text_file(root / "corpus.txt", lines=1500), None, ["data.max_length=32"], 4


def train_endpoints(
    root: Path, kind: str, data: Path, *, extra: list[str], epochs: int, threads: int, tok: Any = None,
    seconds: dict[str, float] | None = None,
) -> list[Path]:  # fmt: skip
    """Both endpoints of a pair (seeds 0 and 1) trained by ``hf-llpf train`` in ``root``; their folders. Each
    command's seconds go to ``seconds`` (``train_0``, ``train_1``) when given."""
    ends = []
    for seed, init in enumerate(_inits(root, kind, tok)):
        out = root / f"{kind}_{seed}"
        args = ["train", str(init), "--data", str(data), "--out", str(out), "--seed", str(seed), f"epochs={epochs}"]
        took = _timed([*args, *TRAIN, str(threads), *extra])
        if seconds is not None:
            seconds[f"train_{seed}"] = took
        ends.append(out)
    return ends


def run_pair(
    root: Path, kind: str, data: Path, *, extra: list[str], epochs: int, threads: int, tok: Any = None
) -> dict:
    """Train two endpoints, connect and evaluate them through the CLI; the row of figures."""
    seconds: dict[str, float] = {}
    ends = train_endpoints(root, kind, data, extra=extra, epochs=epochs, threads=threads, tok=tok, seconds=seconds)
    run = root / f"{kind}_path"
    args = ["connect", str(ends[0]), str(ends[1]), "--data", str(data), "--out", str(run), *CONNECT, str(threads)]
    seconds["connect"] = _timed([*args, *extra])
    seconds["evaluate"] = _timed(["evaluate", str(run), "--threads", str(threads)])
    summary = json.loads((run / "path_metrics.json").read_text())["summary"]
    llpf, linear, run_summary = summary["llpf"], summary["linear"], summary["run"]
    cert = run_summary["certification"]
    final = cert.get("final_check") or {}
    tests = [json.loads((e / "metrics.json").read_text())["test"]["loss"] for e in ends]
    judged = max(llpf["max_train_loss"], final.get("max", -math.inf))
    return {
        "pair": kind,
        "data": data.name,
        "endpoint_test_loss": tests,
        "route": cert.get("route"),
        "n_train": cert.get("probe_examples"),
        "ceiling": cert["ceiling"],
        "ceiling_rule": cert.get("ceiling_rule"),
        "endpoint_losses": cert.get("endpoint_probe_losses"),
        "certified": cert["certified"],
        "uncertified": cert.get("uncertified", []),
        "final_check_max": final.get("max"),
        "examples_run": cert.get("examples_run"),
        # The whole training split: the evaluation's saved points and the run's final check (points + midpoints).
        "max_whole_train": judged,
        "under_ceiling": judged <= cert["ceiling"],
        "ticks": run_summary["ticks"],
        "sgd_iters": run_summary["sgd_iters"],
        "llpf": {k: llpf[k] for k in ("max_train_loss", "barrier", "test_loss_range")},
        "linear": {k: linear[k] for k in ("max_train_loss", "barrier", "test_loss_range")},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def table(rows: list[dict]) -> str:
    """The rows as the docs' table."""
    lines = [
        "| pair | data | route | N | ceiling (rule) | certified | max train loss, whole training split (evaluation "
        "points / final check points + midpoints) | under the ceiling | SGD iterations | ticks | endpoints' test loss "
        "| max train loss linear | seconds (train, connect, evaluate) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, li, s = r["llpf"], r["linear"], r["seconds"]
        rule = "L + ln 1.5" if str(r.get("ceiling_rule", "")).startswith("L + ln") else r.get("ceiling_rule")
        ppl = f" (ppl {math.exp(r['max_whole_train']):.2f})" if r["pair"] == "gpt2" else ""
        final = f"{r['final_check_max']:.4f}" if r.get("final_check_max") is not None else "–"
        lines.append(
            f"| {r['pair']} | {r['data']} | {r['route']} | {r['n_train']:,} | {r['ceiling']:.4f} ({rule}) "
            f"| {'yes' if r['certified'] else 'NO'} | {lo['max_train_loss']:.4f} / {final}{ppl} "
            f"| {'yes' if r['under_ceiling'] else 'NO'} | {r['sgd_iters']:,} | {r['ticks']} "
            f"| {r['endpoint_test_loss'][0]:.3f}, {r['endpoint_test_loss'][1]:.3f} | {li['max_train_loss']:.4f} "
            f"| {s['train_0'] + s['train_1']:.0f}, {s['connect']:.0f}, {s['evaluate']:.0f} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Run each pair through the CLI; record and print the rows."""
    args = parser().parse_args(argv)
    results = harness.Results(ENTRY, args, argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for kind in [k for k in PAIRS if k in args.pairs]:
            data, tok, extra, epochs = pair_data(root, kind)
            results.add(run_pair(root, kind, data, extra=extra, epochs=epochs, threads=args.threads, tok=tok))
            if kind != "gpt2":
                print(table(results.rows[-1:]), flush=True)
    print(json.dumps(results.rows, indent=2))
    print(table(results.rows))
    return 0
