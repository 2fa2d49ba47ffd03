"""How long evaluating a path takes: 50 points of small_cnn on all of digits, one CPU thread.

    python -m benchmarks speed evaluate [--points 50] [--threads 1]

The target: the 50 points' evaluation (every point on the whole training set and the test set) under 20 s on
one core. Also printed: the full default ``evaluate_path`` (+ 21-point linear baseline + continuity K=4 on 512
examples), with BatchNorm recalibration, and drawing the plots. The endpoints are trained for 3 epochs first
(not timed); the points are the straight line between them, written like a real run directory.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import Results
from hf_llpf.api import evaluate_run
from hf_llpf.config import ConnectConfig, TrainRecipe
from hf_llpf.data.bundle import load_data
from hf_llpf.evaluation import evaluate_path, load_point
from hf_llpf.recipes import to_yaml
from hf_llpf.reporting.plots import plot_path
from hf_llpf.run import RunWriter
from hf_llpf.training.endpoint import train_endpoint


def _write_run(root: Path, a, b, n: int) -> None:
    writer = RunWriter(root)
    model = copy.deepcopy(a.model)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    points = []
    for i in range(n):
        load_point(model, sa, sb, i / (n - 1))
        rel = writer.write_point(i, model, a)
        points.append(
            {
                "index": i,
                "tick": i,
                "stage": 0,
                "phase": "m2m",
                "train_loss": None,
                "sgd_iters": 0,
                "dist_a": None,
                "dist_b": None,
                "point": rel,
            }
        )
    writer.write_yaml("llpf_config.yaml", to_yaml(ConnectConfig()))
    writer.write_metrics(points, [])
    writer.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This part's options."""
    parser.add_argument("--points", type=int, default=50)


def run(args: argparse.Namespace, results: Results) -> None:
    """Print and record the timings."""
    data = load_data("digits")
    a, _ = train_endpoint(TrainRecipe(seed=0, epochs=3), data=data, progress=False)
    b, _ = train_endpoint(TrainRecipe(seed=1, epochs=3), data=data, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        _write_run(run_dir, a, b, args.points)
        cases = {
            "points only (train+test, whole sets)": {"continuity_k": 0, "linear_points": 2},
            "default evaluate_path (+linear 21, continuity K=4)": {},
            "default + recalibrate_bn": {"recalibrate_bn": True},
        }
        n_train, n_test = len(data.train_tensors), len(data.test_tensors)
        print(
            f"small_cnn, digits ({n_train} train + {n_test} test), {args.points} points, "
            f"{torch.get_num_threads()} thread(s)"
        )
        for name, opts in cases.items():
            start = time.perf_counter()
            evaluate_path(run_dir, data=data, **opts)
            seconds = time.perf_counter() - start
            print(f"  {name:<52} {seconds:6.2f} s")
            results.add({"part": "evaluate", "what": name, "points": args.points, "seconds": seconds})
        evaluate_run(run_dir, data=data, report=False)  # the metrics the plots read
        start = time.perf_counter()
        plot_path(run_dir)
        seconds = time.perf_counter() - start
        print(f"  {'plots (loss, accuracy, layers)':<52} {seconds:6.2f} s")
        results.add({"part": "evaluate", "what": "plots", "points": args.points, "seconds": seconds})
