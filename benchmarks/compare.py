"""LLPF next to linear, SLERP, Bézier (at LLPF's budget and at 10x) and weight matching, judged on the same data.

    python -m benchmarks compare                      # small_cnn on digits (about 1 minute)
    python -m benchmarks compare --bezier-x10         # + Bézier at 10x LLPF's SGD iterations (3 minutes more)
    python -m benchmarks compare --family resnet18    # a family of the families benchmark (about 2 minutes)

- without ``--family``: small_cnn on digits, the demo's endpoints (the default TrainRecipe, seeds 0 and 1, from the
  benchmark cache); LLPF with its default settings;
- ``--family resnet18`` / ``vgg11_bn`` / ...: the CPU-scale family of the families benchmark (tiny width, digits
  upscaled, LLPF with that benchmark's settings and the family recipe's stages), judged on a fixed 512-example
  training subset.

Per method: :func:`hf_llpf.comparison.compare`'s row (max train loss, barrier, test accuracy range, SGD iterations,
seconds, ...). The comparison's run directories go to ``.bench_cache/compare/<name>``; the rows are appended to
``benchmarks/results/compare.jsonl`` and printed as the comparison's table.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from benchmarks import harness

ENTRY = "compare"


def _small_cnn() -> tuple:
    from hf_llpf.config import TrainRecipe
    from hf_llpf.data.bundle import load_data

    data = load_data("digits")
    a, b, _ = harness.endpoint_pair(TrainRecipe(seed=0), TrainRecipe(seed=1), data)
    return a, b, data, None, {}


def _family(name: str) -> tuple:
    from benchmarks.families import CPU_CONNECT, FAMILIES, _endpoints, recipe_stages

    fam = FAMILIES[name]
    torch.manual_seed(0)
    a, b, data, _, _ = _endpoints(fam)
    config = {**CPU_CONNECT, **recipe_stages(fam.recipe), **fam.connect}
    return a, b, data, config, {"train_subset": 512, "continuity_k": 0, "points": 21}


def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    from benchmarks.families import FAMILIES

    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--family", choices=list(FAMILIES), help="a family of the families benchmark instead of small_cnn")
    p.add_argument("--bezier-x10", action="store_true", help="also Bézier at 10x LLPF's SGD iterations")
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Compare every method on the pair, record and print the table."""
    from hf_llpf.comparison import compare, markdown_table

    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    name = args.family or "small_cnn"
    a, b, data, config, options = _family(name) if args.family else _small_cnn()
    common: dict[str, Any] = {"points": 31, "recalibrate_bn": True, "exist": "overwrite", "config": config, **options}
    out = harness.scratch(ENTRY, name)
    table = compare(a, b, data, out_dir=out, **common)
    if args.bezier_x10:
        llpf = next(r for r in table["rows"] if r["method"] == "llpf")
        x10 = {"iters": 10 * llpf["sgd_iters"]}
        extra = compare(a, b, data, out_dir=out / "x10", methods=["bezier"], bezier=x10, **common)
        if extra["probe"] != table["probe"]:
            raise SystemExit("the 10x Bézier run was judged on other data: not comparable")
        for r in extra["rows"]:
            r["method"] = "bezier (10x LLPF's SGD iterations)"
        table["rows"] += extra["rows"]
    results = harness.Results(ENTRY, args, argv)
    for row in table["rows"]:
        results.add({"pair": name, **row})
    print(f"{name}:")
    print(markdown_table(table))
    return 0
