"""Certified paths on small_cnn/digits: the loss ceiling's targets, over repair seeds and ceilings.

Run: ``.venv/bin/python -m benchmarks.certified [--seeds N] [--ceilings C1,C2,...] [key=value ...]``.

- ``--seeds N`` (default 10): the default settings (``loss_ceiling: auto``) with repair seeds 0..N-1 on one
  endpoint pair; per seed the max eval-mode train loss over every saved point on all 1437 training images, the
  SGD iterations as a multiple of one endpoint's, the share of the run spent probing; then median, mean, std.
- ``--ceilings``: one run per set ceiling (seed 0), the cost of each (what the auto ceiling's floor is chosen on).

Endpoints are the demo's (small_cnn, seeds 0 and 1, 30 epochs), cached in ``.bench_cache/small_cnn_digits``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from hf_llpf.api import connect, evaluate_run
from hf_llpf.config import TrainRecipe
from hf_llpf.data import load_data
from hf_llpf.train import train_or_reuse

CACHE = Path(".bench_cache/small_cnn_digits")


def one_run(data, overrides: dict, endpoint_iters: int, tag: str) -> dict:
    """Connect, evaluate on every training image; the row of figures."""
    start = time.perf_counter()
    path = connect(CACHE / "seed0", CACHE / "seed1", data, config=overrides, run_dir=CACHE / f"cert-{tag}",
                   exist="overwrite", progress=False)  # fmt: skip
    wall = time.perf_counter() - start
    summary = evaluate_run(path, data=data, report=False, continuity_k=1)["summary"]
    run = path.summary["run"]
    cert, timing = run["certification"], run["timing"]
    return {
        "tag": tag,
        "ceiling": cert["ceiling"],
        "certified": cert["certified"],
        "max_train_loss": summary["llpf"]["max_train_loss"],
        "worst_midpoint": summary["llpf"]["worst_continuity_loss"],
        "linear": summary["linear"]["max_train_loss"],
        "ticks": run["ticks"],
        "sgd": run["sgd_iters"],
        "x_endpoint": run["sgd_iters"] / endpoint_iters,
        # Every forward pass made for the certificate: the run's decisions, the final check, and the set-up's
        # endpoint losses and straight-line check.
        "probe_share": sum(timing.get(k, 0.0) for k in ("probe", "probe_final", "setup_probe")) / wall,
        "examples": cert.get("examples_run"),
        "backtracks": run["backtracks"],
        "probes": cert["probes"],
        "stopped": cert.get("probes_stopped_early", 0),
        "wall": wall,
    }


def _print(row: dict) -> None:
    print(
        f"{row['tag']:>10} | ceiling {row['ceiling']:.4f} | certified {row['certified']!s:5} | max train loss "
        f"{row['max_train_loss']:.4f} (all 1437) | worst midpoint {row['worst_midpoint']:.4f} | ticks "
        f"{row['ticks']:3d} | SGD {row['sgd']:5d} = {row['x_endpoint']:.2f}x | backtracks {row['backtracks']} | "
        f"probes {row['probes']} ({row['stopped']} stopped early), {row['examples']} examples | probing "
        f"{row['probe_share']:.1%} | wall "
        f"{row['wall']:.1f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--ceilings", default="")
    p.add_argument("overrides", nargs="*", help="ConnectConfig key=value")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.overrides)}
    data = load_data("digits")
    endpoint_iters = train_or_reuse(CACHE / "seed0", TrainRecipe(seed=0), data, progress=False)["iterations"]
    train_or_reuse(CACHE / "seed1", TrainRecipe(seed=1), data, progress=False)
    print(f"settings: {overrides or 'defaults'}; one endpoint = {endpoint_iters} SGD iterations; torch threads 1")
    rows = []
    for seed in range(args.seeds):
        rows.append(one_run(data, {**overrides, "seed": seed}, endpoint_iters, f"seed {seed}"))
        _print(rows[-1])
    if rows:
        losses, costs = [r["max_train_loss"] for r in rows], [r["x_endpoint"] for r in rows]
        std = statistics.pstdev(losses) if len(losses) > 1 else 0.0
        print(
            f"over {len(rows)} seeds: max train loss median {statistics.median(losses):.4f}, worst {max(losses):.4f}, "
            f"mean {statistics.mean(losses):.4f}, std {std:.4f} ({std / statistics.mean(losses):.0%} of the mean); "
            f"SGD median {statistics.median(costs):.2f}x one endpoint (max {max(costs):.2f}x); certified "
            f"{sum(r['certified'] for r in rows)}/{len(rows)}; probing median "
            f"{statistics.median(r['probe_share'] for r in rows):.1%} of the run"
        )
    for c in [float(x) for x in args.ceilings.split(",") if x]:
        _print(one_run(data, {**overrides, "loss_ceiling": c}, endpoint_iters, f"ceil {c:g}"))


if __name__ == "__main__":
    main()
