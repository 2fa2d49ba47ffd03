"""``hf-llpf verify``: re-check a path's certificate on this machine's data and hardware (docs/cli.md#verify)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("verify", help="re-check a path's certificate: point hashes, every loss, the guarantee")
    p.add_argument("source", help="a run directory or a published path org/repo[@revision]")
    p.add_argument("--data", help="the training data to check on (default: the data the run records)")
    p.add_argument("--device", help="where to evaluate (default: cpu)")
    p.add_argument("--tolerance", type=float, help="relative difference in a loss that is reported (default 1e-5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the hashes match, every loss matches the record and the guarantee holds here; 1 otherwise."""
    from hf_llpf.cli.args import set_threads
    from hf_llpf.cli.render import verified
    from hf_llpf.verify import TOLERANCE, verify_source

    set_threads(args.threads)
    tolerance = TOLERANCE if args.tolerance is None else args.tolerance
    report = verify_source(args.source, data=args.data, device=args.device, tolerance=tolerance)
    print(verified(report, tolerance))
    return 0 if report["holds"] and not report["losses"]["differ"] else 1
