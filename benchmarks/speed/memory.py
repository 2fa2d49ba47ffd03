"""Peak memory of a connect run on a generated image folder: 2,000 vs 20,000 64-px JPEGs (docs/data.md).

    python -m benchmarks speed memory [--sizes 2000 20000] [--decode auto]

Each run is ``hf-llpf connect`` of two random small CNNs (3 channels, 10 classes) on the folder, 5 ticks, in a
fresh process whose peak RSS is printed. The target: the 20,000-image run's peak RSS at most 1.3x the
2,000-image run's. With ``--decode memory`` every image is decoded up front (the old behaviour).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import Results, measure


def connect_cli(a: str, b: str, folder: str, out: str, decode: str) -> dict:
    """``hf-llpf connect`` of ``a`` and ``b`` on an image folder, 5 ticks (a measured child's job)."""
    from hf_llpf.cli import main

    start = time.perf_counter()
    code = main(["connect", a, b, "--data", folder, "--out", out, "--no-progress", "max_ticks=5", "min_iters=2",
                 "max_iters=3", f"data.decode={decode}"])  # fmt: skip
    return {"exit": code, "seconds": round(time.perf_counter() - start, 1)}


def write_folder(root: Path, n: int, *, size: int = 64, seed: int = 0) -> Path:
    """``n`` random-noise-plus-gradient JPEGs in 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    for i in range(n):
        label = i % 10
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        base = ramp[None, :, None] * (label + 1) / 10 + rng.normal(0, 25, (size, size, 3))
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def endpoints(root: Path) -> tuple[Path, Path]:
    import torch

    from hf_llpf.models.endpoints import as_endpoint, create_model, save_model

    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("small_cnn", num_classes=10, in_chans=3)
        ep = as_endpoint(model)
        save_model(model, root / f"cnn_{seed}", kind=ep.kind, arch=ep.arch)
        out.append(root / f"cnn_{seed}")
    return out[0], out[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's options."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--decode", default="auto", choices=["auto", "memory", "on_access"])


def run(args: argparse.Namespace, results: Results) -> None:
    """One measured connect per folder size; print and record the table and the ratio."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a, b = endpoints(root)
        rows = []
        for n in args.sizes:
            t = time.perf_counter()
            folder = write_folder(root / f"images_{n}", n)
            made = time.perf_counter() - t
            job = {"a": str(a), "b": str(b), "folder": str(folder), "out": str(root / f"run_{n}"),
                   "decode": args.decode}  # fmt: skip
            try:
                got = measure("benchmarks.speed.memory:connect_cli", job, threads=args.threads)
            except subprocess.CalledProcessError as err:
                raise SystemExit(f"run on {n} images failed: {err}") from err
            rows.append(results.add({"part": "memory", "images": n, "decode": args.decode, **got, "written_s": made}))
    print("| images | decode | exit | peak RSS (MiB) | connect s | folder written s |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['images']} | {r['decode']} | {r['exit']} | {r['peak_rss_mib']:.0f} | {r['seconds']:.1f} "
              f"| {r['written_s']:.1f} |")  # fmt: skip
    if len(rows) >= 2:
        ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
        print(f"ratio of peak RSS, {rows[-1]['images']} vs {rows[0]['images']} images: {ratio:.2f} (target <= 1.3)")
