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
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they show only on a terminal)")
    p.add_argument(
        "--sharding",
        default="none",
        help="none: every process holds the whole model (the points split over the processes); fsdp: each process "
        "holds 1/N of every parameter and reads only its rows of each point (processes started by torchrun; "
        'docs/distributed.md, "Models larger than one device")',
    )
    p.add_argument(
        "--baselines",
        metavar="LIST",
        help="also build these baselines (linear,slerp,bezier,autoneb,weight-matching) into RUN/baselines/ and "
        "compare them with the path on the same data (docs/baselines.md)",
    )
    p.add_argument(
        "--points",
        type=int,
        help="points of each baseline (with --baselines; default: Bézier and AutoNEB as many as the run saved, "
        "else 31)",
    )
    p.add_argument(
        "--bezier-iters", type=int, help="Bézier's SGD iterations when the run has no ceiling (default: the run's own)"
    )
    p.add_argument(
        "--certify-cap",
        type=int,
        help="with --baselines: SGD iterations at most of Bézier and AutoNEB under the ceiling",
    )
    p.add_argument("--certify-round", type=int, help="with --baselines: SGD iterations between two of their checks")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_llpf.cli.args import set_threads
    from hf_llpf.run.lock import holding

    set_threads(args.threads)
    # A local run directory is held for the whole command (judged, written, summarised): a run writing it, or
    # a push reading it, is refused, and none of them can start before this ends.
    with holding(args.run_dir, exclusive=True, action="evaluate"):
        return _with_baselines(args) if args.baselines else _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from hf_llpf.api import evaluate_run
    from hf_llpf.cli.args import main_process
    from hf_llpf.cli.render import evaluated
    from hf_llpf.evaluation import evaluate_path
    from hf_llpf.run import RunPath

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
        progress=not args.no_progress,
        sharding=args.sharding,
    )
    if not main_process():  # every process judged its share of the points (or its rows of each); one speaks
        return 0
    summary = source.summary if published else _recorded_summary(args.run_dir)
    cert = summary.get("run", {}).get("certification")
    causal_lm = _task(source if published else RunPath(args.run_dir)) == "causal-lm"
    print(evaluated(result, run_dir=None if published else args.run_dir, certification=cert, causal_lm=causal_lm))
    return 0


def _recorded_summary(run_dir: str) -> dict:
    from hf_llpf.run import read_metrics

    return read_metrics(run_dir).get("summary", {})


def _with_baselines(args: argparse.Namespace) -> int:
    """``--baselines``: the run and the baselines judged together (written into the run directory)."""
    from hf_llpf.cli.args import main_process
    from hf_llpf.cli.compare import _methods
    from hf_llpf.comparison import BASELINES_DIR, compare_run, markdown_table
    from hf_llpf.errors import ConfigError

    if not Path(args.run_dir).exists():
        raise ConfigError(
            f"--baselines: {args.run_dir!r} is not a local run directory (a published path is read-only)"
        )
    if args.sharding != "none":
        raise ConfigError(
            f"--sharding {args.sharding} with --baselines: the baselines are built and judged unsharded; allowed: "
            "--sharding none, or evaluate the path alone sharded (without --baselines)"
        )
    try:
        methods = _methods(args.baselines)
    except argparse.ArgumentTypeError as err:
        raise ConfigError(str(err).replace("--methods", "--baselines")) from None
    table = compare_run(
        args.run_dir,
        methods,
        points=args.points,
        bezier={"iters": args.bezier_iters} if args.bezier_iters is not None else None,
        certify={k: v for k, v in (("cap", args.certify_cap), ("round_iters", args.certify_round)) if v is not None}
        or None,
        train_subset=args.train_subset,
        continuity_k=args.continuity,
        eval_batch_size=args.batch_size,
        recalibrate_bn=args.recalibrate_bn,
        seed=args.seed,
        linear_points=args.linear_points,
    )
    if not main_process():
        return 0
    print(markdown_table(table))
    print(f"written: {Path(args.run_dir) / BASELINES_DIR} (one run directory per baseline, comparison.md/.json/.png)")
    return 0


def _task(path) -> str | None:
    """The task the run recorded (``data.task`` of ``llpf_config.yaml``), ``None`` when it says none."""
    try:
        config = path.config
    except OSError:
        return None
    data = config.get("data") if isinstance(config, dict) else None
    return data.get("task") if isinstance(data, dict) else None
