"""Issue-4 targets on small_cnn/digits: path quality vs linear interpolation, SGD cost, time outside SGD.

Run: ``.venv/bin/python -m benchmarks.m2m_digits [key=value ...]`` (overrides of ConnectConfig).
Endpoints (seeds 0 and 1, the default TrainRecipe) are cached in ``.bench_cache/``. Prints the figures.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import yaml

from hf_llpf.api import connect, evaluate_run
from hf_llpf.config import TrainRecipe
from hf_llpf.data import load_data
from hf_llpf.train import train_or_reuse

CACHE = Path(".bench_cache/small_cnn_digits")


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in argv)}
    data = load_data("digits")
    endpoint_iters = [
        train_or_reuse(CACHE / f"seed{s}", TrainRecipe(seed=s), data, progress=False)["iterations"] for s in (0, 1)
    ]
    start = time.perf_counter()
    path = connect(
        CACHE / "seed0",
        CACHE / "seed1",
        data,
        config=overrides,
        run_dir=CACHE / "path",
        exist="overwrite",
        progress=False,
    )
    wall = time.perf_counter() - start
    summary = evaluate_run(path, data=data, report=False)["summary"]
    run = path.summary["run"]
    sgd = run["timing"].get("train", 0.0)
    print(f"settings: {overrides or 'defaults'}")
    print(
        f"max eval-mode train loss over {len(path)} saved points: LLPF {summary['llpf']['max_train_loss']:.4f}"
        f"  linear {summary['linear']['max_train_loss']:.4f}  (target: LLPF <= 0.1, linear > 1.0)"
    )
    print(
        f"barrier: LLPF {summary['llpf']['barrier']:.4f}  linear {summary['linear']['barrier']:.4f}; "
        f"worst continuity segment {summary['llpf']['worst_continuity_loss']:.4f}"
    )
    print(
        f"SGD iterations: {run['sgd_iters']} = {run['sgd_iters'] / endpoint_iters[0]:.2f}x one endpoint's "
        f"{endpoint_iters[0]} (target <= 5x); ticks {run['ticks']}; stages started at {run['stage_starts']}"
    )
    print(f"wall {wall:.1f} s; time outside SGD {(wall - sgd) / wall:.1%} (target <= 15%); by phase: {run['timing']}")


if __name__ == "__main__":
    main(sys.argv[1:])
