"""Text paths from the command line: tiny BERT classifiers on a generated parquet, tiny GPT-2s on a text file.

    python -m benchmarks text [--threads 1] [--pairs bert gpt2]

Per pair: two random inits (seeds 0 and 1, built from a config) are saved with the word-level tokenizer of
``tests/generated_text.py``, fine-tuned by ``hf-llpf train INIT --data ...``, connected by
``hf-llpf connect A B --data ...`` and judged by ``hf-llpf evaluate`` (all through :func:`hf_llpf.cli.main`, as
typed). Printed: the endpoints' test loss, the path's and linear interpolation's maximum train loss and barrier,
the test loss ranges and the seconds of each command (docs/benchmarks.md, "Text paths"); the rows are appended to
``benchmarks/results/text.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import harness
from hf_llpf.cli import main as cli
from tests.generated_text import word_tokenizer, write_reviews, write_text_file

ENTRY = "text"

TRAIN = ["optimizer=adamw", "lr=0.003", "weight_decay=0.01", "batch_size=32", "--threads"]
CONNECT = ["--no-progress", "max_iters=30", "--threads"]


def _inits(root: Path, kind: str) -> list[Path]:
    from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

    tok = word_tokenizer()
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        if kind == "bert":
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


def run_pair(root: Path, kind: str, data: Path, *, extra: list[str], epochs: int, threads: int) -> dict:
    """Train two endpoints, connect and evaluate them through the CLI; the row of figures."""
    seconds = {}
    ends = []
    for seed, init in enumerate(_inits(root, kind)):
        out = root / f"{kind}_{seed}"
        args = ["train", str(init), "--data", str(data), "--out", str(out), "--seed", str(seed), f"epochs={epochs}"]
        seconds[f"train_{seed}"] = _timed([*args, *TRAIN, str(threads), *extra])
        ends.append(out)
    run = root / f"{kind}_path"
    args = ["connect", str(ends[0]), str(ends[1]), "--data", str(data), "--out", str(run), *CONNECT, str(threads)]
    seconds["connect"] = _timed([*args, *extra])
    seconds["evaluate"] = _timed(["evaluate", str(run), "--threads", str(threads)])
    summary = json.loads((run / "path_metrics.json").read_text())["summary"]
    llpf, linear = summary["llpf"], summary["linear"]
    tests = [json.loads((e / "metrics.json").read_text())["test"]["loss"] for e in ends]
    return {
        "pair": kind,
        "data": data.name,
        "endpoint_test_loss": tests,
        "ticks": summary["run"]["ticks"],
        "llpf": {k: llpf[k] for k in ("max_train_loss", "barrier", "test_loss_range")},
        "linear": {k: linear[k] for k in ("max_train_loss", "barrier", "test_loss_range")},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| pair | data | endpoints' test loss | ticks | max train loss LLPF / linear | barrier LLPF / linear "
        "| test loss LLPF / linear | seconds (train, connect, evaluate) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, li = r["llpf"], r["linear"]
        ppl = " (ppl {:.2f} / {:.2f})".format(*(math.exp(x["max_train_loss"]) for x in (lo, li)))
        s = r["seconds"]
        lines.append(
            f"| {r['pair']} | {r['data']} | {r['endpoint_test_loss'][0]:.3f}, {r['endpoint_test_loss'][1]:.3f} "
            f"| {r['ticks']} | {lo['max_train_loss']:.3f} / {li['max_train_loss']:.3f}"
            f"{ppl if r['pair'] == 'gpt2' else ''} | {lo['barrier']:.3f} / {li['barrier']:.3f} "
            f"| {lo['test_loss_range'][1]:.3f} / {li['test_loss_range'][1]:.3f} (max) "
            f"| {s['train_0'] + s['train_1']:.0f}, {s['connect']:.0f}, {s['evaluate']:.0f} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--pairs", nargs="+", choices=["bert", "gpt2"], default=["bert", "gpt2"])
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Run each pair through the CLI; record and print the rows."""
    args = parser().parse_args(argv)
    results = harness.Results(ENTRY, args, argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "bert" in args.pairs:
            reviews = write_reviews(root / "reviews.parquet", n=1000)
            results.add(run_pair(root, "bert", reviews, extra=[], epochs=6, threads=args.threads))
        if "gpt2" in args.pairs:
            corpus = write_text_file(root / "corpus.txt", lines=1500)
            extra = ["data.max_length=32"]
            results.add(run_pair(root, "gpt2", corpus, extra=extra, epochs=4, threads=args.threads))
    print(json.dumps(results.rows, indent=2))
    print(table(results.rows))
    return 0
