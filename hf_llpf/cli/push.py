"""``hf-llpf push``: publish a run directory as a Hub model repo (docs/cli.md#push, docs/hub.md)."""

from __future__ import annotations

import argparse
import sys


def register(sub) -> None:
    p = sub.add_parser("push", help="publish a run directory as a Hub model repo (one commit + a run tag)")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("repo_id", help="namespace/name of the model repo (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default main; created when missing)")
    p.add_argument("--token", help="write token (default: HF_TOKEN or `hf auth login`); never written to disk")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from hf_llpf.cli.render import hub_refused, pushed
    from hf_llpf.hub import push_path

    try:
        info = push_path(
            args.run_dir, repo_id=args.repo_id, private=args.private, revision=args.revision, token=args.token
        )
    except HfHubHTTPError as err:  # the local run directory is unchanged: say so, and that a re-run is safe
        print(hub_refused("push", err, retry="nothing local changed, re-run to retry"), file=sys.stderr)
        return 2
    print(pushed(info))
    return 0
