"""Try candidate connect settings on small_cnn/digits: max eval-mode train loss vs SGD iterations (issue 10, item 2).

    .venv/bin/python -m benchmarks.explore_defaults "" step_r=0.1 "step_r=0.1,arrival_tol=0.1"

Each argument is one candidate: comma-separated ``key=value`` overrides of ``ConnectConfig`` ("" = the defaults).
Endpoints are the benchmark's (``.bench_cache/small_cnn_digits``). The max train loss is ``evaluate_path``'s (eval
mode, every saved point, all 1437 training images) and its worst continuity segment (K=4, 512 images): large steps
keep the saved points low while the straight segments between them are not. Add ``save_every=1`` to a candidate to
judge every tick, not every tenth. Prints one markdown row per candidate as it finishes. One torch thread.
"""

from __future__ import annotations

import sys
import time

import torch
import yaml

from benchmarks.run import BENCHES, _data, ensure_endpoints


def parse_candidate(text: str) -> dict:
    """``"a=1,b=x"`` → ``{"a": 1, "b": "x"}`` (values parsed as YAML)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    return {k.strip(): yaml.safe_load(v) for k, v in pairs}


def main(argv: list[str]) -> None:
    """Run every candidate and print its row."""
    from hf_llpf.connect import connect
    from hf_llpf.evaluate import evaluate_path

    torch.set_num_threads(1)
    bench = BENCHES["small_cnn"]
    endpoint_iters = ensure_endpoints(bench)
    data = _data(bench.recipe)
    print("| settings | max train loss | worst continuity | SGD iters | × endpoint | ticks | outside SGD | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for text in argv or [""]:
        overrides = parse_candidate(text)
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
        summary = evaluate_path(path, data=data, write=False, linear_points=2)["summary"]["llpf"]
        run = path.summary["run"]
        outside = (wall - run["timing"].get("train", 0.0)) / wall
        print(
            f"| {text or 'defaults'} | {summary['max_train_loss']:.4f} | {summary['worst_continuity_loss']:.4f} "
            f"| {run['sgd_iters']} "
            f"| {run['sgd_iters'] / endpoint_iters:.2f} | {run['ticks']} | {outside:.1%} | {wall:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
