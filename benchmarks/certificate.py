"""One endpoint pair under candidate settings and repair seeds: is the path certified, how high, at what cost.

    python -m benchmarks certificate                                  # the demo pair, the defaults, repair seed 0
    python -m benchmarks certificate --seeds 10                       # repair seeds 0..9, then median/worst/std
    python -m benchmarks certificate --repeats 3                      # the demo's run 3 times: median share
    python -m benchmarks certificate --settings "" --settings step_r=0.1,arrival_tol=0.1   # candidates side by side
    python -m benchmarks certificate --ceilings 0.03,0.05             # one run per set ceiling (seed 0)
    python -m benchmarks certificate --pair lenet28                   # LeNet5 at 28 px, a user ceiling of 0.025
    # cross-sphere (auto: M2O then M2M), the M2M ablation, AngleConformal off:
    python -m benchmarks certificate --pair cross-sphere --settings "" --settings method=m2m \\
        --settings m2o.lr_policy=none

Per run (a fresh process, so its peak RSS is its own): the engine's certificate and ceiling, the max eval-mode train
loss over every saved point on **all** training images, the worst segment midpoint, linear interpolation's max, the
ticks, SGD iterations (and × one endpoint's), backtracks, the certificate's probes and examples, the share of the
run spent on the certificate's forward passes, the share outside SGD, wall seconds and peak RSS (MiB); for a
cross-sphere pair also the M2O phase's max loss. With ``--seeds N`` or ``--repeats N`` (each seed's run N times: the
same path, the timing measured again) each candidate adds a summary row over its runs. Settings
are ``key=value`` (YAML values, nested keys with dots), comma-separated within one candidate; positional
settings apply to every candidate.

Pairs (endpoints trained once into the benchmark cache):
- ``small_cnn``: the demo's pair (small_cnn on digits, seeds 0 and 1, the default TrainRecipe);
- ``cifar_resnet18``: cifar_resnet18 width 8 on digits at 8 px, seeds 0 and 1;
- ``lenet28``: LeNet5 on digits upscaled to 28 px (SGD lr 0.01, momentum 0.9, constant rate, 150 epochs: digits
  has 1,437 training images where MNIST has 60,000), settings ``loss_ceiling: 0.025``, midpoints judged on all
  training images;
- ``cross-sphere``: small_cnn with weight decay 5e-4 (seed 0) and 5e-3 (seed 1), settings
  ``recipes/digits-cross-sphere.yaml``; the weight variance ratios are printed first.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks import harness
from benchmarks.harness import fmt

ENTRY = "certificate"


@dataclass
class Pair:
    """An endpoint pair: the TrainRecipe fields of A and B, base settings, and how its paths are judged."""

    recipe_a: dict[str, Any]
    recipe_b: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)  # under every candidate's
    recipe_file: str | None = None  # a connect recipe under recipes/ (under the settings)
    evaluate: dict[str, Any] = field(default_factory=lambda: {"continuity_k": 1})


_LENET28 = {"model": "lenet5", "data": {"source": "digits", "image_size": 28}, "epochs": 150, "batch_size": 64,
            "lr": 0.01, "momentum": 0.9, "schedule": "constant", "weight_decay": 0.0}  # fmt: skip
PAIRS = {
    "small_cnn": Pair({"seed": 0}, {"seed": 1}),
    "cifar_resnet18": Pair(*({"model": "cifar_resnet18", "model_args": {"width": 8}, "seed": s} for s in (0, 1))),
    "lenet28": Pair(
        {**_LENET28, "seed": 0},
        {**_LENET28, "seed": 1},
        {"loss_ceiling": 0.025},
        evaluate={"continuity_k": 1, "continuity_subset": "all"},
    ),  # fmt: skip
    "cross-sphere": Pair(
        {"seed": 0, "weight_decay": 5e-4},
        {"seed": 1, "weight_decay": 5e-3},
        recipe_file="digits-cross-sphere.yaml",
        evaluate={"continuity_k": 0},
    ),  # fmt: skip
}


def _recipe(fields: dict[str, Any]):
    from hf_llpf.config import TrainRecipe

    return TrainRecipe(**fields)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, nested blocks merged key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pair_settings(pair: Pair, candidate: dict[str, Any]) -> dict[str, Any]:
    """The connect settings of one run: the pair's recipe file, its settings, then the candidate's (each read as
    ConnectConfig's flat attributes first: the recipe writes blocks, a candidate may write either)."""
    from hf_llpf.config import flat_settings
    from hf_llpf.recipes import load_recipe

    base = load_recipe(harness.ROOT / "recipes" / pair.recipe_file) if pair.recipe_file else {}
    return _merge(_merge(flat_settings(base), flat_settings(pair.settings)), flat_settings(candidate))


# ------------------------------------------------------------------------------------------ one run (a child)
def one_run(pair: str, a: str, b: str, settings: dict, run_dir: str, endpoint_iters: int, tag: str) -> dict:
    """Connect ``a`` and ``b`` with ``settings``, evaluate on every training image; the row of figures."""
    from hf_llpf.api import connect, evaluate_run
    from hf_llpf.data.bundle import load_data

    spec = PAIRS[pair]
    data = load_data(_recipe(spec.recipe_a).data)
    start = time.perf_counter()
    path = connect(a, b, data, config=settings, run_dir=run_dir, exist="overwrite", progress=False)
    wall = time.perf_counter() - start
    options = dict(spec.evaluate)
    if options.get("continuity_subset") == "all":
        options["continuity_subset"] = data.split_size("train")
    result = evaluate_run(path, data=data, report=False, **options)
    llpf, linear, run = result["summary"]["llpf"], result["summary"]["linear"], path.summary["run"]
    cert, timing = run["certification"], run["timing"]
    m2o = [p["eval_train_loss"] for p in result["points"] if p.get("phase") == "m2o"]
    return {
        "pair": pair, "tag": tag, "settings": settings, "ceiling": cert["ceiling"], "certified": cert["certified"],
        "route": cert.get("route"), "n_train": cert.get("probe_examples"),
        "final_max": (cert.get("final_check") or {}).get("max"),  # every point and midpoint on all N (the run's)
        "max_train_loss": llpf["max_train_loss"], "worst_midpoint": llpf.get("worst_continuity_loss"),
        "barrier": llpf["barrier"], "linear": linear["max_train_loss"], "m2o_max": max(m2o) if m2o else None,
        "ticks": run["ticks"], "sgd": run["sgd_iters"], "x_endpoint": run["sgd_iters"] / endpoint_iters,
        "backtracks": run.get("backtracks"), "probes": cert.get("probes"),
        "stopped": cert.get("probes_stopped_early", 0), "examples": cert.get("examples_run"),
        # Every forward pass made for the certificate: the run's decisions, the final check, and the set-up's
        # endpoint losses and straight-line check.
        "probe_share": sum(timing.get(k, 0.0) for k in ("probe", "probe_final", "setup_probe")) / wall,
        "outside_sgd": (wall - timing.get("train", 0.0)) / wall, "points": len(path), "wall": wall,
        "stage_starts": run.get("stage_starts"),
    }  # fmt: skip


COLUMNS: list[harness.Column] = [
    ("tag", "run", str),
    ("ceiling", "ceiling", fmt(".4f")),
    ("certified", "certified", str),
    ("route", "route", str),
    ("n_train", "N", str),
    ("max_train_loss", "max train loss (all)", fmt(".4f")),
    ("final_max", "final check max", fmt(".4f")),
    ("worst_midpoint", "worst midpoint", fmt(".4f")),
    ("m2o_max", "M2O-phase max", fmt(".4f")),
    ("linear", "linear max", fmt(".4f")),
    ("ticks", "ticks", str),
    ("sgd", "SGD iterations", str),
    ("x_endpoint", "× one endpoint", fmt(".2f")),
    ("backtracks", "backtracks", str),
    ("probes", "probes", str),
    ("stopped", "stopped early", str),
    ("examples", "examples for the certificate", str),
    ("probe_share", "certificate's share", fmt(".1%")),
    ("outside_sgd", "outside SGD", fmt(".1%")),
    ("wall", "wall s", fmt(".1f")),
    ("peak_rss_mib", "peak RSS MiB", fmt(".0f")),
]

SUMMARY_COLUMNS: list[harness.Column] = [
    ("candidate", "settings", str),
    ("seeds", "runs", str),
    ("median", "max train loss median", fmt(".4f")),
    ("worst", "worst", fmt(".4f")),
    ("mean", "mean", fmt(".4f")),
    ("std", "std", fmt(".4f")),
    ("cv", "std/mean", fmt(".1%")),
    ("sgd_median", "SGD × endpoint median", fmt(".2f")),
    ("sgd_max", "max", fmt(".2f")),
    ("certified", "certified", str),
    ("probe_share_median", "certificate's share median", fmt(".1%")),
]


def summary(candidate: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, worst, mean, std and std/mean of the max train loss over seeds; the SGD cost; certified count."""
    losses, costs = [r["max_train_loss"] for r in rows], [r["x_endpoint"] for r in rows]
    mean = statistics.fmean(losses)
    std = statistics.pstdev(losses)
    return {
        "kind": "summary", "candidate": candidate or "defaults", "seeds": len(rows),
        "median": statistics.median(losses), "worst": max(losses), "mean": mean, "std": std,
        "cv": std / mean if mean else float("nan"), "sgd_median": statistics.median(costs), "sgd_max": max(costs),
        "certified": f"{sum(bool(r['certified']) for r in rows)}/{len(rows)}",
        "probe_share_median": statistics.median(r["probe_share"] for r in rows),
    }  # fmt: skip


# ------------------------------------------------------------------------------------------ main
def parser() -> argparse.ArgumentParser:
    """The entry's options."""
    p = harness.entry_parser(ENTRY, __doc__)
    p.add_argument("--pair", choices=list(PAIRS), default="small_cnn")
    p.add_argument("--settings", action="append", metavar="K=V,...",
                   help="one candidate (repeatable; \"\" = the defaults)")  # fmt: skip
    p.add_argument("--seeds", type=int, default=1, help="repair seeds 0..N-1 per candidate (the `seed` setting)")
    p.add_argument("--repeats", type=int, default=1, help="runs per candidate and seed (timings measured again)")
    p.add_argument("--ceilings", default="", help="comma-separated set ceilings: one run each, seed 0")
    p.add_argument("overrides", nargs="*", metavar="K=V", help="settings under every candidate")
    return harness.common_options(p)


def main(argv: list[str]) -> int:
    """Run every candidate × seed (and ceiling), print and record the rows."""
    args = parser().parse_args(argv)
    harness.set_threads(args.threads)
    results = harness.Results(ENTRY, args, argv)
    spec = PAIRS[args.pair]
    a, b, iters = harness.endpoint_pair(_recipe(spec.recipe_a), _recipe(spec.recipe_b))
    if args.pair == "cross-sphere":
        _print_spheres(a, b)
    common = harness.parse_overrides(args.overrides)
    print(f"pair {args.pair}: one endpoint = {iters} SGD iterations; {args.threads} torch thread(s)", flush=True)
    again = [f", run {r + 1}" if args.repeats > 1 else "" for r in range(args.repeats)]
    runs = [(c, {**harness.parse_overrides([c]), "seed": s}, f"{c or 'defaults'}, seed {s}{r}")
            for c in (args.settings or [""]) for s in range(args.seeds) for r in again]  # fmt: skip
    runs += [(f"loss_ceiling={c}", {"loss_ceiling": float(c)}, f"ceiling {c}") for c in args.ceilings.split(",") if c]
    done: dict[str, list[dict]] = {}
    for candidate, over, tag in runs:
        settings = pair_settings(spec, _merge(common, over))
        job = {"pair": args.pair, "a": str(a), "b": str(b), "settings": settings, "endpoint_iters": iters,
               "run_dir": str(harness.scratch(ENTRY, f"{args.pair}-run")), "tag": tag}  # fmt: skip
        row = results.add(harness.measure("benchmarks.certificate:one_run", job, threads=args.threads))
        done.setdefault(candidate, []).append(row)
        print(harness.markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    print()
    results.table(COLUMNS)
    if args.seeds > 1 or args.repeats > 1:
        sums = [summary(c, rows) for c, rows in done.items() if len(rows) > 1]
        for s in sums:
            results.add(s)
        print()
        results.table(SUMMARY_COLUMNS, sums)
    return 0


def _print_spheres(a, b) -> None:
    from hf_llpf.algorithms.spheres import sphere_distance, sphere_report
    from hf_llpf.models.endpoints import load_endpoint

    report = sphere_report(load_endpoint(a).model, load_endpoint(b).model)
    ratios = [r["ratio"] for r in report if r["ndim"] > 1]
    print(f"weight variance ratios B/A: {min(ratios):.3f}–{max(ratios):.3f}; sphere distance "
          f"{sphere_distance(report):.3f}")  # fmt: skip
