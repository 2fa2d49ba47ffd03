"""LLPF next to linear, SLERP, Bézier (at LLPF's budget and at 10x) and weight matching, judged on the same data.

Run: ``.venv/bin/python -m benchmarks.compare [--bezier-x10] [--family NAME]`` (CPU, 1 thread).

- without ``--family``: small_cnn on digits, endpoints of the default TrainRecipe (seeds 0 and 1) cached in
  ``.bench_cache/small_cnn_digits``; LLPF with its default settings (about 1 minute, 3 more with ``--bezier-x10``);
- ``--family resnet18`` / ``vgg11_bn`` / ...: the CPU-scale family of :mod:`benchmarks.families` (tiny width, digits
  upscaled, LLPF with that benchmark's settings and the family recipe's stages), judged on a fixed 512-example
  training subset (about 2 minutes each).

Writes the comparison to ``.bench_cache/compare-<name>`` and prints the table (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hf_llpf.comparison import compare, markdown_table
from hf_llpf.config import TrainRecipe
from hf_llpf.data import load_data
from hf_llpf.train import train_or_reuse

CACHE = Path(".bench_cache")


def _small_cnn() -> tuple:
    data = load_data("digits")
    folder = CACHE / "small_cnn_digits"
    for s in (0, 1):
        train_or_reuse(folder / f"seed{s}", TrainRecipe(seed=s), data, progress=False)
    return folder / "seed0", folder / "seed1", data, None, {}


def _family(name: str) -> tuple:
    from benchmarks.families import CPU_CONNECT, FAMILIES, _endpoints, recipe_stages

    fam = FAMILIES[name]
    torch.manual_seed(0)
    a, b, data, _, _ = _endpoints(fam)
    config = {**CPU_CONNECT, **recipe_stages(fam.recipe), **fam.connect}
    return a, b, data, config, {"train_subset": 512, "continuity_k": 0, "points": 21}


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    name = argv[argv.index("--family") + 1] if "--family" in argv else "small_cnn"
    a, b, data, config, options = _small_cnn() if name == "small_cnn" else _family(name)
    common = {"points": 31, "recalibrate_bn": True, "exist": "overwrite", "config": config, **options}
    out = CACHE / f"compare-{name}"
    table = compare(a, b, data, out_dir=out, **common)
    if "--bezier-x10" in argv:
        llpf = next(r for r in table["rows"] if r["method"] == "llpf")
        x10 = {"iters": 10 * llpf["sgd_iters"]}
        extra = compare(a, b, data, out_dir=out / "x10", methods=["bezier"], bezier=x10, **common)
        if extra["probe"] != table["probe"]:
            raise SystemExit("the 10x Bézier run was judged on other data: not comparable")
        for r in extra["rows"]:
            r["method"] = "bezier (10x LLPF's SGD iterations)"
        table["rows"] += extra["rows"]
    print(f"{name}:")
    print(markdown_table(table))


if __name__ == "__main__":
    main(sys.argv[1:])
