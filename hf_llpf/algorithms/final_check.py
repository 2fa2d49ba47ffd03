"""The final check: every saved point and every segment's checked position, read back from the run directory and
evaluated on all the training examples (docs/algorithm.md §10.3).

It closes the loop on the exact route: the certificate is stated about the points as they are stored, on every
training example, whatever the run decided along the way. A point or segment found above the ceiling here is named
in the verdict (the path is then not certified); none is ever certified on a subset.
"""

from __future__ import annotations

import copy
import hashlib
import platform
import time
from typing import Any

import torch
from torch import nn

SEGMENT_POSITION = 0.5  # the position of each segment that decisions and the final check evaluate (its midpoint)


@torch.no_grad()
def final_check(
    certifier: Any,
    path: Any,
    model: nn.Module,
    *,
    device: Any = None,
    work: nn.Module | None = None,
    together: bool = False,
) -> dict[str, Any]:
    """Evaluate every point of ``path`` and each segment's midpoint on all of ``certifier``'s training examples.

    Args:
        certifier, path: the run's :class:`~hf_llpf.algorithms.certify.Certifier` (exact route: its probe holds every
            training example) and :class:`~hf_llpf.run.RunPath` (the points as written).
        model: a module of the path's architecture (copied unless ``work`` is given; unchanged unless it is that).
        device: where the copy runs (the training device, where the examples are; default: ``model``'s).
        work: a module of the same architecture that nothing needs any more (the walk's working model, or
            ``model`` itself), evaluated in instead of a copy: first set to ``model``'s parameters and buffers, it
            ends holding the last point. Sharded by FSDP2 (a run reading by rows), each process reads only its rows
            of each point into it (:func:`~hf_llpf.sharding.rows.point_rows`).
        together: one run's processes make each pass together (data-parallel or sharded; not repeats spread over
            processes): a pass the run made is taken only where every process holds its bits (:func:`_loss`).

    Returns:
        ``{"examples", "points", "segments", "max", "point_losses", "segment_losses" ([i] joins points i and i + 1),
        "examples_run", "reused", "seconds", "above"}`` (``above``: as :func:`_above` names what is over the ceiling).
    """
    start, probe = time.perf_counter(), certifier.probe
    before, calls = probe.examples_run, probe.calls
    by_rows = work is not None and any(hasattr(p, "device_mesh") for p in work.parameters())  # DTensors
    if not by_rows:
        work = copy.deepcopy(model) if work is None else work if work is model else set_like(work, model)
    device = device if device is not None else next(work.parameters()).device
    work = work.eval() if by_rows else work.eval().to(device)
    read, load, load_mid = _point_access(path, work, device, by_rows=by_rows)
    points, segments, previous = [], [], None
    agree_on = device if together else None  # the device of the processes' agreement (None: this process alone)
    for i in range(len(path)):
        load(state := read(i))
        points.append(_loss(certifier, work, agree_on))
        if previous is not None:
            # As the run's segment check interpolates: floating tensors (BatchNorm statistics included) averaged,
            # in the same order of operations; integer buffers keep the later point's values. One tensor at a
            # time, into the model's own tensors, as load_state_dict copies: no midpoint state is held whole.
            load_mid(state, previous)
            segments.append(_loss(certifier, work, agree_on))
        previous = state if certifier.config.certify_segments else None  # only a segment needs the point before
        del state
    return {
        "examples": probe.num_examples,
        "points": len(points),
        "segments": len(segments),
        "max": max(points + segments),
        "point_losses": points,
        "segment_losses": segments,
        "examples_run": probe.examples_run - before,  # those measured again ...
        "reused": len(points) + len(segments) - (probe.calls - calls),  # ... the others: the run's whole passes
        "seconds": round(time.perf_counter() - start, 4),
        "above": _above(path.metrics, points, segments, certifier.ceiling),
    }


def _point_access(path: Any, work: nn.Module, device: Any, *, by_rows: bool) -> tuple:
    """How the check reads point ``i``, loads it into ``work`` and loads a segment's midpoint: whole points through
    ``load_state_dict``, or (``by_rows``) this process's rows of each into the sharded ``work``."""
    if by_rows:
        from hf_llpf.sharding.rows import load_rows, point_rows

        def mid_rows(here: dict, there: dict) -> None:
            load_rows(work, {k: midpoint(v, there[k]) for k, v in here.items()})

        return (lambda i: point_rows(path, i, work)), (lambda state: load_rows(work, state)), mid_rows

    def read(i: int) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in path.state_dict_at(i).items()}

    def load(state: dict) -> None:
        work.load_state_dict(state, strict=False)

    return read, load, (lambda here, there: load_midpoint(work, here, there))


