"""Issue-6 targets: a cross-sphere pair on digits (weight decay 5e-4 vs 5e-3), connected three ways.

Run: ``.venv/bin/python -m benchmarks.cross_sphere``. Prints, on all of digits' training set in eval mode:
the cross-sphere path's max train loss (target <= 0.15) beside linear interpolation's (target > 1.0), plain
M2M forced on the same pair (the ablation), and the M2O phase's max loss with AngleConformal on and off.
Settings: ``recipes/digits-cross-sphere.yaml`` (plus each row's override). Endpoints are cached in
``.bench_cache/cross_sphere/``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hf_llpf.api import connect, evaluate_run
from hf_llpf.config import ConnectConfig, TrainRecipe, build
from hf_llpf.data import load_data
from hf_llpf.models import load_endpoint
from hf_llpf.recipes import load_recipe
from hf_llpf.spheres import sphere_distance, sphere_report
from hf_llpf.train import train_or_reuse

CACHE = Path(".bench_cache/cross_sphere")
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "digits-cross-sphere.yaml"


def _phase_max(result: dict, phase: str) -> float:
    losses = [p["eval_train_loss"] for p in result["points"] if p["phase"] == phase]
    return max(losses) if losses else float("nan")


def main() -> None:
    torch.set_num_threads(1)
    data = load_data("digits")
    for name, seed, wd in (("wd5e-4", 0, 5e-4), ("wd5e-3", 1, 5e-3)):
        train_or_reuse(CACHE / name, TrainRecipe(seed=seed, weight_decay=wd), data, progress=False)
    a, b = CACHE / "wd5e-4", CACHE / "wd5e-3"
    report = sphere_report(load_endpoint(a).model, load_endpoint(b).model)
    ratios = [r["ratio"] for r in report if r["ndim"] > 1]
    print(
        f"weight variance ratios B/A: {min(ratios):.3f}–{max(ratios):.3f}; sphere distance "
        f"{sphere_distance(report):.3f}"
    )
    runs = {
        "cross-sphere (auto: M2O+M2M)": {},
        "M2M forced (ablation)": {"method": "m2m"},
        "cross-sphere, AngleConformal off": {"m2o": {"lr_policy": "none"}},
    }
    print("| run | max train loss | barrier | M2O-phase max loss | ticks | SGD iterations | seconds |")
    print("|---|---|---|---|---|---|---|")
    linear = None
    for label, overrides in runs.items():
        t = time.perf_counter()
        path = connect(
            a,
            b,
            data,
            config=build(ConnectConfig, {**load_recipe(RECIPE), **overrides}),
            run_dir=CACHE / "run",
            exist="overwrite",
            progress=False,
        )
        seconds = time.perf_counter() - t
        result = evaluate_run(path, data=data, report=False, continuity_k=0)
        s, run = result["summary"]["llpf"], path.summary["run"]
        linear = result["summary"]["linear"]
        print(
            f"| {label} | {s['max_train_loss']:.4f} | {s['barrier']:.4f} | {_phase_max(result, 'm2o'):.4f} "
            f"| {run['ticks']} | {run['sgd_iters']} | {seconds:.0f} |"
        )
    print(f"| linear interpolation | {linear['max_train_loss']:.4f} | {linear['barrier']:.4f} | – | – | – | – |")


if __name__ == "__main__":
    main()
