"""The largest slice of the paper's ResNet18 / CIFAR-10 experiment that fits about 8 minutes on one H100.

**Not run yet**: written on machines without a GPU (no GPU was lent to the session that wrote it). Only its
``--smoke`` mode (a tiny ResNet18 on a few hundred generated CIFAR-shaped images, CPU) has been executed.
Timings in the plan below are estimates, not measurements.

``python -m benchmarks gpu paper`` (options: ``--epochs``, ``--step-r``, ``--max-iters``, ``--smoke``).

Plan (defaults), against the paper's full experiment (arXiv 2505.02604; docs/algorithm.md):
- data: CIFAR-10 through ``datasets.load_dataset("uoft-cs/cifar10")`` when reachable, else generated
  CIFAR-shaped data (50 000 + 10 000 images 3x32x32 in 10 classes, class templates + noise) — the table says
  which was used;
- endpoints: CIFAR ResNet18 (width 64), seeds 0 and 1, the paper's recipe (SGD 0.1, momentum 0.9, wd 5e-4,
  OneCycle, crop + flip) but 6 epochs at batch 512 instead of 70 at 256 (~1.5 min each, estimated);
- path: M2M over the paper's stages (stem, layer1..layer4, fc: the regexes of its hand-set schedule, from
  ``recipes/resnet18-cifar10-llpf.yaml``) joining by arrival, with the paper's minimal training (SGD lr 1e-3,
  no momentum, batch 256, at least 20 iterations per tick) but ``step_r`` 0.05 (20 ticks per stage instead of
  2000) and at most 60 iterations per tick; the loss threshold is the paper's 0.005 raised to 1.2x the
  endpoints' mean training loss (briefly trained endpoints never reach 0.005);
- evaluation: 5000 fixed training images and the test set, eval mode, 11 linear points.

Device placement: only through the Accelerator inside :func:`hf_llpf.training.endpoint.train_endpoint`,
:func:`hf_llpf.connect` and :func:`hf_llpf.api.evaluate_run` (the GPU when ``torch.cuda.is_available()``).
It prints the columns of ``benchmarks/results/families.md`` and appends its row to ``benchmarks/results/gpu.jsonl``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import datasets
import torch
from torch import nn

import hf_llpf
from benchmarks import harness
from benchmarks.families import RECIPES, markdown_table, recipe_stages, stage_coverage
from hf_llpf.api import evaluate_run
from hf_llpf.config import DataConfig, TrainRecipe
from hf_llpf.data.bundle import DataBundle, ImageData, load_data
from hf_llpf.training.endpoint import train_endpoint


def generated_cifar(n_train: int, n_test: int, *, seed: int = 0) -> DataBundle:
    """CIFAR-shaped stand-in data: per class a fixed random 3x32x32 template, plus Gaussian noise.

    Learnable but not trivial (noise std 0.3 against templates uniform in [0, 1]), so two endpoints differ and linear
    interpolation between them shows a barrier.
    """
    g = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=g)

    def split(n: int) -> ImageData:
        labels = torch.randint(0, 10, (n,), generator=g)
        x = templates[labels] + 0.3 * torch.randn(n, 3, 32, 32, generator=g)
        return ImageData((x.clamp(0, 1) * 255).to(torch.uint8), labels)

    train, test = split(n_train), split(n_test)
    config = DataConfig(source="generated-cifar-shaped", augment=True)

    def table(d: ImageData) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"label": d.labels.tolist()})

    return DataBundle(table(train), table(test), train, test, 10, config)


def cifar10(smoke: bool) -> tuple[DataBundle, str]:
    """CIFAR-10 from the Hub (or its local cache), else generated CIFAR-shaped data; and which one it is."""
    if not smoke:
        try:
            return load_data("uoft-cs/cifar10", augment=True), "CIFAR-10 (uoft-cs/cifar10)"
        except Exception as err:  # offline / no cache: say so in the output and go on with stand-in data
            print(f"CIFAR-10 unavailable ({type(err).__name__}: {str(err).splitlines()[0][:120]}); generated data")
    n_train, n_test = (512, 256) if smoke else (50_000, 10_000)
    return generated_cifar(n_train, n_test), f"generated CIFAR-shaped data ({n_train} + {n_test} images)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """This run's options."""
    p.add_argument("--epochs", type=int, default=6, help="endpoint training epochs (the paper: 70)")
    p.add_argument("--step-r", type=float, default=0.05, help="M2M step per tick, fraction of the initial distance")
    p.add_argument("--max-iters", type=int, default=60, help="most SGD iterations per tick (the paper: 20000)")
    p.add_argument("--smoke", action="store_true", help="tiny CPU check of this script (width 4, 512 images)")


