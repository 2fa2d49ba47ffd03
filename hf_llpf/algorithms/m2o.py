"""LLPF_M2O: walk a model toward the origin along a low-loss path (docs/algorithm.md §6).

One tick: every moved tensor shrinks toward 0 by the clamped step (``θ ← θ·(1 − s/‖θ‖)``, never below its
target variance: the last step lands on it exactly) → norm-layer compensation → minimal training with
AngleConformal learning rates → record. There is no variance correction: the model is meant to leave its
sphere, inward.

- BatchNorm affine parameters are not moved (BatchNorm re-normalises whatever scale reaches it).
- LayerNorm/RMSNorm/GroupNorm parameters are *compensated*: they grow by ``1/c`` when the tensors shrink by
  ``c``, so the normalised layers keep the scale of what they hand on.
- AngleConformal: each moved weight tensor (not in a norm layer, two or more dimensions) trains with
  ``lr_k = lr_0 · w_k/v_k`` (``var`` policy) or ``lr_0 · sqrt(w_k/v_k)`` (``std``), w_k its current and v_k its
  start variance, so an SGD step turns it by the same angle on a smaller sphere. Biases and norm parameters
  keep ``lr_0``. Each tensor has its own optimizer parameter group (one shared group would silently give
  every tensor the same rate).
- Only inward: a target variance above the start is refused (outward walks explode: docs/algorithm.md §6).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_llpf import geometry, sharding
from hf_llpf.algorithms.base import Context, LoopState, Method, RunRecorder, RunSetup
from hf_llpf.algorithms.certify import Verdict
from hf_llpf.algorithms.guard import Advice
from hf_llpf.algorithms.registry import register
from hf_llpf.errors import ConfigError
from hf_llpf.progress import loss_label, progress_enabled
from hf_llpf.run.records import PointRecord, TickRecord
from hf_llpf.stages import StagePlan

OUTWARD_MESSAGE = (
    "M2O only walks a model inward, toward the origin: on a larger sphere the same SGD step turns the weights "
    "less and less while the loss surface scales, and the paper's outward runs exploded (docs/algorithm.md §6). To "
    "connect a smaller-sphere endpoint to a larger-sphere one, hf-llpf walks the LARGER one inward to the "
    "smaller one's sphere and publishes that part reversed (method: auto or m2o)."
)


def moved_parameter_names(plan: StagePlan, model: nn.Module) -> list[str]:
    """The parameters M2O moves toward the origin: floating tensors of every group outside norm layers."""
    return [
        n for g in plan.groups() if g.norm is None for n in g.param_names if model.get_parameter(n).is_floating_point()
    ]


@dataclass
class WalkState(LoopState):
    """M2O's loop state: the common counters plus which moved tensors have reached their target variance."""

    reached: list[bool] = field(default_factory=list)


