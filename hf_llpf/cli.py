"""``hf-llpf``: the command line. It only parses arguments, calls the library and prints."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hf_llpf import __version__
from hf_llpf.errors import LLPFError


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", help="YAML file of settings")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a setting (dotted keys for nested)")


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from hf_llpf.config import TrainRecipe, apply_overrides, build, load_recipe
    from hf_llpf.train import train_endpoint

    values = load_recipe(args.recipe)
    if args.model and "=" in args.model:  # no model name given: the first positional was an override
        args.overrides, args.model = [args.model, *args.overrides], None
    if args.model:
        values["model"] = args.model
    if args.data:
        values.setdefault("data", {})["source"] = args.data
    if args.seed is not None:
        values["seed"] = args.seed
    recipe = build(TrainRecipe, apply_overrides(values, args.overrides))
    torch.set_num_threads(args.threads) if args.threads else None
    _, metrics = train_endpoint(recipe, out_dir=args.out)
    print(_metrics_table({f"{recipe.model} seed {recipe.seed}": metrics}))
    print(f"saved to {args.out}")
    return 0


def _metrics_table(rows: dict[str, dict]) -> str:
    lines = [
        "| endpoint | train loss | train acc | test loss | test acc | SGD iterations | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in rows.items():
        lines.append(
            f"| {name} | {m['train']['loss']:.4f} | {m['train']['accuracy']:.2%} | {m['test']['loss']:.4f} "
            f"| {m['test']['accuracy']:.2%} | {m['iterations']} | {m['seconds']:.1f} |"
        )
    return "\n".join(lines)


def _cmd_demo(args: argparse.Namespace) -> int:
    from hf_llpf.demo import run_demo

    return run_demo(Path(args.out), threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``hf-llpf`` (every subcommand is listed in ``--help``)."""
    parser = argparse.ArgumentParser(prog="hf-llpf", description="Low-loss paths between trained checkpoints (LLPF).")
    parser.add_argument("--version", action="version", version=f"hf-llpf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one endpoint (model + data + seed + recipe)")
    p.add_argument("model", nargs="?", help="built-in or timm model name (default: the recipe's, else small_cnn)")
    p.add_argument("--data", help="data spec: 'digits', a Hub dataset id or a local path")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="folder to write the model and metrics.json to")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on small models)")
    _add_settings_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("demo", help="the demo: train two small_cnn endpoints on digits and connect them")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_cmd_demo)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


_EXTRA_COMMANDS: list = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hf-llpf`` console script."""
    parser = build_parser()
    # key=value overrides may stand anywhere, also after options: argparse leaves those in `extra`.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return args.func(args) or 0
    except LLPFError as err:
        print(f"hf-llpf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
