"""``hf-llpf demo``: train two small_cnn endpoints on digits, connect and judge them (docs/cli.md#demo)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_llpf.cli.args import threads


def register(sub) -> None:
    p = sub.add_parser("demo", help="the demo: train two small_cnn endpoints on digits and connect them")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--threads", type=threads, default=1, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_llpf.demo import run_demo

    return run_demo(Path(args.out), threads=args.threads)
