"""The sphere check and the method choice, in one place.

Two endpoints are on the same variance sphere when the numel-weighted mean of |ln(Var_B/Var_A)| over their
weight tensors is at most :data:`SPHERE_TOLERANCE` (``docs/algorithm.md``, "the sphere check"): then M2M
connects them; otherwise a cross-sphere run (M2O, then M2M) does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelerate.logging import get_logger
from torch import Tensor, nn

from hf_llpf import geometry
from hf_llpf.config import WALK_IS_NOT_A_CONNECTION, ConnectConfig
from hf_llpf.models.endpoints import Endpoint, check_endpoints_match, check_finite, load_endpoint

logger = get_logger(__name__)

SPHERE_TOLERANCE = 0.5  # |log(Var_B/Var_A)| per tensor beyond which two endpoints are on different spheres


def choose_method(
    ea: Endpoint, eb: Endpoint, config: ConnectConfig, *, report: Callable[[], list[dict]] | None = None
) -> str:
    """``config.method`` (a registered method), or under ``auto`` the sphere check: ``m2m`` on one sphere,
    ``cross-sphere`` (M2O then M2M) otherwise. ``report``: gives the :func:`sphere_report` of the endpoints (a sharded
    run's, merged from each process's rows); default: measured on the endpoints' models.

    Raises:
        UnknownNameError: ``config.method`` is no registered method (the message lists them).
        ConfigError: ``method: m2o``, the walk to the origin alone, which does not connect two endpoints.
    """
    if config.method == "m2o":
        from hf_llpf.errors import ConfigError

        raise ConfigError(WALK_IS_NOT_A_CONNECTION)
    if config.method != "auto":
        from hf_llpf.algorithms.registry import method_class

        method_class(config.method)  # refuses an unknown name before any work
        return config.method
    report = sphere_report(ea.model, eb.model) if report is None else report()
    if same_sphere(report):
        return "m2m"
    logger.info(
        f"the endpoints are on different variance spheres (mean |ln(Var_B/Var_A)| over the weights = "
        f"{sphere_distance(report):.3g} > {SPHERE_TOLERANCE}): cross-sphere M2O then M2M",
        main_process_only=True,
    )
    return "cross-sphere"


def sphere_report(a: nn.Module, b: nn.Module) -> list[dict]:
    """Per tensor: Var θ_A, Var θ_B and their ratio (for ``hf-llpf spheres`` and the method choice)."""
    names = [n for n, p in a.named_parameters() if p.is_floating_point() and p.numel() > 1]
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    va = geometry.variances([pa[n] for n in names])
    vb = geometry.variances([pb[n] for n in names])
    return sphere_rows(names, [pa[n].ndim for n in names], [pa[n].numel() for n in names], va, vb)


def sphere_rows(names: list[str], ndims: list[int], numels: list[int], va: Tensor, vb: Tensor) -> list[dict]:
    """The rows of :func:`sphere_report` from each tensor's name, dimensions, size and both variances (a sharded run
    merges them from the rows: :func:`hf_llpf.algorithms.sharded_m2o.rows_sphere_report`)."""
    return [
        {
            "name": n,
            "ndim": d,
            "numel": k,
            "var_a": float(x),
            "var_b": float(y),
            "ratio": float(y / x) if x > 0 else float("inf"),
        }
        for n, d, k, x, y in zip(names, ndims, numels, va, vb, strict=True)
    ]


def sphere_distance(report: list[dict]) -> float:
    """Numel-weighted mean of |ln(Var_B/Var_A)| over the weight tensors (two or more dimensions).

    The paper's spheres are those of the weights; biases and norm parameters vary freely between seeds. The
    mean is weighted by size because a tiny tensor's variance is a noisy estimate (32 elements give a ratio
    anywhere in 0.5–2 between two random initialisations of the same recipe).
    """
    weights = [r for r in report if r.get("ndim", 2) > 1 and 0 < r["ratio"] < float("inf")]
    total = sum(r.get("numel", 1) for r in weights)
    if total == 0:
        return 0.0
    return sum(r.get("numel", 1) * abs(math.log(r["ratio"])) for r in weights) / total


def same_sphere(report: list[dict], tolerance: float = SPHERE_TOLERANCE) -> bool:
    """True when :func:`sphere_distance` is within ``tolerance``."""
    return sphere_distance(report) <= tolerance


@dataclass(frozen=True)
class SphereVerdict:
    """The facts of the sphere check (``hf-llpf spheres`` prints them; docs/cli.md#spheres)."""

    tolerance: float
    distance: float  # :func:`sphere_distance`
    same: bool  # within ``tolerance``: M2M; else cross-sphere M2O then M2M
    off: list[bool]  # per report row: a weight tensor whose |ln(ratio)| alone exceeds ``tolerance``
    tensors: int
    outside: int  # rows marked off
    skipped: int  # rows without a finite positive ratio (zero variance in A)


def sphere_verdict(report: list[dict], tolerance: float | None = None) -> SphereVerdict:
    """The verdict on a :func:`sphere_report`: the distance, same sphere or not, and the tensors that stand out."""
    tol = SPHERE_TOLERANCE if tolerance is None else tolerance
    off = [r["ndim"] > 1 and 0 < r["ratio"] < math.inf and abs(math.log(r["ratio"])) > tol for r in report]
    return SphereVerdict(
        tolerance=tol,
        distance=sphere_distance(report),
        same=same_sphere(report, tol),
        off=off,
        tensors=len(report),
        outside=sum(off),
        skipped=sum(1 for r in report if not 0 < r["ratio"] < math.inf),
    )


def compare_endpoints(spec_a: Any, spec_b: Any) -> list[dict]:
    """Load two endpoints, check they are finite and of one architecture, and give their :func:`sphere_report`."""
    ea, eb = load_endpoint(spec_a), load_endpoint(spec_b)
    check_finite(ea, label="A")
    check_finite(eb, label="B")
    check_endpoints_match(ea.model, eb.model)
    return sphere_report(ea.model, eb.model)