@register("m2o")
class M2O(Method):
    """Walk ``ctx.model`` toward the origin until each moved tensor reaches its target variance.

    Points are saved every ``save_every`` ticks and at the end, through ``ctx.recorder``; a tick whose loss
    diverges is rolled back (the step halves) by the shared divergence guard.

    Args:
        ctx: the working model (the start endpoint's copy), its trainer (one parameter group per tensor: the
            AngleConformal rates), the plan (norm kinds, parameter order), the settings (``config.m2o``).
        target_var: per moved tensor, in :attr:`moved_names` order, the variance to stop at; ``None``: the
            start variance times ``config.m2o.target_variance``.
        reference_a, reference_b: the path's true endpoints, for the distance columns (``None``: no column).
        phase: the phase name recorded for each point.
    """

    def __init__(
        self,
        ctx: Context,
        target_var: torch.Tensor | None,
        *,
        reference_a: nn.Module | None = None,
        reference_b: nn.Module | None = None,
        phase: str = "m2o",
    ):
        super().__init__(ctx)
        model, plan = ctx.model, ctx.plan
        self.plan, self.phase, self.progress, self.recorder = plan, phase, ctx.progress, ctx.recorder
        groups = plan.groups()
        self.moved_names = moved_parameter_names(plan, model)
        self.norm_names = [n for g in groups if g.norm in ("layernorm", "rmsnorm", "groupnorm") for n in g.param_names]
        self.moved = [model.get_parameter(n) for n in self.moved_names]
        self.norms = [model.get_parameter(n) for n in self.norm_names]
        # The per-tensor figures go through hf_llpf.sharding: the geometry functions themselves on whole tensors,
        # their sharded equivalents on FSDP2's shards (:class:`hf_llpf.algorithms.sharded_m2o.ShardedM2O`).
        self.start_var = sharding.variances(self.moved)
        self.target_var = self._checked_target(target_var)
        # AngleConformal applies to weight tensors outside norm layers; biases keep lr_0 (paper, AngleConformal).
        self.conformal = [self.trainer.param_index(p) for p in self.moved if p.ndim > 1]
        self.conformal_pos = [i for i, p in enumerate(self.moved) if p.ndim > 1]
        self.refs = [_params(r) if r is not None else None for r in (reference_a, reference_b)]
        self.state = WalkState(reached=[False] * len(self.moved))
        self.finished = False

    @classmethod
    def for_run(cls, run: RunSetup) -> M2O:
        """A walk of θ_A toward the origin to ``config.m2o.target_variance`` of its variance (walk_to_origin)."""
        model = copy.deepcopy(run.ea.model).to(run.device)
        trainer = run.make_trainer(model, per_tensor_lr=True)
        ctx = Context(model, trainer, run.plan, run.config, progress=run.progress, certifier=run.certifier)
        method = cls(ctx, None, reference_a=run.ea.model)
        method.recorder = RunRecorder(run.writer, run.ea, state=method.run_state)
        return method

    def _checked_target(self, target_var: torch.Tensor | None) -> torch.Tensor:
        m = self.config.m2o
        if target_var is None:
            if m.target_variance >= 1:
                raise ConfigError(f"m2o.target_variance={m.target_variance}: must be < 1. {OUTWARD_MESSAGE}")
            target_var = self.start_var * m.target_variance
        target_var = target_var.to(self.start_var)
        if bool((target_var > self.start_var * (1 + 1e-9)).any()):
            k = int(torch.argmax(target_var / self.start_var.clamp_min(1e-300)))
            raise ConfigError(
                f"M2O target variance of {self.moved_names[k]} is above its start "
                f"({float(target_var[k]):.3g} > {float(self.start_var[k]):.3g}). {OUTWARD_MESSAGE}"
            )
        return target_var

    @property
    def tick(self) -> int:
        return self.state.tick

    @property
    def points(self) -> list[dict]:
        return self.state.points

    @property
    def ticks(self) -> list[dict]:
        return self.state.ticks

    def _shrink(self) -> torch.Tensor:
        """Move every unfinished tensor toward 0; returns the per-tensor scale factors applied (1 = untouched)."""
        m, scale = self.config.m2o, self.state.step_scale
        var = sharding.variances(self.moved)
        norm = sharding.distance_to_origin(self.moved)
        step = geometry.step_sizes(norm, step_a=m.step_a * scale, step_f=m.step_f * scale)
        factor = torch.where(norm > 0, 1 - step / norm.clamp_min(1e-300), torch.ones_like(norm))
        # Never below the target: var(c·θ) = c²·var(θ), so the last step lands exactly on the target variance.
        floor = torch.sqrt((self.target_var / var.clamp_min(1e-300)).clamp(max=1.0))
        factor = torch.where(var > self.target_var, torch.maximum(factor, floor), torch.ones_like(factor))
        # A tensor counts as arrived once a shrink lands it on its target: repair training may push it back a
        # little each tick (it is then held there by the next shrink), which must not keep the walk going.
        reached = torch.tensor(self.state.reached) | (factor <= floor) | (var <= self.target_var)
        self._reached_now = reached.tolist()
        with torch.no_grad():
            torch._foreach_mul_(sharding.local_parts(self.moved)[0], factor.tolist())  # each process its rows
        return factor

    def _compensate(self, factor: torch.Tensor) -> None:
        """Grow norm-layer parameters by the mean inverse shrink, so normalised layers keep their output scale."""
        if not self.norms or not self.config.m2o.compensate_norms:
            return
        moving = factor[factor < 1]
        if len(moving) == 0:
            return
        grow = float(1 / moving.mean())
        with torch.no_grad():
            torch._foreach_mul_(sharding.local_parts(self.norms)[0], grow)  # elementwise: each process its rows

    def _set_learning_rates(self) -> None:
        policy = self.config.m2o.lr_policy
        if policy == "none" or not self.conformal:
            return
        current = sharding.variances([self.moved[i] for i in self.conformal_pos])
        factors = geometry.angle_conformal_factor(current, self.start_var[self.conformal_pos], policy)
        self.trainer.set_lr_factors(self.conformal, factors.tolist())

    def done(self) -> bool:
        """True when every moved tensor has reached its target variance at least once."""
        return all(self.state.reached)

    def run(self) -> WalkState:
        """Walk until :meth:`done` or ``config.m2o.max_ticks``; the last state is always a saved point."""
        st, m = self.state, self.config.m2o
        if self.finished:
            return st
        if st.tick == 0 and not st.points:
            self._record(0, float("nan"))
            self._checkpoint()
        if self.segments.tick is None:  # a resume from a checkpoint that predates the segments' start
            self.wrote_point(st.tick)
        # The bar counts the tensors that have reached their target variance (the walk ends when all have); the
        # tick count is in the postfix: max_ticks is only a cap.
        bar = tqdm(
            total=len(st.reached),
            initial=sum(st.reached),
            desc=f"llpf {self.phase} tensors at target",
            unit="tensor",
            disable=not progress_enabled(self.progress),
            leave=False,
        )
        try:
            while st.tick < m.max_ticks and not self.done():
                loss = self._tick()
                bar.update(sum(st.reached) - bar.n)
                ratio = float((sharding.variances(self.moved) / self.start_var.clamp_min(1e-300)).max())
                bar.set_postfix(tick=st.tick, loss=loss_label(loss), var_ratio=f"{ratio:.3f}")
        finally:
            bar.close()
        if st.points[-1]["tick"] != st.tick:  # stopped by max_ticks between two saved points
            self.insert_previous_point()
        self._checkpoint(done=True)
        return st

    def _attempt(self, repair: bool) -> float:
        """One try at the tick: shrink, compensate, set the AngleConformal rates, and with ``repair`` the minimal
        training; returns its loss (NaN without repair)."""
        t = time.perf_counter()
        factor = self._shrink()
        self._compensate(factor)
        self._set_learning_rates()
        t = self.timer.lap("move", t)
        if not repair:
            return float("nan")
        loss, _ = self.trainer.repair()
        self.timer.lap("train", t)
        return loss

    def _tick(self) -> float:
        st = self.state
        iters_before, rounds_before = self.trainer.iterations, self.trainer.rounds
        advice = Advice(new_run=("m2o.step_a",))  # a nested setting: --resume refuses a change of `m2o`
        loss, verdict = self.certified_tick(self._attempt, lambda: None, name=self.phase, advice=advice)
        st.reached = self._reached_now
        st.tick += 1
        self.note_uncertified(verdict, tick=st.tick, stage=-1, phase=self.phase)
        self._record(st.tick, loss, verdict=verdict, iters=self.trainer.iterations - iters_before,
                     rounds=self.trainer.rounds - rounds_before)  # fmt: skip
        if st.tick % self.config.checkpoint_every == 0:
            self._checkpoint()
        return loss

    def _record(
        self,
        tick: int,
        loss: float,
        *,
        verdict: Verdict | None = None,
        iters: int | None = None,
        rounds: int | None = None,
    ) -> None:
        """The tick's row, and a point every ``save_every`` ticks, at the start and at the end."""
        st = self.state
        probe = verdict.point if verdict else None
        if tick == 0 and self.certifier.enabled:
            probe = self.certifier.loss(self.model)
        segment = verdict.segment if verdict else None
        row = TickRecord(tick, -1, loss, iters, self.trainer.iterations, phase=self.phase, probe_loss=probe,
                         segment_loss=segment, step_scale=st.step_scale if verdict else None,
                         backtracks=st.backtracks if verdict else None, repair_rounds=rounds)  # fmt: skip
        st.ticks.append(row.row())
        if tick % self.config.save_every == 0 or self.done():
            self._save_point(tick, loss, probe, segment)

    def insert_previous_point(self) -> None:
        """Save the last tick's point, which the model holds again, with that tick's figures."""
        last = self.state.ticks[-1]  # a row leaves out what was not measured (a segment after a point kept above)
        probe, segment = last.get("probe_loss"), last.get("segment_loss")
        self._save_point(last["tick"], last["train_loss"], probe, segment, last["sgd_iters"])

    def _save_point(
        self, tick: int, loss: float, probe: float | None, segment: float | None, sgd_iters: int | None = None
    ) -> None:
        st, t = self.state, time.perf_counter()
        rel = self.recorder.point(tick, self.model)
        self.wrote_point(tick)
        t = self.timer.lap("write_points", t)
        a, b = self.refs
        point = PointRecord(
            index=len(st.points),
            tick=tick,
            stage=-1,
            phase=self.phase if tick else "start",
            train_loss=loss,
            sgd_iters=self.trainer.iterations if sgd_iters is None else sgd_iters,
            dist_a=self._distance_to(a) if a is not None else None,
            dist_b=self._distance_to(b) if b is not None else None,
            stage_boundary=tick == 0,
            point=rel,
            probe_loss=probe,
            segment_loss=segment,
        )
        st.points.append(point.row())
        self.timer.lap("record", t)

    def _distance_to(self, ref: list[torch.Tensor]) -> float:
        """The distance from the working model to a reference endpoint's parameters (``self.refs``)."""
        return _distance(_params(self.model), ref)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in model.parameters()]


def _distance(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return geometry.total_distance([x.cpu() for x in a], [y.cpu() for y in b])
