"""``hf-llpf compare``: LLPF and the baselines on the same endpoints, data and budget (docs/baselines.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_llpf.cli.args import add_settings_args, positive, threads


def _methods(text: str) -> list[str]:
    """The methods named, each a registered method a comparison accepts (hf_llpf.algorithms.registry)."""
    from hf_llpf.algorithms.registry import comparison_methods

    known = comparison_methods()
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"--methods {text!r}: expected a comma-separated list of {', '.join(known)}")
    return methods


def register(sub) -> None:
    p = sub.add_parser("compare", help="LLPF vs linear, SLERP, Bézier and weight matching, judged on the same data")
    p.add_argument("a", help="endpoint A: model folder, Hub id org/name[@rev], or .safetensors with --arch")
    p.add_argument("b", help="endpoint B (same architecture as A)")
    p.add_argument("--data", help="data spec (default: the recipe's, else digits)")
    p.add_argument("--out", required=True, help="folder of the comparison (one run directory per method)")
    p.add_argument("--arch", help="model name for bare .safetensors endpoints")
    p.add_argument(
        "--methods",
        type=_methods,
        help="comma-separated registered methods: llpf, linear, slerp, bezier, autoneb, weight-matching, and any "
        "registered since (default: all)",
    )
    p.add_argument(
        "--points",
        type=positive("--points"),
        help="points of each baseline (default: Bézier and AutoNEB as many as LLPF saved, else 31)",
    )
    p.add_argument(
        "--bezier-iters",
        type=int,
        help="SGD iterations of the Bézier control point without a ceiling (default: LLPF's, else 500)",
    )
    p.add_argument(
        "--certify-cap",
        type=int,
        help="Bézier and AutoNEB: SGD iterations at most before they stop uncertified (default: docs/baselines.md)",
    )
    p.add_argument(
        "--certify-round", type=int, help="Bézier and AutoNEB: SGD iterations between two checks of their path"
    )
    p.add_argument("--bezier-lr", type=float, help="SGD learning rate of the Bézier control point (default 0.01)")
    p.add_argument("--train-subset", type=int, help="fixed seeded subset of N training examples (default: all)")
    p.add_argument("--recalibrate-bn", action="store_true", help="also judge every path after BatchNorm recalibration")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a comparison folder written by compare (refused when it holds anything else)",
    )
    p.add_argument("--threads", type=threads, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide LLPF's progress bar")
    add_settings_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_llpf.cli.args import main_process, set_threads
    from hf_llpf.cli.connect import _command_line, _config, read_by_command
    from hf_llpf.comparison import PLOT, TABLE_JSON, TABLE_MD, compare, markdown_table
    from hf_llpf.models.endpoints import load_endpoint
    from hf_llpf.run import check_out_dir
    from hf_llpf.run.rundir import check_exist

    args.method = None  # compare runs LLPF with the recipe's method (auto by default)
    check_out_dir(Path(args.out), field="--out")  # before anything is loaded
    config = _config(args)
    set_threads(args.threads)
    exist = "overwrite" if args.overwrite else "error"
    protected = read_by_command(args, config)
    check_exist(args.out, exist, protected=protected, kind="comparison")  # before anything loads
    bezier = {k: v for k, v in (("iters", args.bezier_iters), ("lr", args.bezier_lr)) if v is not None}
    certify = {k: v for k, v in (("cap", args.certify_cap), ("round_iters", args.certify_round)) if v is not None}
    methods = args.methods  # None: every method a comparison accepts
    table = compare(
        load_endpoint(args.a, arch=args.arch),
        load_endpoint(args.b, arch=args.arch),
        args.data or config.data,
        out_dir=args.out,
        methods=methods,
        config=config,
        points=args.points,
        bezier=bezier or None,
        certify=certify or None,
        train_subset=args.train_subset,
        recalibrate_bn=args.recalibrate_bn,
        exist=exist,
        progress=not args.no_progress,
        command=_command_line(),
        protected=protected,
    )
    if not main_process():  # one process speaks
        return 0
    print(markdown_table(table))
    print(f"written: {args.out}/{TABLE_MD}, {TABLE_JSON}, {PLOT} and one run directory per method")
    return 0
