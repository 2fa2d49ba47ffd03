"""The demo behind ``make demo``: two ``small_cnn`` endpoints on ``digits`` (seeds 0 and 1), the LLPF path
between them, and its judgement against straight linear interpolation."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from hf_llpf.config import TrainRecipe
from hf_llpf.data.bundle import load_data


def run_demo(out: Path, *, threads: int = 1) -> int:
    """Train (or reuse) both endpoints, connect them with the default settings, evaluate, print a table."""
    from hf_llpf.api import connect, evaluate_run
    from hf_llpf.reporting.report import endpoint_table, path_verdict
    from hf_llpf.training.endpoint import train_or_reuse

    torch.set_num_threads(threads)
    start = time.perf_counter()
    data = load_data("digits")
    rows = {}
    for seed in (0, 1):
        rows[f"small_cnn seed {seed}"] = train_or_reuse(out / f"endpoint_seed{seed}", TrainRecipe(seed=seed), data)
    print(endpoint_table(rows))

    t = time.perf_counter()
    path = connect(
        out / "endpoint_seed0",
        out / "endpoint_seed1",
        data,
        run_dir=out / "path",
        exist="overwrite",
        command=f"hf-llpf connect {out}/endpoint_seed0 {out}/endpoint_seed1 --data digits --out {out}/path",
    )
    connect_s = time.perf_counter() - t
    t = time.perf_counter()
    result = evaluate_run(path, data=data)
    eval_s = time.perf_counter() - t
    llpf, linear = result["summary"]["llpf"], result["summary"]["linear"]
    run = path.summary["run"]
    endpoint_iters = rows["small_cnn seed 0"]["iterations"]
    print()
    print("| path (eval mode, all 1437 training images) | max train loss | barrier | min train acc | test acc range |")
    print("|---|---|---|---|---|")
    for name, s in (("LLPF", llpf), ("linear interpolation", linear)):
        lo, hi = s["test_acc_range"]
        print(
            f"| {name} | {s['max_train_loss']:.4f} | {s['barrier']:.4f} | {s['min_train_acc']:.2%} "
            f"| {lo:.2%} – {hi:.2%} |"
        )
    print()
    print(
        f"LLPF: {run['ticks']} ticks, {len(path)} saved points, {run['sgd_iters']} SGD iterations "
        f"({run['sgd_iters'] / endpoint_iters:.2f}x the {endpoint_iters} that trained one endpoint), "
        f"connect {connect_s:.0f} s, evaluation {eval_s:.0f} s, whole demo {time.perf_counter() - start:.0f} s"
    )
    print(
        f"worst continuity segment loss: {llpf.get('worst_continuity_loss', float('nan')):.4f}; "
        f"report and plots: {out}/path/README.md, {out}/path/plots/"
    )
    print(path_verdict(result["summary"], path.summary["run"].get("certification")))
    return 0
