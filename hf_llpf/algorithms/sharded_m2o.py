"""LLPF_M2O and the cross-sphere path (M2O, then M2M) with the working model sharded by PyTorch's FSDP2 (``sharding:
fsdp``; docs/distributed.md, "Models larger than one device").

As :class:`~hf_llpf.algorithms.sharded.ShardedM2M`: each process holds its rows of every parameter of the working
model and of both endpoints, never a whole tensor outside the point writer's turn. M2O's per-tensor figures come from
:mod:`hf_llpf.sharding` (only float64 scalars travel): ‖θ‖ for the shrink is the square root of the shards' summed
squares, the target-variance test, the clamped last step and the AngleConformal rates use the whole tensor's variance
merged from the shards' moments, so every process scales its rows by the same factor and sets the same rates; the
norm-layer compensation is elementwise. The cross-sphere run's M2O phase ends on a state each process keeps as its
own rows (``walked``), where its M2M phase starts or which it walks to; every checkpoint holds each process's parts.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from hf_llpf import sharding
from hf_llpf.algorithms.base import Context, RunSetup
from hf_llpf.algorithms.cross_sphere import CrossSphere, larger_variances_are_a
from hf_llpf.algorithms.m2o import M2O, moved_parameter_names
from hf_llpf.algorithms.registry import method_class
from hf_llpf.algorithms.sharded import ShardedM2M, ShardedRecorder, ShardedState
from hf_llpf.algorithms.spheres import sphere_rows
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run.layout import ASIDE
from hf_llpf.sharding import local_parts, row_range, stored_names
from hf_llpf.sharding.rows import load_rows, reshard, shard_model, sharded_copy

__all__ = ["ShardedCrossSphere", "ShardedM2O", "endpoint_rows", "rows_sphere_report", "sharded_method_class"]

Rows = dict[str, torch.Tensor]  # a state dict's name -> this process's part of that tensor (rows, or whole)


def endpoint_rows(endpoint: Endpoint, work: nn.Module) -> Rows:
    """This process's part of every tensor of ``endpoint``, laid out as the sharded ``work`` model holds it: the rows
    the preparation read (:mod:`hf_llpf.sharding.rows`), else sliced from the endpoint's whole model (an endpoint given
    as a module, or loaded whole)."""
    rows = getattr(endpoint, "rows", None)
    if rows:
        return rows
    state, live = endpoint.model.state_dict(), work.state_dict()
    parts, sharded, group = local_parts(list(live.values()))
    device = parts[0].device if parts else torch.device("cpu")
    out = {}
    for (name, t), part_is_rows in zip(live.items(), sharded, strict=True):
        whole = state[name].detach()
        if part_is_rows:
            start, stop = row_range(t.shape[0], rank=group.rank, world=group.world)
            whole = whole[start:stop]
        out[name] = whole.clone().to(device)
    return out


def _in_order(model: nn.Module, rows: Rows, names: list[str]) -> list[torch.Tensor]:
    """``rows`` of the named tensors of ``model``, in ``names``' order (a tied name: the tensor it is stored under)."""
    stored = stored_names(model, rows)
    return [rows[stored[n]] for n in names]


def _variances(model: nn.Module, rows: Rows, names: list[str]) -> torch.Tensor:
    """The whole-tensor variances of ``rows``' named parameters, merged over the processes (laid out as ``model``)."""
    params = [model.get_parameter(n) for n in names]
    return sharding.variances(sharding.shards_like(params, _in_order(model, rows, names)))


def rows_sphere_report(ea: Endpoint, eb: Endpoint) -> list[dict]:
    """:func:`hf_llpf.algorithms.spheres.sphere_report` of two endpoints read by rows (``ea.work``: the sharded model
    holding θ_A's rows), every process taking part; the same rows on every process."""
    work = ea.work
    named = [(n, p) for n, p in work.named_parameters() if p.is_floating_point() and p.numel() > 1]
    names = [n for n, _ in named]
    va, vb = (_variances(work, endpoint_rows(e, work), names) for e in (ea, eb))
    return sphere_rows(names, [p.ndim for _, p in named], [p.numel() for _, p in named], va, vb)


class ShardedM2O(ShardedState, M2O):
    """:class:`~hf_llpf.algorithms.m2o.M2O` on a model sharded by FSDP2 (its trainer built with ``sharded=True`` and
    ``per_tensor_lr=True`` on the sharded parameters); the distance columns from this process's rows of the
    reference endpoints.

    Args:
        ctx, target_var, phase: as :class:`~hf_llpf.algorithms.m2o.M2O`.
        references: θ_A's and θ_B's rows (:func:`endpoint_rows`), or ``None`` for no column.
    """

    def __init__(self, ctx: Context, target_var: torch.Tensor | None, *, references: tuple, phase: str = "m2o"):
        super().__init__(ctx, target_var, phase=phase)
        names = [n for n, _ in ctx.model.named_parameters()]
        self.all_params = [ctx.model.get_parameter(n) for n in names]  # the sharded parameters, held from here
        self.refs = [None if r is None else _in_order(ctx.model, r, names) for r in references]

    def _distance_to(self, ref: list[torch.Tensor]) -> float:
        return sharding.total_distance(self.all_params, ref)


