"""The quadratic Bézier curve of Garipov et al. 2018 ("Loss Surfaces, Mode Connectivity, and Fast Ensembling
of DNNs", §3): ends fixed at θ_A and θ_B, one control point θ_C trained (docs/baselines.md).

    φ(t) = (1−t)²·θ_A + 2t(1−t)·θ_C + t²·θ_B,    t ∈ [0, 1]

θ_C starts at the midpoint (θ_A + θ_B)/2 (the curve is then the straight line) and is trained with SGD on the
loss at a fresh t ~ U(0, 1) for every batch; the gradient flows to θ_C only (the ends are constants). The
model runs in train mode during training, so BatchNorm normalises with batch statistics; at every written
interior t the running statistics are recomputed on training batches (the paper's §3.4 practice), the ends
keep their own. Only parameters are on the curve; other floating buffers come from the nearer end.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from hf_llpf.algorithms.registry import TrainedMethod, register
from hf_llpf.baselines.pathdir import CHUNK, PreparedEnds, ResumableBatches, State, TrainedCurve
from hf_llpf.batches import LossFn, default_loss, move_batch
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.recalibration import recalibrate_bn
from hf_llpf.evaluation.scoring import score


@dataclass(frozen=True)
class BezierSettings:
    """How the control point is trained.

    Attributes:
        iters: SGD iterations (one batch, one random t each); 0 leaves θ_C at the midpoint (the linear path).
        lr, momentum, weight_decay: SGD on θ_C (weight decay acts on θ_C only).
        recal_batches: training batches used to recompute the BatchNorm statistics at each written t.
        seed: seed of the random t's.
    """

    iters: int = 500
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    recal_batches: int = 8
    seed: int = 0

    def problems(self) -> list[str]:
        """What is wrong with the settings, one line each."""
        out = []
        if not isinstance(self.iters, int) or self.iters < 0:
            out.append(f"bezier iters={self.iters!r}: must be a whole number >= 0")
        if not self.lr > 0:
            out.append(f"bezier lr={self.lr!r}: must be > 0")
        if not 0 <= self.momentum < 1:
            out.append(f"bezier momentum={self.momentum!r}: must be in [0, 1)")
        if self.weight_decay < 0:
            out.append(f"bezier weight_decay={self.weight_decay!r}: must be >= 0")
        if not isinstance(self.recal_batches, int) or self.recal_batches < 1:
            out.append(f"bezier recal_batches={self.recal_batches!r}: must be a whole number >= 1")
        return out


def coefficients(t: float) -> tuple[float, float, float]:
    """The Bernstein weights (θ_A, θ_C, θ_B) of the quadratic Bézier curve at ``t``."""
    return (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t


class _CurvePoint(nn.Module):
    """``model`` called with the curve's parameters at t (a graph through θ_C), its buffers its own."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.params = model, params

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.model, self.params, args, kwargs, strict=False)


