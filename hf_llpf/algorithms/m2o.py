"""LLPF_M2O: walk a model toward the origin along a low-loss path (llpf-spec.md §3).

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
  every tensor the same rate, spec §6).
- Only inward: a target variance above the start is refused (outward walks explode, spec §3).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from tqdm.auto import tqdm

from hf_llpf import geometry
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError, DivergenceError
from hf_llpf.models import Endpoint
from hf_llpf.path import RunWriter
from hf_llpf.stages import StagePlan
from hf_llpf.train import RepairTrainer

OUTWARD_MESSAGE = (
    "M2O only walks a model inward, toward the origin: on a larger sphere the same SGD step turns the weights "
    "less and less while the loss surface scales, and the paper's outward runs exploded (llpf-spec.md §3). To "
    "connect a smaller-sphere endpoint to a larger-sphere one, hf-llpf walks the LARGER one inward to the "
    "smaller one's sphere and publishes that part reversed (method: auto or m2o)."
)


def moved_parameter_names(plan: StagePlan, model: nn.Module) -> list[str]:
    """The parameters M2O moves toward the origin: floating tensors of every group outside norm layers."""
    return [
        n for g in plan.groups() if g.norm is None for n in g.param_names if model.get_parameter(n).is_floating_point()
    ]


class M2O:
    """Walk ``model`` toward the origin until each moved tensor reaches its target variance.

    Args:
        model: the working model (the start endpoint's copy) on the training device.
        plan: the stages (used for norm kinds and the parameter order).
        target_var: per moved tensor, in :attr:`moved_names` order, the variance to stop at; ``None``: the
            start variance times ``config.m2o.target_variance``.
        config: the run's settings (``config.m2o`` holds this phase's knobs).
        trainer: the minimal-training loop, built with one parameter group per tensor.
        writer: the run directory; points are written under ``points_prefix``.
        endpoint_format: the endpoint whose format points are saved in.
        phase: the phase name recorded for each point.
    """

    def __init__(
        self,
        model: nn.Module,
        plan: StagePlan,
        target_var: torch.Tensor | None,
        config: ConnectConfig,
        trainer: RepairTrainer,
        writer: RunWriter | None,
        endpoint_format: Endpoint,
        *,
        phase: str = "m2o",
        progress: bool = True,
    ):
        self.model, self.plan, self.config, self.trainer = model, plan, config, trainer
        self.writer, self.endpoint_format, self.phase, self.progress = writer, endpoint_format, phase, progress
        groups = plan.groups()
        self.moved_names = moved_parameter_names(plan, model)
        self.norm_names = [n for g in groups if g.norm in ("layernorm", "rmsnorm", "groupnorm") for n in g.param_names]
        self.moved = [model.get_parameter(n) for n in self.moved_names]
        self.norms = [model.get_parameter(n) for n in self.norm_names]
        self.start_var = geometry.variances(self.moved)
        m = config.m2o
        if target_var is None:
            if m.target_variance >= 1:
                raise ConfigError(f"m2o.target_variance={m.target_variance}: must be < 1. {OUTWARD_MESSAGE}")
            target_var = self.start_var * m.target_variance
        self.target_var = target_var.to(self.start_var)
        if bool((self.target_var > self.start_var * (1 + 1e-9)).any()):
            k = int(torch.argmax(self.target_var / self.start_var.clamp_min(1e-300)))
            raise ConfigError(
                f"M2O target variance of {self.moved_names[k]} is above its start "
                f"({float(self.target_var[k]):.3g} > {float(self.start_var[k]):.3g}). {OUTWARD_MESSAGE}"
            )
        # AngleConformal applies to weight tensors outside norm layers; biases keep lr_0 (spec §3).
        self.conformal = [self.trainer.param_index(p) for p in self.moved if p.ndim > 1]
        self.conformal_pos = [i for i, p in enumerate(self.moved) if p.ndim > 1]
        self.reached = torch.zeros(len(self.moved), dtype=torch.bool)
        self.tick = 0
        self.points: list[dict] = []
        self.ticks: list[dict] = []
        self.timing: dict[str, float] = {}

    def _shrink(self) -> torch.Tensor:
        """Move every unfinished tensor toward 0; returns the per-tensor scale factors applied (1 = untouched)."""
        m = self.config.m2o
        var = geometry.variances(self.moved)
        norm = geometry.distance_to_origin(self.moved)
        step = geometry.step_sizes(norm, step_a=m.step_a, step_f=m.step_f)
        factor = torch.where(norm > 0, 1 - step / norm.clamp_min(1e-300), torch.ones_like(norm))
        # Never below the target: var(c·θ) = c²·var(θ), so the last step lands exactly on the target variance.
        floor = torch.sqrt((self.target_var / var.clamp_min(1e-300)).clamp(max=1.0))
        factor = torch.where(var > self.target_var, torch.maximum(factor, floor), torch.ones_like(factor))
        # A tensor counts as arrived once a shrink lands it on its target: repair training may push it back a
        # little each tick (it is then held there by the next shrink), which must not keep the walk going.
        self.reached |= (factor <= floor) | (var <= self.target_var)
        with torch.no_grad():
            torch._foreach_mul_(self.moved, factor.tolist())
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
            torch._foreach_mul_(self.norms, grow)

    def _set_learning_rates(self) -> None:
        policy = self.config.m2o.lr_policy
        if policy == "none" or not self.conformal:
            return
        current = geometry.variances([self.moved[i] for i in self.conformal_pos])
        factors = geometry.angle_conformal_factor(current, self.start_var[self.conformal_pos], policy)
        self.trainer.set_lr_factors(self.conformal, factors.tolist())

    def done(self) -> bool:
        """True when every moved tensor has reached its target variance at least once."""
        return bool(self.reached.all())

    def run(self, *, record) -> None:
        """Walk until :meth:`done` or ``config.m2o.max_ticks``; ``record(tick, loss, phase)`` saves points."""
        m = self.config.m2o
        record(0, float("nan"))
        bar = tqdm(total=m.max_ticks, desc=f"llpf {self.phase}", disable=not self.progress, leave=False)
        failures = 0
        try:
            while self.tick < m.max_ticks and not self.done():
                t = time.perf_counter()
                factor = self._shrink()
                self._compensate(factor)
                self._set_learning_rates()
                t = self._timed("move", t)
                loss, _ = self.trainer.repair()
                self._timed("train", t)
                if not math.isfinite(loss) or loss > self.config.loss_limit:
                    failures += 1
                    if failures >= self.config.max_failures:
                        raise DivergenceError(f"M2O diverged {failures} times (loss {loss:.4g}); lower m2o.step_a")
                self.tick += 1
                bar.update(1)
                ratio = float((geometry.variances(self.moved) / self.start_var.clamp_min(1e-300)).max())
                bar.set_postfix(loss=f"{loss:.4f}", var_ratio=f"{ratio:.3f}")
                record(self.tick, loss)
        finally:
            bar.close()

    def _timed(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.timing[key] = self.timing.get(key, 0.0) + now - start
        return now
