"""Try candidate connect settings on small_cnn/digits: max eval-mode train loss vs SGD iterations (issue 10, item 2).

    .venv/bin/python -m benchmarks.explore_defaults "" step_r=0.1 "step_r=0.1,arrival_tol=0.1"
    .venv/bin/python -m benchmarks.explore_defaults --seeds 10 "" loss_threshold=0.05
    .venv/bin/python -m benchmarks.explore_defaults --model cifar_resnet18 "" step_r=0.1

Each argument is one candidate: comma-separated ``key=value`` overrides of ``ConnectConfig`` ("" = the defaults).
Endpoints are the benchmark's (``.bench_cache/small_cnn_digits``; ``--model cifar_resnet18``: the width-8
ResNet18). The max train loss is ``evaluate_path``'s (eval
mode, every saved point, all 1437 training images) and its worst continuity segment (K=4, 512 images): large steps
keep the saved points low while the straight segments between them are not. Add ``save_every=1`` to a candidate to
judge every tick, not every tenth. Prints one markdown row per candidate as it finishes. One torch thread.

With ``--seeds N`` each candidate runs with repair-training seeds 0..N-1 (the ``seed`` setting: batch order) and
the row gives the mean, std and std/mean of the max train loss, the worst seed and the median SGD iterations
(continuity not measured).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import yaml

from benchmarks.run import BENCHES, _data, ensure_endpoints


def parse_candidate(text: str) -> dict:
    """``"a=1,b=x"`` → ``{"a": 1, "b": "x"}`` (values parsed as YAML)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {k.strip(): yaml.safe_load(v) for k, v in pairs}


def run_candidate(bench, data, overrides: dict, *, continuity: bool = True) -> dict:
    """Connect the benchmark endpoints with ``overrides`` and judge the path; returns the row's figures."""
    from hf_llpf.api import connect
    from hf_llpf.evaluation import evaluate_path

    start = time.perf_counter()
    path = connect(
        bench.cache / "seed0",
        bench.cache / "seed1",
        data,
        config=overrides,
        run_dir=bench.cache / "runs" / "explore",
        exist="overwrite",
        progress=False,
    )
    wall = time.perf_counter() - start
    judged = {"linear_points": 2} if continuity else {"linear_points": 2, "continuity_k": 0}
    summary = evaluate_path(path, data=data, **judged)["summary"]["llpf"]
    run = path.summary["run"]
    return {
        "max_train_loss": summary["max_train_loss"],
        "worst_continuity": summary.get("worst_continuity_loss"),
        "sgd_iters": run["sgd_iters"],
        "ticks": run["ticks"],
        "outside_sgd": (wall - run["timing"].get("train", 0.0)) / wall,
        "wall_s": wall,
    }


def main(argv: list[str]) -> None:
    """Run every candidate and print its row."""
    seeds, model = 0, "small_cnn"
    while argv[:1] in (["--seeds"], ["--model"]):
        if argv[0] == "--seeds":
            seeds = int(argv[1])
        else:
            model = argv[1]
        argv = argv[2:]
    torch.set_num_threads(1)
    bench = BENCHES[model]
    endpoint_iters = ensure_endpoints(bench)
    data = _data(bench.recipe)
    if seeds:
        print("| settings | max train loss mean | std | std/mean | worst seed | median SGD iters | × endpoint |")
        print("|---|---|---|---|---|---|---|")
    else:
        print("| settings | max train loss | worst continuity | SGD iters | × endpoint | ticks | outside SGD", end="")
        print(" | wall s |")
        print("|---|---|---|---|---|---|---|---|")
    for text in argv or [""]:
        overrides = parse_candidate(text)
        label = text or "defaults"
        if seeds:
            runs = [run_candidate(bench, data, {**overrides, "seed": s}, continuity=False) for s in range(seeds)]
            losses = [r["max_train_loss"] for r in runs]
            mean, std = statistics.fmean(losses), statistics.stdev(losses)
            iters = statistics.median(r["sgd_iters"] for r in runs)
            print(
                f"| {label} | {mean:.4f} | {std:.4f} | {std / mean:.1%} | {max(losses):.4f} | {iters:.0f} "
                f"| {iters / endpoint_iters:.2f} |",
                flush=True,
            )
            continue
        r = run_candidate(bench, data, overrides)
        print(
            f"| {label} | {r['max_train_loss']:.4f} | {r['worst_continuity']:.4f} | {r['sgd_iters']} "
            f"| {r['sgd_iters'] / endpoint_iters:.2f} | {r['ticks']} | {r['outside_sgd']:.1%} | {r['wall_s']:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
