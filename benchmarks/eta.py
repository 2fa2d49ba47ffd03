"""How true connect's ETA is: the progress lines of a run whose output goes to a file, against the time that was left.

    python -m benchmarks eta [--pairs demo bert bert_wordpiece] [--repeats 3]

Per pair and repeat, ``hf-llpf connect A B --data ...`` runs in a child process with its output redirected to a
file (so it writes progress lines, not a bar). Each line's time comes from the run's log (``RUN_DIR/hf_llpf.log``)
and the time that was really left is the child's end minus that time. Printed per run: the connect's wall time,
the line nearest half of it and the first line with half of the stages done (each: its ETA, the time left, the
ratio ETA / left) and the ratio of every line. The pairs:

- ``demo``: the demo's endpoints (small_cnn on digits, seeds 0 and 1, from the benchmark cache);
- ``bert``, ``bert_wordpiece``: the text benchmark's tiny BERT pairs (``python -m benchmarks text``), trained once
  per invocation in a temporary folder.

The rows are appended to ``benchmarks/results/eta.jsonl``; docs/benchmarks.md#eta has the figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

ENTRY = "eta"
PAIRS = ("demo", "bert", "bert_wordpiece")
_LINE = re.compile(r"^(\S+ \S+) INFO llpf m2m: (\d+)/(\d+) stages done.*?(?:ETA ~([\d.]+) (s|min)|ETA after|last)")


def _seconds(value: str, unit: str) -> float:
    return float(value) * (60.0 if unit == "min" else 1.0)


def read_lines(log: Path, start: float, end: float) -> list[dict[str, Any]]:
    """The progress lines of a run log with an ETA: when (seconds after ``start``), stages done, ETA, time left."""
    out = []
    for text in log.read_text(encoding="utf-8").splitlines():
        m = _LINE.match(text)
        if not m or m.group(4) is None:
            continue
        at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() - start
        eta, left = _seconds(m.group(4), m.group(5)), end - start - at
        out.append({"at": round(at, 1), "done": int(m.group(2)), "total": int(m.group(3)), "eta": eta,
                    "left": round(left, 1), "ratio": round(eta / left, 2) if left > 0 else None})  # fmt: skip
    return out


def half_way(lines: list[dict[str, Any]], wall: float) -> dict[str, Any] | None:
    """The line nearest half of the connect's wall time (``None`` without a line that has an ETA)."""
    return min(lines, key=lambda line: abs(line["at"] - wall / 2), default=None)


def half_the_stages(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first line with at least half of the stages done (``None`` without one)."""
    return next((line for line in lines if 2 * line["done"] >= line["total"]), None)


def timed_connect(a: Path, b: Path, data: str, out: Path, threads: int) -> dict[str, Any]:
    """``hf-llpf connect`` in a child process, output to a file; its wall time and its progress lines."""
    log_file = out.with_suffix(".out")
    cmd = [sys.executable, "-m", "hf_llpf.cli", "connect", str(a), str(b), "--data", data, "--out", str(out),
           "--threads", str(threads)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(harness.ROOT)}
    start = time.time()
    with open(log_file, "w") as fh:
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
    end = time.time()
    if code != 0:
        raise SystemExit(f"connect exited with {code}; its output: {log_file}")
    lines = read_lines(out / "hf_llpf.log", start, end)
    wall = end - start
    return {
        "wall_s": round(wall, 1),
        "half_way": half_way(lines, wall),
        "half_the_stages": half_the_stages(lines),
        "lines": lines,
    }


def _demo_pair(root: Path) -> tuple[Path, Path, str]:
    from hf_llpf.config import TrainRecipe

    a, b, _ = harness.endpoint_pair(TrainRecipe(seed=0), TrainRecipe(seed=1))
    return a, b, "digits"


def _text_pair(root: Path, kind: str, threads: int) -> tuple[Path, Path, str]:
    from benchmarks.text import pair_data, train_endpoints

    data, tok, extra, epochs = pair_data(root, kind)
    a, b = train_endpoints(root, kind, data, extra=extra, epochs=epochs, threads=threads, tok=tok)
    return a, b, str(data)


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS), help="which pairs")
    p.add_argument("--repeats", type=int, default=3, help="connects per pair (the median ratio is printed)")
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Connect each pair ``--repeats`` times with its output in a file; record and print the ETA's ratios."""
    args = parser().parse_args(argv)
    results = harness.Results(ENTRY, args, argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for pair in args.pairs:
            a, b, data = _demo_pair(root) if pair == "demo" else _text_pair(root, pair, args.threads)
            runs = []
            for k in range(args.repeats):
                runs.append(timed_connect(a, b, data, root / f"{pair}_path_{k}", args.threads))
                results.add({"pair": pair, "repeat": k, **runs[-1]})
                _print_run(f"{pair} #{k}", runs[-1])
            for key in ("half_way", "half_the_stages"):
                known = [run[key]["ratio"] for run in runs if run[key] and run[key]["ratio"] is not None]
                median = statistics.median(known) if known else None
                print(f"{pair}: median ETA/left at {key} {median} over {len(known)} of {args.repeats}", flush=True)
    return 0


def _print_run(name: str, run: dict[str, Any]) -> None:
    print(f"{name}: connect {run['wall_s']} s", flush=True)
    for key in ("half_way", "half_the_stages"):
        line = run[key]
        shown = (f"at {line['at']} s: {line['done']}/{line['total']} stages, ETA {line['eta']:.0f} s, left "
                 f"{line['left']:.0f} s, ratio {line['ratio']}") if line else "none with an ETA"  # fmt: skip
        print(f"  {key}: {shown}", flush=True)
    print("  every line (at s: ETA/left): " + ", ".join(f"{x['at']}: {x['ratio']}" for x in run["lines"]), flush=True)
