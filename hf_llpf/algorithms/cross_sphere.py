"""Cross-sphere connection: M2O from the larger-sphere endpoint onto the other's sphere, then M2M (spec §3).

The published path always runs from θ_A to θ_B:

- A on the larger sphere:  A ──M2O──▶ A' ──M2M──▶ B
- B on the larger sphere:  A ──M2M──▶ B' ──(B ──M2O──▶ B', reversed)──▶ B

Each M2O tensor stops exactly at the other endpoint's variance (or stays put when it is already smaller:
M2O never walks outward). Phases are recorded per point (``phase``: ``m2o``, ``m2m``, ``m2o_reversed``).
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from collections.abc import Callable

import torch
from torch import nn

from hf_llpf import geometry
from hf_llpf.algorithms.m2m import M2M
from hf_llpf.algorithms.m2o import M2O, moved_parameter_names
from hf_llpf.config import ConnectConfig
from hf_llpf.models import Endpoint
from hf_llpf.path import RunWriter, point_name
from hf_llpf.safe_paths import resolve_inside
from hf_llpf.stages import StagePlan
from hf_llpf.train import RepairTrainer

TrainerFactory = Callable[..., RepairTrainer]


def larger_sphere_is_a(a: nn.Module, b: nn.Module, names: list[str]) -> bool:
    """Which endpoint lies on the larger sphere: the sign of the mean log variance ratio over ``names``."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    va = geometry.variances([pa[n] for n in names])
    vb = geometry.variances([pb[n] for n in names])
    ok = (va > 0) & (vb > 0)
    return bool(torch.log(va[ok] / vb[ok]).mean() > 0)


def run_cross_sphere(
    ea: Endpoint,
    eb: Endpoint,
    plan: StagePlan,
    config: ConnectConfig,
    make_trainer: TrainerFactory,
    writer: RunWriter,
    *,
    device: torch.device,
    progress: bool = True,
    on_tick: Callable[[dict], None] | None = None,
) -> M2M:
    """Run M2O then M2M and assemble one path from θ_A to θ_B in ``writer``; returns the finished M2M loop."""
    names = moved_parameter_names(plan, ea.model)
    a_larger = larger_sphere_is_a(ea.model, eb.model, [n for n in names if ea.model.get_parameter(n).ndim > 1])
    walker, other = (ea, eb) if a_larger else (eb, ea)
    # Where the M2O points go: straight into the path when A walks; aside (to be reversed) when B walks.
    m2o_writer = writer if a_larger or writer is None else RunWriter(writer.root / ".m2o_phase", exist="overwrite")
    model = copy.deepcopy(walker.model).to(device)
    trainer = make_trainer(model, per_tensor_lr=True)
    pw, po = dict(walker.model.named_parameters()), dict(other.model.named_parameters())
    target = torch.minimum(geometry.variances([pw[n] for n in names]), geometry.variances([po[n] for n in names]))
    m2o = M2O(model, plan, target, config, trainer, m2o_writer, walker, progress=progress)
    record_m2o_points(m2o, m2o_writer, walker, reference_a=ea.model, reference_b=eb.model)
    walked = Endpoint(copy.deepcopy(model).cpu().eval(), walker.kind, f"{walker.source} (M2O)", None, walker.arch)

    if a_larger:
        m2m_model = model
        target_endpoint, offset = eb, m2o.tick
        prior_points, prior_ticks = m2o.points, m2o.ticks
    else:
        m2m_model = copy.deepcopy(ea.model).to(device)
        target_endpoint, offset = walked, 0
        prior_points, prior_ticks = [], []
    m2m_trainer = make_trainer(m2m_model)
    if a_larger:  # SGD iterations count along the path: the M2M part continues the M2O part's count
        m2m_trainer.iterations = trainer.iterations
    m2m = M2M(
        m2m_model,
        target_endpoint,
        ea,
        plan,
        config,
        m2m_trainer,
        writer,
        progress=progress,
        tick_offset=offset,
        prior_points=prior_points,
        prior_ticks=prior_ticks,
        reference_a=ea.model,
    )
    m2m.on_tick = on_tick
    m2m.run()
    m2m.state.timing = _merge(m2m.state.timing, m2o.timing)
    if writer is None:  # not the main process: it computed the same path, the main one writes it
        return m2m
    if not a_larger:
        _append_reversed(m2m, m2o, m2o_writer, writer)
        m2o_writer.close()
        shutil.rmtree(m2o_writer.root, ignore_errors=True)
    writer.write_metrics(m2m.state.points, m2m.state.ticks)
    return m2m


