"""200 ticks of M2M on cifar_resnet18 on one GPU: ticks/s, peak GPU memory and the share of time outside SGD.

``python -m benchmarks gpu m2m [--smoke]``, on a GPU machine; well under 8 minutes on an H100/H200 (an
estimate). NOT RUN YET: no GPU machine was lent to the session
that wrote it. Endpoints are trained briefly from random init on generated CIFAR-shaped data (class-dependent
mean patterns plus noise), since no data can be downloaded; the figures measure speed, not path quality.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks import harness
from hf_llpf.api import connect
from hf_llpf.config import ConnectConfig
from hf_llpf.data.bundle import DataBundle, ImageData
from hf_llpf.models.endpoints import as_endpoint, create_model

OUT = harness.CACHE / "gpu" / "m2m"


def generated_cifar(n: int, seed: int) -> ImageData:
    """CIFAR-shaped uint8 images whose class sets a mean pattern: learnable, deterministic, no download."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    patterns = torch.rand(10, 3, 32, 32, generator=torch.Generator().manual_seed(1234)) * 255
    noise = torch.randn(n, 3, 32, 32, generator=g) * 40
    return ImageData((patterns[labels] + noise).clamp(0, 255).to(torch.uint8), labels)


def train_briefly(model: torch.nn.Module, data: DataBundle, device: torch.device, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    stream = data.loader("train", batch_size=256, seed=seed).stream()
    for _ in range(steps):
        x, y = next(stream)
        loss = torch.nn.functional.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.cpu().eval()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This run's options."""
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU run of the same code (width 8)")


def run(args: argparse.Namespace, results: harness.Results) -> None:
    """Train two endpoints briefly, connect them for 200 ticks; print and record the speed and memory."""
    smoke = args.smoke
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'})")
    from hf_llpf.config import DataConfig

    data = DataBundle(
        None, None, generated_cifar(20000, 0), generated_cifar(2000, 1), 10, DataConfig(source="generated-cifar")
    )
    endpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("cifar_resnet18", num_classes=10, **({"width": 8} if smoke else {}))
        t = time.perf_counter()
        steps = 20 if smoke else 300
        train_briefly(model, data, device, steps=steps, seed=seed)
        print(f"endpoint {seed}: trained {steps} steps in {time.perf_counter() - t:.1f} s")
        endpoints.append(as_endpoint(model))
    config = ConnectConfig(
        max_ticks=200, step_r=0.005, min_iters=5, max_iters=5, batch_size=256, save_every=50, checkpoint_every=100
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    path = connect(endpoints[0], endpoints[1], data, config=config, run_dir=OUT, exist="overwrite", progress=False)
    wall = time.perf_counter() - t
    run = path.summary["run"]
    print(
        f"ticks {run['ticks']} in {wall:.1f} s: {run['ticks'] / wall:.2f} ticks/s; SGD iterations {run['sgd_iters']}"
    )
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if peak is not None:
        print(f"peak GPU memory {peak:.2f} GiB")
    outside = (wall - run["timing"].get("train", 0.0)) / wall
    print(f"time outside SGD {outside:.1%}; by phase {run['timing']}")
    results.add({"run": "m2m", "smoke": smoke, "device": str(device), "ticks": run["ticks"], "wall_s": wall,
                 "ticks_per_s": run["ticks"] / wall, "sgd_iters": run["sgd_iters"], "peak_gpu_gib": peak,
                 "outside_sgd": outside, "timing": run["timing"]})  # fmt: skip