class BezierCurve:
    """A quadratic Bézier curve between two state dicts, its control point trainable.

    Args:
        model: a module of the architecture (a copy is used; its tensors are overwritten).
        state_a, state_b: the ends θ_A and θ_B.
        device: where the training runs.
    """

    def __init__(self, model: nn.Module, state_a: State, state_b: State, *, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device)
        self.names = [n for n, p in self.model.named_parameters() if p.is_floating_point()]
        self.state_a, self.state_b = state_a, state_b
        self.a = {n: state_a[n].to(self.device) for n in self.names}
        self.b = {n: state_b[n].to(self.device) for n in self.names}
        # The midpoint: with θ_C there the curve is the straight line (2t(1−t)/2 + t² = t).
        self.control = {n: nn.Parameter((self.a[n] + self.b[n]) / 2) for n in self.names}
        self.iterations = 0
        self._optimizer: torch.optim.Optimizer | None = None  # made by the first train call, kept across rounds
        self._gen: torch.Generator | None = None

    def params_at(self, t: float) -> dict[str, torch.Tensor]:
        """φ(t) for every parameter (differentiable in θ_C)."""
        ca, cc, cb = coefficients(t)
        return {n: ca * self.a[n] + cc * self.control[n] + cb * self.b[n] for n in self.names}

    def train(
        self,
        batches: Iterator[Any],
        settings: BezierSettings,
        *,
        loss_fn: LossFn | None = None,
        iters: int | None = None,
    ) -> list[float]:
        """``iters`` (default ``settings.iters``) SGD steps on θ_C, each on one batch at a fresh t ~ U(0, 1); returns
        the losses. Later calls go on where the last one stopped (the same optimizer, momentum and t's): training in
        rounds is the same training as in one call."""
        loss_fn = loss_fn or default_loss
        optimizer, gen = self._start(settings)
        self.model.train()
        losses = []
        for _ in range(settings.iters if iters is None else iters):
            t = float(torch.rand((), generator=gen))
            batch = move_batch(next(batches), self.device)
            loss = loss_fn(_CurvePoint(self.model, self.params_at(t)), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            self.iterations += 1
        self.model.eval()
        return losses

    def _start(self, settings: BezierSettings) -> tuple[torch.optim.Optimizer, torch.Generator]:
        """The optimizer and the t's generator, made by the first training call and kept across rounds."""
        if self._optimizer is None:
            self._optimizer = torch.optim.SGD(list(self.control.values()), lr=settings.lr, momentum=settings.momentum,
                                              weight_decay=settings.weight_decay)  # fmt: skip
            self._gen = torch.Generator().manual_seed(settings.seed)
        return self._optimizer, self._gen

    def state_dict(self) -> dict[str, Any]:
        """What continues the training exactly: θ_C, the iterations, the optimizer's state, the t's generator."""
        return {
            "control": {n: p.detach() for n, p in self.control.items()},
            "iterations": self.iterations,
            "optimizer": self._optimizer.state_dict() if self._optimizer is not None else None,
            "generator": self._gen.get_state() if self._gen is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any], settings: BezierSettings) -> None:
        """Continue from :meth:`state_dict` (the next training call goes on as the saved run's would)."""
        with torch.no_grad():
            for name, param in self.control.items():
                param.copy_(state["control"][name].to(param.device))
        self.iterations = int(state["iterations"])
        if state.get("optimizer") is not None:
            optimizer, gen = self._start(settings)
            optimizer.load_state_dict(state["optimizer"])
            gen.set_state(state["generator"])

    @torch.no_grad()
    def state_at(self, t: float, recal_data: Any = None, *, recal_batches: int | None = None) -> State:
        """The point φ(t) as a state dict on the CPU; interior t get their BatchNorm statistics recomputed on
        ``recal_data`` (when given); t=0 and t=1 are θ_A and θ_B bit for bit."""
        if t == 0.0 or t == 1.0:
            return {k: v.clone() for k, v in (self.state_a if t == 0.0 else self.state_b).items()}
        params = self.params_at(t)
        near = self.state_b if t >= 0.5 else self.state_a
        seen: set[int] = set()
        for name, dst in self.model.state_dict().items():
            if dst.data_ptr() in seen:
                continue  # a tied alias: it shares storage with the tensor already written
            seen.add(dst.data_ptr())
            dst.copy_(params[name] if name in params else near[name])
        if recal_data is not None:
            recalibrate_bn(self.model, recal_data, max_batches=recal_batches)
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def loss_at(self, t: float, batches: Any, *, recal_data: Any = None, loss_fn: LossFn | None = None) -> float:
        """Eval-mode loss of φ(t) on ``batches`` (statistics recomputed on ``recal_data`` first, when given)."""
        self.state_at(t, recal_data)  # loads φ(t) into self.model
        self.model.eval()
        return score(self.model, batches, loss_fn=loss_fn)["loss"]


def check(settings: BezierSettings) -> None:
    """Refuse invalid settings, every problem at once.

    Raises:
        ConfigError: naming each field, its value and what is allowed.
    """
    problems = settings.problems()
    if problems:
        raise ConfigError(problems)


@register("bezier")
class Bezier(TrainedMethod):
    """The quadratic Bézier curve, its control point trained on the training data; its points recalibrated."""

    settings = BezierSettings
    rank = 30

    def build(self, prepared: PreparedEnds) -> TrainedCurve:
        e, settings = prepared, prepared.settings
        curve, stream = BezierCurve(e.ea.model, e.sa, e.sb, device=e.device), ResumableBatches(e.loader)

        def chunk() -> list[float] | None:  # the fixed budget in chunks: the same training as in one call
            left = settings.iters - curve.iterations
            return curve.train(stream, settings, loss_fn=e.loss_fn, iters=min(left, CHUNK)) if left > 0 else None

        def load(state: dict) -> None:
            curve.load_state_dict(state["curve"], settings)
            stream.load_state_dict(state["batches"])

        return TrainedCurve(
            state_at=lambda t: curve.state_at(t, e.batches),
            train_budget=lambda: curve.train(stream, settings, loss_fn=e.loss_fn),
            train_round=lambda n: curve.train(stream, settings, loss_fn=e.loss_fn, iters=n),
            iterations=lambda: curve.iterations,
            summary=dict,
            budget_chunk=chunk,
            state_dict=lambda: {"curve": curve.state_dict(), "batches": stream.state_dict()},
            load_state_dict=load,
        )


__all__ = ["Bezier", "BezierCurve", "BezierSettings", "check", "coefficients"]
