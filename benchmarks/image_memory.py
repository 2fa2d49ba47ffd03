"""Peak memory of a connect run on a generated image folder: 2,000 vs 20,000 64-px JPEGs (docs/data.md).

    .venv/bin/python -m benchmarks.image_memory [--sizes 2000 20000] [--decode auto]

Each run is ``hf-llpf connect`` of two random small CNNs (3 channels, 10 classes) on the folder, 5 ticks, in a
fresh process whose peak RSS (``ru_maxrss``) is printed. Target (issue 17): the 20,000-image run's peak RSS at
most 1.3x the 2,000-image run's. With ``--decode memory`` every image is decoded up front (the old behaviour).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNNER = """
import resource, sys, time, torch
torch.set_num_threads(1)
from hf_llpf.cli import main
start = time.perf_counter()
code = main(["connect", sys.argv[1], sys.argv[2], "--data", sys.argv[3], "--out", sys.argv[4], "--no-progress",
             "max_ticks=5", "min_iters=2", "max_iters=3", "data.decode=" + sys.argv[5]])
print("RESULT", code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, round(time.perf_counter() - start, 1))
"""


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

    from hf_llpf.models import as_endpoint, create_model, save_model

    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("small_cnn", num_classes=10, in_chans=3)
        ep = as_endpoint(model)
        save_model(model, root / f"cnn_{seed}", kind=ep.kind, arch=ep.arch)
        out.append(root / f"cnn_{seed}")
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--decode", default="auto", choices=["auto", "memory", "on_access"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        a, b = endpoints(root)
        rows = []
        for n in args.sizes:
            t = time.perf_counter()
            folder = write_folder(root / f"images_{n}", n)
            made = time.perf_counter() - t
            cmd = [sys.executable, "-c", RUNNER, str(a), str(b), str(folder), str(root / f"run_{n}"), args.decode]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
            if line is None:
                raise SystemExit(f"run on {n} images failed:\n{out.stderr[-2000:]}")
            _, code, rss_kb, seconds = line.split()
            rows.append((n, int(code), int(rss_kb) / 1024, float(seconds), made))
    print("| images | decode | exit | peak RSS (MiB) | connect s | folder written s |\n|---|---|---|---|---|---|")
    for n, code, rss, seconds, made in rows:
        print(f"| {n} | {args.decode} | {code} | {rss:.0f} | {seconds:.1f} | {made:.1f} |")
    if len(rows) >= 2:
        print(
            f"ratio of peak RSS, {rows[-1][0]} vs {rows[0][0]} images: {rows[-1][2] / rows[0][2]:.2f} (target <= 1.3)"
        )


if __name__ == "__main__":
    main()
