"""``hf-llpf export``: write one point of a path as a standalone model (docs/cli.md#export)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("export", help="write one point of a path as a standalone (merged) model")
    p.add_argument("source", help="a run directory or a published path org/repo[@revision]")
    p.add_argument(
        "--point",
        default="mid",
        help="index, tick:N, mid (the middle by arc length; default) or best (lowest train loss among the points "
        "at position 0.25-0.75 by arc length)",
    )
    p.add_argument("--out", required=True, help="folder to write (must be new or empty)")
    p.add_argument("--push-to-hub", dest="push_to_hub", metavar="REPO", help="also publish it as this model repo")
    p.add_argument("--token", help="write token for --push-to-hub")
    p.add_argument(
        "--keep-auto-map",
        dest="keep_auto_map",
        action="store_true",
        help="keep auto_map/custom_pipelines (pointers to code in other repos) in the exported configs",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from hf_llpf.cli.render import exported, hub_refused
    from hf_llpf.hub import export_point

    try:
        info = export_point(
            args.source,
            point=args.point,
            out_dir=args.out,
            push_to_hub=args.push_to_hub,
            token=args.token,
            keep_auto_map=args.keep_auto_map,
        )
    except HfHubHTTPError as err:
        print(hub_refused("export", err, retry="re-run with a new --out to retry"), file=sys.stderr)
        return 2
    print(exported(info))
    return 0
