"""GPU runs: M2M speed and memory on cifar_resnet18, and the largest slice of the paper's experiment.

    python -m benchmarks gpu m2m [--smoke]       # 200 ticks of M2M on cifar_resnet18: ticks/s, peak GPU memory
    python -m benchmarks gpu paper [--smoke]     # ResNet18/CIFAR-10 slice sized for about 8 minutes on an H100

Both use the GPU when ``torch.cuda.is_available()`` (else the CPU); ``--smoke`` is a tiny CPU run of the same
code. Rows are appended to ``benchmarks/results/gpu.jsonl``.
"""

from __future__ import annotations

import argparse

from benchmarks import harness

ENTRY = "gpu"
RUNS = ("m2m", "paper")


def parser() -> argparse.ArgumentParser:
    """The entry's options: one subcommand per run."""
    return harness.subcommand_parser(ENTRY, __doc__, dest="run", names=RUNS)


def main(argv: list[str]) -> int:
    """Run one run."""
    return harness.run_subcommand(ENTRY, parser(), "run", argv)
