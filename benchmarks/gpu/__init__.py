"""GPU runs: M2M speed and memory on cifar_resnet18, and the largest slice of the paper's experiment.

    python -m benchmarks gpu m2m [--smoke]       # 200 ticks of M2M on cifar_resnet18: ticks/s, peak GPU memory
    python -m benchmarks gpu paper [--smoke]     # ResNet18/CIFAR-10 slice sized for about 8 minutes on an H100

Both use the GPU when ``torch.cuda.is_available()`` (else the CPU); ``--smoke`` is a tiny CPU run of the same
code. Rows are appended to ``benchmarks/results/gpu.jsonl``.
"""

from __future__ import annotations

import argparse
import importlib

from benchmarks import harness

ENTRY = "gpu"
RUNS = ("m2m", "paper")


def parser() -> argparse.ArgumentParser:
    """The entry's options: one subcommand per run."""
    p = harness.entry_parser(ENTRY, __doc__)
    sub = p.add_subparsers(dest="run", required=True, metavar="RUN")
    for name in RUNS:
        module = importlib.import_module(f"benchmarks.gpu.{name}")
        first, _, rest = module.__doc__.partition("\n\n")
        one = sub.add_parser(name, help=first.strip(), description=first.strip(), epilog=rest,
                             formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        module.add_arguments(one)
        harness.common_options(one)
    return p


def main(argv: list[str]) -> int:
    """Run one GPU run."""
    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    importlib.import_module(f"benchmarks.gpu.{args.run}").run(args, harness.Results(ENTRY, args, argv))
    return 0
