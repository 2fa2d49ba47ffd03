"""GPU runs: M2M speed and memory on cifar_resnet18, the largest slice of the paper's experiment, and the GPU check.

    python -m benchmarks gpu m2m [--smoke]       # 200 ticks of M2M on cifar_resnet18: ticks/s, peak GPU memory
    python -m benchmarks gpu paper [--smoke]     # ResNet18/CIFAR-10 slice sized for about 8 minutes on an H100
    python -m benchmarks gpu check [--smoke] [--budget-s 300]   # issue 36's check, about 5 minutes on an H100:
        # the demo pair, resnet18 at CIFAR size, the 124M GPT-2 unsharded and sharded over one torchrun process,
        # each part printed as it finishes (ticks/s, peak GPU memory, the share outside SGD); not run on a GPU yet

Each uses the GPU when ``torch.cuda.is_available()`` (else the CPU); ``--smoke`` is a tiny CPU run of the same
code. Rows are appended to ``benchmarks/results/gpu.jsonl``. On a GPU machine with nothing installed, from the
repository root: ``PYTHONPATH=$PWD python3 -m benchmarks gpu check``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from benchmarks import harness

ENTRY = "gpu"
RUNS = ("m2m", "paper", "check")
# hf_llpf's dependencies by import name (pyproject.toml): a GPU machine's image may lack some (its datasets and
# pydantic), which then travel as wheels (docs/benchmarks.md, "The GPU check").
NEEDED = ("torch", "torchvision", "transformers", "timm", "accelerate", "datasets", "huggingface_hub", "safetensors",
          "pydantic", "yaml", "matplotlib", "sklearn", "tqdm", "jinja2")  # fmt: skip


def parser() -> argparse.ArgumentParser:
    """The entry's options: one subcommand per run."""
    return harness.subcommand_parser(ENTRY, __doc__, dest="run", names=RUNS)


def missing_packages() -> list[str]:
    """The import names of :data:`NEEDED` that this Python cannot import."""
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def main(argv: list[str]) -> int:
    """Run one run, or say which packages are missing (exit 2) before any is imported."""
    missing = missing_packages()
    if missing:
        print(f"benchmarks gpu: this Python lacks {', '.join(missing)} (hf_llpf's dependencies); on a GPU machine "
              "carry them as wheels: docs/benchmarks.md, \"The GPU check\"", file=sys.stderr)  # fmt: skip
        return 2
    return harness.run_subcommand(ENTRY, parser(), "run", argv)
