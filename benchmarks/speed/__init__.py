"""The parts' costs: geometry and stage building, the eval layout, evaluating a path, storage, image memory.

    python -m benchmarks speed geometry [--params 100e6] [--repeats 3]   # stage building, geometry functions
    python -m benchmarks speed layout [--images 256] [--repeats 15] [FAMILY ...]  # NCHW vs the eval view
    python -m benchmarks speed evaluate [--points 50]                    # evaluating 50 points of small_cnn
    python -m benchmarks speed storage [FAMILY ...]                      # bytes and judged change of bf16/fp16
    python -m benchmarks speed memory [--sizes 2000 20000] [--decode auto]   # peak RSS on image folders

``python -m benchmarks speed PART --help`` says what each part measures. Rows are appended to
``benchmarks/results/speed.jsonl`` (each with its ``part``).
"""

from __future__ import annotations

import argparse
import importlib

from benchmarks import harness

ENTRY = "speed"
PARTS = ("geometry", "layout", "evaluate", "storage", "memory")


def parser() -> argparse.ArgumentParser:
    """The entry's options: one subcommand per part."""
    p = harness.entry_parser(ENTRY, __doc__)
    sub = p.add_subparsers(dest="part", required=True, metavar="PART")
    for name in PARTS:
        doc = importlib.import_module(f"benchmarks.speed.{name}").__doc__
        first, _, rest = doc.partition("\n\n")
        part = sub.add_parser(name, help=first.strip(), description=first.strip(), epilog=rest,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        importlib.import_module(f"benchmarks.speed.{name}").add_arguments(part)
        harness.common_options(part)
    return p


def main(argv: list[str]) -> int:
    """Run one part."""
    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    importlib.import_module(f"benchmarks.speed.{args.part}").run(args, harness.Results(ENTRY, args, argv))
    return 0