def record_m2o_points(
    walk: M2O, writer: RunWriter | None, endpoint: Endpoint, *, reference_a: nn.Module, reference_b: nn.Module | None
) -> None:
    """Run ``walk`` and save its points (every ``save_every`` ticks and the end) and per-tick rows in ``writer``.

    Distances are to ``reference_a``/``reference_b`` (the path's true endpoints), so cross-sphere columns line up.
    """
    a_state = _params(reference_a)
    b_state = _params(reference_b) if reference_b is not None else None
    trainer, model, every = walk.trainer, walk.model, walk.config.save_every

    def record(tick: int, loss: float) -> None:
        walk.ticks.append(
            {
                "tick": tick,
                "stage": -1,
                "train_loss": loss,
                "iters": None,
                "sgd_iters": trainer.iterations,
                "phase": walk.phase,
            }
        )
        if tick % every and not walk.done():
            return
        params = _params(model)
        rel = writer.write_point(tick, _cpu(model), endpoint) if writer is not None else point_name(tick)
        walk.points.append(
            {
                "index": len(walk.points),
                "tick": tick,
                "stage": -1,
                "phase": walk.phase if tick else "start",
                "train_loss": loss,
                "sgd_iters": trainer.iterations,
                "dist_a": _distance(params, a_state),
                "dist_b": _distance(params, b_state) if b_state is not None else None,
                "stage_boundary": tick == 0,
                "point": rel,
            }
        )
        if writer is not None:
            writer.write_metrics(walk.points, walk.ticks)

    walk.run(record=record)
    if walk.points[-1]["tick"] != walk.tick:  # the walk's last state is always a saved point
        walk.ticks.pop()
        record(walk.tick, walk.ticks[-1]["train_loss"] if walk.ticks else float("nan"))


def _append_reversed(m2m: M2M, m2o: M2O, m2o_writer: RunWriter, writer: RunWriter) -> None:
    """Append B' → B: the M2O points in reverse order, renamed to ticks after the M2M part.

    M2O tick ``t`` lands at path tick ``end + last − t``. SGD iterations are counted in path order: the
    M2O iterations spent between B' and the point are added to the M2M part's total.
    """
    st = m2m.state
    end = st.points[-1]["tick"]  # the M2M part ends on B' = the last M2O point
    last = m2o.points[-1]["tick"]
    spent, m2o_total = st.points[-1]["sgd_iters"], m2o.points[-1]["sgd_iters"]
    st.points[-1]["phase"] = "m2m"  # B' is where the two parts meet, no longer the end
    for row in reversed(m2o.points[:-1]):
        tick = end + (last - row["tick"])
        dest = writer.root / point_name(tick)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(resolve_inside(m2o_writer.root, row["point"], field="m2o point"), dest)
        sgd = spent + (m2o_total - row["sgd_iters"])
        st.points.append(
            {
                **row,
                "index": len(st.points),
                "tick": tick,
                "phase": "m2o_reversed",
                "sgd_iters": sgd,
                "point": point_name(tick),
            }
        )
    st.points[-1]["phase"] = "end"
    for row in reversed(m2o.ticks):
        if row["tick"] < last:
            sgd = spent + (m2o_total - row["sgd_iters"])
            st.ticks.append({**row, "tick": end + last - row["tick"], "phase": "m2o_reversed", "sgd_iters": sgd})


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return geometry.total_distance([x.cpu() for x in a], [y.cpu() for y in b])


def _cpu(model: nn.Module) -> nn.Module:
    p = next(model.parameters(), None)
    return model if p is None or p.device.type == "cpu" else copy.deepcopy(model).cpu()


def _merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b) if not math.isnan(a.get(k, 0.0))}