def set_like(work: nn.Module, model: nn.Module) -> nn.Module:
    """Copy every parameter and buffer of ``model`` (non-persistent buffers included) into ``work``, in place;
    returns ``work``. Afterwards the two hold the same numbers wherever a state dict can reach."""
    source = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    target = {**dict(work.named_parameters()), **dict(work.named_buffers())}
    if source.keys() != target.keys():
        raise ValueError("internal error: the final check's working model is not of the path's architecture")
    for name, tensor in source.items():
        target[name].detach().copy_(tensor.detach())
    return work


def load_midpoint(work: nn.Module, here: dict[str, torch.Tensor], there: dict[str, torch.Tensor]) -> None:
    """Load :func:`midpoint` of ``here`` and ``there`` into ``work``'s tensors of those names, one tensor at a time
    (what ``load_state_dict(strict=False)`` of the whole midpoint state copies, without holding it)."""
    own = work.state_dict(keep_vars=True)
    for name, tensor in here.items():
        if name in own:
            own[name].detach().copy_(midpoint(tensor, there[name]))


def _loss(certifier: Any, model: nn.Module, agree_on: torch.device | None) -> float:
    """The exact loss over every training example: measured again, unless the run made a whole pass over these very
    bits already (the same fingerprint, :func:`~hf_llpf.algorithms.certify.fingerprint`); with ``agree_on`` (the
    device of a run whose processes make each pass together; ``None``: this process alone), on every process."""
    from hf_llpf.algorithms.certify import fingerprint

    if not certifier.reuse:
        return certifier.probe.loss(model)
    known = certifier.measured.get(fingerprint(model))
    if agree_on is not None:
        known = known if _everywhere(known is not None, agree_on) else None
    return known if known is not None else certifier.probe.loss(model)


def _everywhere(flag: bool, device: Any) -> bool:
    """Whether ``flag`` holds on every process of the process group (``flag`` itself without one).

    Several processes average every pass, so all must make the same passes: one that holds other bits than the points
    on disk (its own BatchNorm statistics under data parallelism, a checkpoint's values of another process after a
    resume) makes every process measure again."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    held = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=device)
    dist.all_reduce(held, op=dist.ReduceOp.MIN)
    return bool(held.item() == 1.0)


def point_hashes(path: Any) -> list[str]:
    """The sha256 of each saved point's weights: its safetensors files' bytes, in name order."""
    out = []
    for i in range(len(path)):
        digest = hashlib.sha256()
        for f in sorted(path.point_dir(i).glob("*.safetensors")):
            with open(f, "rb") as fh:
                for block in iter(lambda fh=fh: fh.read(1 << 24), b""):
                    digest.update(block)
        out.append(digest.hexdigest())
    return out


def environment(model: nn.Module, device: Any) -> dict[str, Any]:
    """Where the figures were computed: what ``hf-llpf verify`` compares with (the loss of the same weights moves by
    rounding between devices, dtypes and thread counts)."""
    dtype = next((t.dtype for t in model.state_dict().values() if t.is_floating_point()), None)
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": platform.machine()}  # fmt: skip


def midpoint(here: torch.Tensor, there: torch.Tensor) -> torch.Tensor:
    """The segment's midpoint of one tensor: ``(here + there) · 0.5`` for floating tensors, ``here`` otherwise."""
    return (here + there) * 0.5 if here.is_floating_point() else here


def _above(rows: list[dict], points: list[float], segments: list[float], ceiling: float) -> list[dict]:
    """What the final check found above the ceiling, named as the run names points: ``tick``, ``stage``, ``phase``,
    ``what`` (point or segment), ``loss`` and ``check: "final"``."""
    out = []
    for i, loss in enumerate(points):
        if not loss <= ceiling:
            out.append(_entry(rows[i], "point", loss))
    for i, loss in enumerate(segments):
        if not loss <= ceiling:
            out.append(_entry(rows[i + 1], "segment", loss))
    return out


def _entry(row: dict, what: str, loss: float) -> dict:
    return {"tick": row["tick"], "stage": row.get("stage", -1), "phase": row.get("phase", ""), "what": what,
            "loss": loss, "check": "final"}  # fmt: skip


def record_final(points: list[dict], final: dict[str, Any]) -> None:
    """Write the final check's figures into the points' rows: ``full_loss`` (the point) and ``full_segment_loss``
    (the segment that ends at it)."""
    for i, row in enumerate(points):
        row["full_loss"] = final["point_losses"][i]
        if 0 < i <= len(final["segment_losses"]):
            row["full_segment_loss"] = final["segment_losses"][i - 1]


__all__ = [
    "SEGMENT_POSITION",
    "environment",
    "final_check",
    "load_midpoint",
    "midpoint",
    "point_hashes",
    "record_final",
    "set_like",
]
