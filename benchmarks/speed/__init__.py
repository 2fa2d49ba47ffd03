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

from benchmarks import harness

ENTRY = "speed"
PARTS = ("geometry", "layout", "evaluate", "storage", "memory")


def parser() -> argparse.ArgumentParser:
    """The entry's options: one subcommand per part."""
    return harness.subcommand_parser(ENTRY, __doc__, dest="part", names=PARTS)


def main(argv: list[str]) -> int:
    """Run one part."""
    return harness.run_subcommand(ENTRY, parser(), "part", argv)