def _endpoints(args: argparse.Namespace, bundle: Any) -> tuple[list[nn.Module], list[dict]]:
    """The two CIFAR ResNet18 endpoints (seeds 0 and 1) and their training metrics, each printed as it ends."""
    model_args = {"width": 4} if args.smoke else {}
    endpoints, metrics = [], []
    for seed in (0, 1):
        recipe = TrainRecipe(
            model="cifar_resnet18",
            model_args=model_args,
            data=bundle.config,
            seed=seed,
            epochs=4 if args.smoke else args.epochs,
            batch_size=64 if args.smoke else 512,
            optimizer="sgd",
            lr=0.01 if args.smoke else 0.1,  # the smoke's width-4 network on 512 images diverges at 0.1
            momentum=0.9,
            weight_decay=5e-4,
            schedule="onecycle",
        )
        endpoint, m = train_endpoint(recipe, data=bundle, progress=not args.smoke)
        endpoints.append(endpoint.model)
        metrics.append(m)
        print(
            f"endpoint seed {seed}: train loss {m['train']['loss']:.4f} acc {m['train']['accuracy']:.2%}, "
            f"test acc {m['test']['accuracy']:.2%}, {m['iterations']} iterations, {m['seconds']:.0f} s"
        )
    return endpoints, metrics


def _config(args: argparse.Namespace, endpoint_loss: float) -> dict[str, Any]:
    """The connect's settings: the paper's stages and radial steps, its loss threshold over the endpoints' loss."""
    config = {
        "method": "m2m",
        **recipe_stages("resnet18-cifar10-llpf.yaml"),  # the paper's stages (its schedule's regexes), by arrival
        "step_r": args.step_r,
        "step_a": 0.0,
        "step_f": 0.0,
        "arrival_tol": 0.05,
        "min_iters": 20,
        "max_iters": args.max_iters,
        "loss_threshold": max(0.005, 1.2 * endpoint_loss),
        "lr": 0.001,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "batch_size": 256,
        "max_ticks": 400,
        "save_every": 10,
        "checkpoint_every": 50,
    }
    if args.smoke:
        config.update(step_r=0.5, min_iters=2, max_iters=4, batch_size=64)
    return config


def run(args: argparse.Namespace, results: harness.Results) -> None:
    """Train the endpoints, connect, evaluate; print and record the row."""
    start = time.perf_counter()
    bundle, data_name = cifar10(args.smoke)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}; data: {data_name}")
    endpoints, metrics = _endpoints(args, bundle)
    train_seconds = time.perf_counter() - start
    config = _config(args, sum(m["train"]["loss"] for m in metrics) / 2)
    run_dir = harness.CACHE / "gpu" / "paper"
    t = time.perf_counter()
    path = hf_llpf.connect(*endpoints, bundle, config=config, run_dir=run_dir, exist="overwrite", progress=True)
    connect_seconds = time.perf_counter() - t
    summary = evaluate_run(
        path, data=bundle, train_subset=256 if args.smoke else 5000, linear_points=11, continuity_k=1, report=False
    )["summary"]
    run = path.summary["run"]
    state_a, state_b = endpoints[0].state_dict(), endpoints[1].state_dict()
    first, last = path.model_at(0).state_dict(), path.model_at(-1).state_dict()
    exact = all(torch.equal(first[k], state_a[k]) and torch.equal(last[k], state_b[k]) for k in state_a)
    row = {
        "family": "resnet18 (GPU slice)" if not args.smoke else "resnet18 (smoke, CPU)",
        "params": sum(p.numel() for p in endpoints[0].parameters()),
        "llpf_max_train_loss": summary["llpf"]["max_train_loss"],
        "linear_max_train_loss": summary["linear"]["max_train_loss"],
        "llpf_barrier": summary["llpf"]["barrier"],
        "linear_barrier": summary["linear"]["barrier"],
        "ticks": run["ticks"],
        "sgd_iters": run["sgd_iters"],
        "endpoint_iters": metrics[0]["iterations"],
        "connect_seconds": round(connect_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "exact_endpoints": exact,
        "stage_problems": stage_coverage(run_dir, endpoints[0]),
        "train_seconds": round(train_seconds, 1),
        "data": data_name,
        "device": str(device),
        "config": config,
    }
    ok = exact and not row["stage_problems"] and row["llpf_max_train_loss"] < row["linear_max_train_loss"]
    row["status"] = "connected" if ok else "failed: see exact_endpoints / stage_problems / losses"
    results.add({"run": "paper", "smoke": args.smoke, **row})
    print(markdown_table([row]))
    print(f"recipe for the full experiment: {RECIPES / 'resnet18-cifar10-llpf.yaml'}")
