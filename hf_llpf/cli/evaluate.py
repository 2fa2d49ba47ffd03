"""``hf-llpf evaluate``: judge a path (docs/cli.md#evaluate, docs/evaluation.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_llpf.cli.args import threads


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="judge a path: metrics per point, linear baseline, continuity, plots, report")
    p.add_argument("run_dir", help="a run directory, or a published path org/repo[@rev] (evaluated without writing)")
    p.add_argument("--train-subset", type=int, help="fixed seeded subset of N training examples (default: all)")
    p.add_argument("--recalibrate-bn", action="store_true", help="also report figures after BatchNorm recalibration")
    p.add_argument("--linear-points", type=int, default=21, help="points of the linear baseline (default 21)")
    p.add_argument("--continuity", type=int, default=4, metavar="K", help="interior points per segment (0: off)")
    p.add_argument("--continuity-subset", type=int, default=512, help="training examples for continuity")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the fixed subsets")
    p.add_argument("--threads", type=threads, default=1, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_llpf.api import evaluate_run
    from hf_llpf.cli.args import set_threads
    from hf_llpf.cli.render import evaluated
    from hf_llpf.evaluation import evaluate_path
    from hf_llpf.run import Path as Path_

    set_threads(args.threads)
    source, published = args.run_dir, not Path(args.run_dir).exists() and "/" in args.run_dir
    if published:  # a path published on the Hub (org/repo[@rev]): evaluate it here, write nothing back
        from hf_llpf.hub import load_path

        source = load_path(args.run_dir)
    result = (evaluate_path if published else evaluate_run)(
        source,
        train_subset=args.train_subset,
        batch_size=args.batch_size,
        recalibrate_bn=args.recalibrate_bn,
        linear_points=args.linear_points,
        continuity_k=args.continuity,
        continuity_subset=args.continuity_subset,
        seed=args.seed,
    )
    causal_lm = _task(source if published else Path_(args.run_dir)) == "causal-lm"
    print(evaluated(result, run_dir=None if published else args.run_dir, causal_lm=causal_lm))
    return 0


def _task(path) -> str | None:
    """The task the run recorded (``data.task`` of ``llpf_config.yaml``), ``None`` when it says none."""
    try:
        config = path.config
    except OSError:
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return data.get("task") if isinstance(data, dict) else None
