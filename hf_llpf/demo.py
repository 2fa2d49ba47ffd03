"""The demo behind ``make demo``: two ``small_cnn`` endpoints on ``digits`` (seeds 0 and 1), then the path."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hf_llpf.config import TrainRecipe
from hf_llpf.data import load_data


def run_demo(out: Path, *, threads: int = 1) -> int:
    """Train both endpoints (reusing them if already trained with the same recipe) and print their metrics."""
    from hf_llpf.cli import _metrics_table
    from hf_llpf.train import train_endpoint

    torch.set_num_threads(threads)
    start = time.perf_counter()
    data = load_data("digits")
    rows = {}
    for seed in (0, 1):
        recipe = TrainRecipe(model="small_cnn", seed=seed)
        _, metrics = train_endpoint(recipe, out_dir=out / f"endpoint_seed{seed}", data=data)
        rows[f"small_cnn seed {seed}"] = metrics
    print(_metrics_table(rows))
    print(f"endpoints written to {out}/endpoint_seed0 and {out}/endpoint_seed1 ({time.perf_counter() - start:.0f} s)")
    return 0
