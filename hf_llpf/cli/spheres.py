"""``hf-llpf spheres``: compare two endpoints' per-tensor variances (docs/cli.md#spheres)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("spheres", help="compare the per-tensor variances of two endpoints (M2M or cross-sphere)")
    p.add_argument("a", help="endpoint A (folder, Hub id)")
    p.add_argument("b", help="endpoint B (folder, Hub id)")
    p.add_argument("--tolerance", type=float, help="max |ln(Var_B/Var_A)| per tensor (default: SPHERE_TOLERANCE)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hf_llpf.algorithms.spheres import compare_endpoints, sphere_verdict
    from hf_llpf.cli.render import spheres_table, spheres_verdict

    report = compare_endpoints(args.a, args.b)
    verdict = sphere_verdict(report, args.tolerance)
    print(spheres_table(report, verdict.off))
    print(spheres_verdict(verdict))
    return 0
