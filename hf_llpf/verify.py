"""``hf-llpf verify``: re-check a path's certificate on this machine (docs/cli.md#verify).

Three things are checked against what the run recorded in ``summary.run.certification``: every saved point's
weights (their sha256), the loss of every point and every segment's checked position (its midpoint) on all the
training examples, and the guarantee (every one of them at most the ceiling). Differences are named, with their
size and where the recorded figures were computed (device, dtype, threads), since the same weights give losses
that differ by rounding from one machine to another.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

from hf_llpf.algorithms.certify import Certifier
from hf_llpf.algorithms.final_check import environment, final_check, point_hashes
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import RunDirectoryError
from hf_llpf.evaluation.probe import build_probe
from hf_llpf.evaluation.sets import resolve_data

# A loss this far from the recorded one (relative) is reported as a difference (rounding between machines, dtypes
# and thread counts stays well under it; a changed weight or example does not).
TOLERANCE = 1e-5


def verify_path(path: Any, *, data: Any = None, device: Any = None, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Re-check ``path``'s recorded certificate here.

    Args:
        path: a :class:`~hf_llpf.run.RunPath` (a run directory, or a published path from ``hf_llpf.hub.load_path``).
        data: the training data, in any form :func:`hf_llpf.connect` takes (:mod:`hf_llpf.data.intake`: a run
            built on a ``DataLoader`` is verified on it again); default: the data the run records, loaded here (a
            data spec's training split without augmentation).
        device: where to evaluate (default: the CPU).
        tolerance: the relative difference in a loss that is reported.

    Returns:
        ``{"ceiling", "examples", "hashes": {"checked", "differ"}, "losses": {"checked", "largest", "differ"},
        "above", "max", "holds", "recorded_environment", "environment"}``; ``differ`` lists what differs (point
        index, tick, the two values).

    Raises:
        RunDirectoryError: the run records no certificate to verify (no ceiling, or a run of an earlier version).
    """
    cert = path.summary.get("run", {}).get("certification") or {}
    if cert.get("ceiling") is None or "point_sha256" not in cert:
        raise RunDirectoryError(
            f"{path.root}: the run records no certificate to verify (summary.run.certification has no ceiling or no "
            "point_sha256: loss_ceiling was null, or the run is from an earlier version); evaluate it instead"
        )
    device = torch.device(device or "cpu")
    data = resolve_data(path, data)
    if isinstance(data, dict):  # the caller's own data: its training split, every example (as the run's certifier)
        whole = build_probe(data["train"], data["train"], None, size=sys.maxsize, device=device)
    else:
        whole = build_probe(None, None, data, size=sys.maxsize, device=device)
    config = ConnectConfig(loss_ceiling=cert["ceiling"], certify_segments=bool(cert.get("segments")))
    certifier = Certifier(whole, cert["ceiling"], config, cert.get("endpoint_probe_losses"))
    certifier.reuse = False
    hashes = _hashes(path, cert["point_sha256"])
    model = path.model_at(0)
    final = final_check(certifier, path, model, device=device)
    recorded = cert.get("final_check") or {}
    differ = _differences(path, final, recorded, tolerance)
    values = final["point_losses"] + final["segment_losses"]
    return {
        "ceiling": cert["ceiling"],
        "examples": final["examples"],
        "recorded_examples": cert.get("probe_examples"),
        "route": cert.get("route"),
        "hashes": hashes,
        "losses": {"checked": len(values) if recorded else 0, "largest": differ.pop("largest"), **differ},
        "above": final["above"],
        "max": final["max"],
        "recorded_max": recorded.get("max"),
        "holds": not final["above"] and not hashes["differ"],
        "recorded_environment": cert.get("environment"),
        "environment": environment(model, device),
    }


def _hashes(path: Any, recorded: list[str]) -> dict[str, Any]:
    """The points' sha256 now against the recorded ones."""
    now = point_hashes(path)
    differ = [{"index": i, "tick": path.ticks[i], "recorded": r, "found": h}
              for i, (r, h) in enumerate(zip(recorded, now, strict=False)) if r != h]  # fmt: skip
    if len(now) != len(recorded):
        differ.append({"index": None, "tick": None, "recorded": f"{len(recorded)} points", "found": f"{len(now)}"})
    return {"checked": len(now), "differ": differ}


def _differences(path: Any, final: dict, recorded: dict, tolerance: float) -> dict[str, Any]:
    """Each point's and midpoint's loss now against the run's final check (relative differences over tolerance)."""
    differ, largest = [], 0.0
    pairs = [("point", final["point_losses"], recorded.get("point_losses")),
             ("segment", final["segment_losses"], recorded.get("segment_losses"))]  # fmt: skip
    for what, now, then in pairs:
        for i, (a, b) in enumerate(zip(now, then or [], strict=False)):
            rel = abs(a - b) / max(abs(b), 1e-12)
            largest = max(largest, rel)
            if rel > tolerance:
                tick = path.ticks[i if what == "point" else i + 1]
                differ.append({"what": what, "index": i, "tick": tick, "recorded": b, "found": a, "relative": rel})
    return {"differ": differ, "largest": largest}


def verify_source(source: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """:func:`verify_path` of a run directory or a published path ``org/repo[@revision]``."""
    from hf_llpf.run import RunPath

    if not os.path.exists(source) and "/" in str(source):
        from hf_llpf.hub import load_path

        return verify_path(load_path(str(source)), **options)
    return verify_path(RunPath(source), **options)


__all__ = ["TOLERANCE", "verify_path", "verify_source"]
