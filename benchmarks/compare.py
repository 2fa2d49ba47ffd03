"""LLPF next to linear, SLERP, Bézier (at LLPF's budget and at 10x) and weight matching on small_cnn/digits.

Run: ``.venv/bin/python -m benchmarks.compare [--bezier-x10]`` (CPU, 1 thread; about 3 minutes, 8 more with
``--bezier-x10``). Endpoints (seeds 0 and 1, the default TrainRecipe) are cached in ``.bench_cache/``, the
comparison is written to ``.bench_cache/small_cnn_digits/compare``. Prints the table (docs/benchmarks.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from hf_llpf.comparison import compare, markdown_table
from hf_llpf.config import TrainRecipe
from hf_llpf.data import load_data
from hf_llpf.train import train_or_reuse

CACHE = Path(".bench_cache/small_cnn_digits")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    data = load_data("digits")
    for s in (0, 1):
        train_or_reuse(CACHE / f"seed{s}", TrainRecipe(seed=s), data, progress=False)
    a, b, out = CACHE / "seed0", CACHE / "seed1", CACHE / "compare"
    common = {"points": 31, "recalibrate_bn": True, "exist": "overwrite"}
    table = compare(a, b, data, out_dir=out, **common)
    if "--bezier-x10" in argv:
        llpf = next(r for r in table["rows"] if r["method"] == "llpf")
        extra = compare(
            a, b, data, out_dir=out / "x10", methods=["bezier"], bezier={"iters": 10 * llpf["sgd_iters"]}, **common
        )
        if extra["probe"] != table["probe"]:
            raise SystemExit("the 10x Bézier run was judged on other data: not comparable")
        for r in extra["rows"]:
            r["method"] = "bezier (10x LLPF's SGD iterations)"
        table["rows"] += extra["rows"]
    print(markdown_table(table))


if __name__ == "__main__":
    main(sys.argv[1:])
