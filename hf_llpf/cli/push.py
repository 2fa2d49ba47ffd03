"""``hf-llpf push``: publish a run directory as a Hub model repo (docs/cli.md#push, docs/hub.md)."""

from __future__ import annotations

import argparse
import sys


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an integer >= 1")
    return value


def register(sub) -> None:
    """Add ``push`` to the subcommands ``sub``: the target repo, what is published, how it is committed."""
    p = sub.add_parser("push", help="publish a run directory as a Hub model repo (a model at the root, a run tag)")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("repo_id", help="namespace/name of the model repo (created when missing)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--revision", help="branch to push to (default main; created when missing)")
    p.add_argument("--token", help="write token (default: HF_TOKEN or `hf auth login`); never written to disk")
    _add_selection(p)
    _add_commit_options(p)
    p.add_argument(
        "--keep-auto-map",
        dest="keep_auto_map",
        action="store_true",
        help="keep auto_map/custom_pipelines (pointers to code in other repos) in the published configs",
    )
    p.add_argument("--license", help="the card's license (default: the endpoints', when they agree)")
    p.add_argument(
        "--files-per-commit",
        dest="files_per_commit",
        type=_positive,
        default=50,
        metavar="N",
        help="at most N files in one commit (default 50)",
    )
    p.set_defaults(func=run)


def _add_selection(p: argparse.ArgumentParser) -> None:
    """The options that choose what is published: the root's point, the points, the repo files."""
    p.add_argument(
        "--root-point",
        default="mid",
        metavar="P",
        help="the point put at the repo root as a complete model: index, tick:N, mid (default: the middle of the "
        "path by arc length), best, or none",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--every", type=_positive, metavar="N", help="publish every N-th point (ends and stage boundaries always)"
    )
    which.add_argument(
        "--points",
        metavar="SELECTION",
        help="publish these points, e.g. '0:10,mid,tick:40' (ends and stage boundaries always)",
    )
    p.add_argument("--include", action="append", metavar="GLOB", help="publish only repo files matching (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="do not publish files matching (repeatable)")


def _add_commit_options(p: argparse.ArgumentParser) -> None:
    """The options of how the push commits (message, pull request, point branches) and what it may delete."""
    p.add_argument("--commit-message", dest="commit_message", help="the commit message")
    p.add_argument("--create-pr", dest="create_pr", action="store_true", help="open a pull request (no tag)")
    p.add_argument(
        "--point-revisions",
        dest="point_revisions",
        action="store_true",
        help="also one branch per published point (named like its folder, t_000010) with that point at its root",
    )
    p.add_argument(
        "--delete-other",
        dest="delete_other",
        action="store_true",
        help="allow deleting and replacing repo files that no earlier push of hf_llpf published (refused otherwise)",
    )
    p.add_argument(
        "--delete-patterns",
        dest="delete_patterns",
        action="append",
        metavar="GLOB",
        help="repo files matching may be deleted or replaced; those not published are deleted (repeatable)",
    )


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from hf_llpf.cli.render import hub_refused, pushed
    from hf_llpf.hub import push_path

    try:
        info = push_path(
            args.run_dir,
            repo_id=args.repo_id,
            private=args.private,
            revision=args.revision,
            token=args.token,
            root_point=args.root_point,
            every=args.every,
            points=args.points,
            include=args.include,
            exclude=args.exclude,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            license=args.license,
            files_per_commit=args.files_per_commit,
            point_revisions=args.point_revisions,
            delete_other=args.delete_other,
            delete_patterns=args.delete_patterns,
            keep_auto_map=args.keep_auto_map,
        )
    except HfHubHTTPError as err:  # the local run directory is unchanged: say so, and that a re-run is safe
        retry = "nothing local changed; re-run to upload what is missing"
        print(hub_refused("push", err, retry=retry), file=sys.stderr)
        return 2
    print(pushed(info))
    return 0