class ShardedCrossSphere(CrossSphere):
    """:class:`~hf_llpf.algorithms.cross_sphere.CrossSphere` on sharded models: M2O (:class:`ShardedM2O`) from the
    larger-sphere endpoint onto the other's sphere, then :class:`~hf_llpf.algorithms.sharded.ShardedM2M`; both
    endpoints held as this process's rows, the points written from the shards."""

    def __init__(self, run: RunSetup):
        ea, eb, device = run.ea, run.eb, run.device
        self.ea, self.eb, self.plan, self.config, self.make_trainer = ea, eb, run.plan, run.config, run.make_trainer
        self.writer, self.device, self.progress, self.on_tick = run.writer, device, run.progress, None
        self.certifier = run.certifier
        work = getattr(ea, "work", None)
        if work is None:  # endpoints loaded whole: a sharded copy of θ_A
            work = copy.deepcopy(ea.model).to(device)
            shard_model(work, device)
        reshard(work)
        self.rows = {"A": endpoint_rows(ea, work), "B": endpoint_rows(eb, work)}
        for e in (ea, eb):  # the run holds the rows now (θ_B's whole model, where loaded, is then dead)
            if hasattr(e, "rows"):
                e.work, e.rows = None, {}
        names = moved_parameter_names(run.plan, work)
        va, vb = (_variances(work, self.rows[k], names) for k in "AB")
        weights = [i for i, n in enumerate(names) if work.get_parameter(n).ndim > 1]
        self.a_larger = larger_variances_are_a(va[weights], vb[weights])
        self.walker = ea if self.a_larger else eb
        self.aside = None if self.a_larger else run.writer.phase_folder(ASIDE, resume=run.resume)
        if not self.a_larger:
            load_rows(work, self.rows["B"])
        trainer = run.make_trainer(work, per_tensor_lr=True, sharded=True)  # on the sharded parameters
        ctx = Context(work, trainer, run.plan, run.config, self._recorder(self.aside), run.progress, self.certifier)
        self.m2o = ShardedM2O(ctx, torch.minimum(va, vb), references=(self.rows["A"], self.rows["B"]))
        self.m2m: ShardedM2M | None = None
        self.walked: Rows | None = None  # the M2O phase's last state, this process's parts

    @classmethod
    def for_run(cls, run: RunSetup) -> ShardedCrossSphere:
        """The sharded cross-sphere run of ``run``'s endpoints."""
        return cls(run)

    def _recorder(self, points: Any) -> ShardedRecorder:
        endpoint = self.walker if points is not None and points is self.aside else self.ea
        return ShardedRecorder(points or self.writer, endpoint, checkpoints=self.writer, state=self.run_state)

    @property
    def model(self) -> nn.Module:
        """The sharded working model of the phase that ends the walk (the final check evaluates the points in it)."""
        return self.m2m.model if self.m2m is not None else self.m2o.model

    def _build_m2m(self) -> None:
        m2o = self.m2o
        # The M2O phase is over: its momentum, gradients and rollback snapshot (a copy of the model each) go before
        # M2M builds its own (its checkpoint part keeps the loop, the model and the counters).
        m2o.release()
        if self.walked is None:
            self.walked = dict(zip(m2o.model.state_dict(), [t.clone() for t in sharding.local_state(m2o.model)]))
        if self.a_larger:
            model = m2o.model
            load_rows(model, self.walked)  # (a resume: the M2O phase's last state, as it ended)
            target, offset, prior_points, prior_ticks = self.rows["B"], m2o.tick, m2o.points, m2o.ticks
        else:
            model = sharded_copy(self.ea.model, self.device)  # θ_A's structure, sharded, then its rows
            load_rows(model, self.rows["A"])
            target, offset, prior_points, prior_ticks = self.walked, 0, [], []
        trainer = self.make_trainer(model, sharded=True)
        if self.a_larger:  # SGD iterations count along the path: the M2M part continues the M2O part's count
            trainer.iterations = m2o.trainer.iterations
        ctx = Context(model, trainer, self.plan, self.config, self._recorder(None), self.progress, self.certifier)
        self.m2m = ShardedM2M(ctx, SimpleNamespace(rows=dict(target)), tick_offset=offset,
                              prior_points=list(prior_points), prior_ticks=list(prior_ticks))  # fmt: skip
        if self.a_larger:  # the distance-to-A column from θ_A's rows (the phase starts at A')
            self.m2m.start = _in_order(model, self.rows["A"], self.m2m.names)
        self.m2m.on_tick = self.on_tick

    def release(self) -> None:
        """Both phases' optimizer states, snapshots and rows (the walk is over; the summary and the final check
        read the counters and the working model only)."""
        self.m2o.release()
        if self.m2m is not None:
            self.m2m.release()
        self.rows, self.walked = {}, None


def sharded_method_class(name: str) -> type:
    """The loop a sharded connect runs as ``method: name`` (``m2m`` or ``cross-sphere``; ``auto`` is resolved first).

    Raises:
        UnknownNameError: an unknown method (as :func:`~hf_llpf.algorithms.registry.method_class`).
        RuntimeError: a method :func:`~hf_llpf.algorithms.sharded.check_sharding` lets through but no class runs.
    """
    method_class(name)
    classes = {"m2m": ShardedM2M, "cross-sphere": ShardedCrossSphere}
    if name not in classes:
        raise RuntimeError(f"internal error: method {name!r} has no sharded loop (check_sharding must refuse it)")
    return classes[name]
