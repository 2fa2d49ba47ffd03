"""AutoNEB of Draxler et al. 2018 ("Essentially No Barriers in Neural Network Energy Landscape", §3): a nudged
elastic band of pivots between θ_A and θ_B, with pivots inserted where the path rises (docs/baselines.md).

The path is the polygon through pivots p_0 = θ_A, p_1, …, p_P = θ_B. One NEB step moves every interior pivot by
SGD along the nudged force

    F_i = −(∇L(p_i) − (∇L(p_i)·τ_i) τ_i) + k (‖p_{i+1} − p_i‖ − ‖p_i − p_{i−1}‖) τ_i,

the loss gradient with its component along the band removed (so pivots do not slide down into the ends) plus
a spring along the unit tangent τ_i = (p_{i+1} − p_{i−1}) / ‖·‖ that keeps them evenly spaced. A cycle is a
number of NEB steps; after each cycle the loss is measured at a few positions inside every segment (on fixed
training batches, eval mode, BatchNorm statistics recomputed at each position), and a new pivot is inserted at the
highest position of every segment whose interior rises more than ``insert_rise`` above its two pivots — the "auto"
of AutoNEB. The ends never move.

One SGD iteration here is one forward and backward pass on one batch for one pivot, the unit LLPF's repair and
the Bézier curve count in. Only parameters are on the band; floating buffers come from the nearer end, and
BatchNorm statistics are recomputed at every written interior point, as for the Bézier curve.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hf_llpf.algorithms.registry import TrainedMethod, register
from hf_llpf.baselines.bezier import _CurvePoint  # the model called with given parameters
from hf_llpf.baselines.pathdir import PreparedEnds, ResumableBatches, State, TrainedCurve
from hf_llpf.batches import LossFn, default_loss, move_batch
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.recalibration import recalibrate_bn


@dataclass(frozen=True)
class AutoNEBSettings:
    """How the band is trained and refined.

    Attributes:
        iters: SGD iterations in all (one batch for one pivot each), spread evenly over the cycles.
        cycles: NEB cycles; after each one, pivots are inserted where the path rises.
        pivots: interior pivots of the first band, evenly spaced on the straight line.
        max_pivots: interior pivots at most; no insertion beyond.
        lr, momentum: SGD on each pivot's nudged force.
        spring: the spring constant k (0: a plain nudged band with no spacing force).
        insert_rise: a segment whose interior loss rises more than this above both its pivots gets a new pivot.
        segment_samples: interior positions measured per segment after each cycle.
        eval_batches: training batches those measurements use (the same ones every cycle).
        recal_batches: training batches used to recompute the BatchNorm statistics at each written t.
        seed: seed of the batch order.
    """

    iters: int = 500
    cycles: int = 4
    pivots: int = 3
    max_pivots: int = 15
    lr: float = 0.01
    momentum: float = 0.9
    spring: float = 1.0
    insert_rise: float = 0.01
    segment_samples: int = 3
    eval_batches: int = 2
    recal_batches: int = 8
    seed: int = 0

    def problems(self) -> list[str]:
        """What is wrong with the settings, one line each."""
        whole = {"iters": 0, "cycles": 1, "pivots": 1, "segment_samples": 1, "eval_batches": 1, "recal_batches": 1}
        out = [
            f"autoneb {name}={getattr(self, name)!r}: must be a whole number >= {low}"
            for name, low in whole.items()
            if not isinstance(getattr(self, name), int) or getattr(self, name) < low
        ]
        if not isinstance(self.max_pivots, int) or self.max_pivots < self.pivots:
            out.append(f"autoneb max_pivots={self.max_pivots!r}: must be a whole number >= pivots ({self.pivots})")
        if not self.lr > 0:
            out.append(f"autoneb lr={self.lr!r}: must be > 0")
        if not 0 <= self.momentum < 1:
            out.append(f"autoneb momentum={self.momentum!r}: must be in [0, 1)")
        if not self.spring >= 0:
            out.append(f"autoneb spring={self.spring!r}: must be >= 0")
        if not self.insert_rise >= 0:
            out.append(f"autoneb insert_rise={self.insert_rise!r}: must be >= 0")
        return out


def _flat(params: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([params[n].reshape(-1) for n in names])


class ElasticBand:
    """A nudged elastic band between two state dicts, its interior pivots trainable.

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
        # Pivots as flat vectors: the force, tangent and spring are vector operations over all parameters.
        self.pivots = [_flat({n: state_a[n].to(self.device).float() for n in self.names}, self.names),
                       _flat({n: state_b[n].to(self.device).float() for n in self.names}, self.names)]  # fmt: skip
        self.shapes = [(n, p.shape, p.dtype) for n, p in self.model.named_parameters() if n in set(self.names)]
        self.iterations = 0
        self.inserted: list[int] = []  # interior pivots added after each cycle
        self.cycle = 0  # cycles of the fixed budget done

    def state_dict(self) -> dict[str, Any]:
        """What continues the training exactly: the pivots, the iterations, the insertions, the cycles done."""
        return {"pivots": list(self.pivots), "iterations": self.iterations, "inserted": list(self.inserted),
                "cycle": self.cycle}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.pivots = [p.to(self.device) for p in state["pivots"]]
        self.iterations, self.cycle = int(state["iterations"]), int(state["cycle"])
        self.inserted = [int(n) for n in state["inserted"]]

    def interior(self, count: int) -> None:
        """Put ``count`` interior pivots evenly on the straight line (the first band)."""
        a, b = self.pivots[0], self.pivots[-1]
        self.pivots = [a, *[torch.lerp(a, b, (i + 1) / (count + 1)) for i in range(count)], b]

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, at = {}, 0
        for name, shape, dtype in self.shapes:
            size = math.prod(shape)
            out[name] = flat[at : at + size].view(shape).to(dtype)  # pivots are fp32; the model keeps its dtype
            at += size
        return out

    def _loss(self, flat: torch.Tensor, batch: Any, loss_fn: LossFn) -> torch.Tensor:
        return loss_fn(_CurvePoint(self.model, self._params(flat)), batch)

    def _force(self, i: int, grad: torch.Tensor, spring: float) -> torch.Tensor:
        """The descent direction of pivot ``i``: minus the gradient's component across the band, plus the spring."""
        prev, here, nxt = self.pivots[i - 1], self.pivots[i], self.pivots[i + 1]
        tangent = nxt - prev
        tangent = tangent / tangent.norm().clamp_min(1e-12)
        across = grad - (grad @ tangent) * tangent
        stretch = (nxt - here).norm() - (here - prev).norm()
        return -across + spring * stretch * tangent

    def step_cycle(
        self, batches: Iterator[Any], steps: int, settings: AutoNEBSettings, loss_fn: LossFn
    ) -> list[float]:
        """``steps`` NEB steps over every interior pivot (momentum SGD on the nudged force); returns the losses."""
        velocity = [torch.zeros_like(p) for p in self.pivots]
        losses = []
        self.model.train()
        for _ in range(steps):
            forces = []
            for i in range(1, len(self.pivots) - 1):
                here = self.pivots[i].detach().requires_grad_(True)
                loss = self._loss(here, move_batch(next(batches), self.device), loss_fn)
                (grad,) = torch.autograd.grad(loss, here)
                forces.append(self._force(i, grad.detach(), settings.spring))
                losses.append(float(loss.detach()))
                self.iterations += 1
            # Every pivot moves on forces measured at the same band (a synchronous step, as NEB is defined).
            for i, force in enumerate(forces, start=1):
                velocity[i] = settings.momentum * velocity[i] + force
                self.pivots[i] = self.pivots[i] + settings.lr * velocity[i]
        self.model.eval()
        return losses

    @torch.no_grad()
    def _eval_loss(self, flat: torch.Tensor, batches: list, loss_fn: LossFn) -> float:
        """The eval-mode loss at ``flat`` on ``batches`` (already on the band's device), its BatchNorm statistics
        recomputed on those batches first: the working copy's running statistics mix every pivot's training
        batches, so without this a BatchNorm network's measured rise would be the statistics', not the band's."""
        point = _CurvePoint(self.model, self._params(flat))
        recalibrate_bn(point, batches)
        self.model.eval()
        return sum(float(loss_fn(point, b)) for b in batches) / len(batches)

    @torch.no_grad()
    def insert(self, batches: list, settings: AutoNEBSettings, loss_fn: LossFn) -> int:
        """Insert a pivot at the highest measured position of every segment that rises more than
        ``insert_rise`` above both its pivots (at most up to ``max_pivots``); returns how many were inserted."""
        self.model.eval()
        batches = [move_batch(b, self.device) for b in batches]  # once: every position is measured on them
        at_pivots = [self._eval_loss(p, batches, loss_fn) for p in self.pivots]
        fractions = [(j + 1) / (settings.segment_samples + 1) for j in range(settings.segment_samples)]
        new: list[tuple[int, torch.Tensor]] = []
        for i in range(len(self.pivots) - 1):
            inside = [(self._eval_loss(torch.lerp(self.pivots[i], self.pivots[i + 1], f), batches, loss_fn), f)
                      for f in fractions]  # fmt: skip
            top, f = max(inside)
            if top - max(at_pivots[i], at_pivots[i + 1]) > settings.insert_rise:
                new.append((i, torch.lerp(self.pivots[i], self.pivots[i + 1], f)))
        room = settings.max_pivots - (len(self.pivots) - 2)
        new = sorted(new, key=lambda item: item[0])[: max(room, 0)]
        for offset, (i, pivot) in enumerate(new):
            self.pivots.insert(i + 1 + offset, pivot)
        self.inserted.append(len(new))
        return len(new)

    def train(
        self, batches: Iterator[Any], eval_batches: list, settings: AutoNEBSettings, *, loss_fn: LossFn | None = None
    ) -> list[float]:
        """The AutoNEB loop: ``settings.cycles`` cycles of NEB steps, each followed by pivot insertion, spending
        at most ``settings.iters`` SGD iterations in all; returns the training losses."""
        losses: list[float] = []
        while (cycle := self.train_cycle(batches, eval_batches, settings, loss_fn=loss_fn)) is not None:
            losses += cycle
        return losses

    def train_cycle(self, batches: Iterator[Any], eval_batches: list, settings: AutoNEBSettings, *,
                    loss_fn: LossFn | None = None) -> list[float] | None:  # fmt: skip
        """The next cycle of :meth:`train` (the first places the pivots; every one but the last ends by inserting
        pivots); returns its losses, or ``None`` once every cycle is done."""
        if self.cycle >= settings.cycles:
            return None
        loss_fn = loss_fn or default_loss
        if self.cycle == 0:
            self.interior(settings.pivots)
        left = settings.iters - self.iterations
        interior = len(self.pivots) - 2
        steps = left // (interior * (settings.cycles - self.cycle))
        losses = self.step_cycle(batches, steps, settings, loss_fn)
        if self.cycle < settings.cycles - 1:
            self.insert(eval_batches, settings, loss_fn)
        self.cycle += 1
        return losses

    def train_round(self, batches: Iterator[Any], eval_batches: list, iters: int, settings: AutoNEBSettings, *,
                    loss_fn: LossFn | None = None) -> list[float]:  # fmt: skip
        """One round of a certified run (docs/baselines.md, "Certified baselines"): pivots inserted where the band
        rises (from the second round on; the first places ``settings.pivots`` on the straight line), then as many
        NEB steps as ``iters`` SGD iterations pay for (one per interior pivot each; none when they pay for less
        than one step). Returns the training losses."""
        loss_fn = loss_fn or default_loss
        if len(self.pivots) == 2:
            self.interior(settings.pivots)
        else:
            self.insert(eval_batches, settings, loss_fn)
        return self.step_cycle(batches, iters // (len(self.pivots) - 2), settings, loss_fn)

    def positions(self) -> list[float]:
        """Each pivot's normalised position along the band (cumulative L2 length / total length)."""
        steps = [float((b - a).norm()) for a, b in zip(self.pivots, self.pivots[1:])]
        total = sum(steps) or 1.0
        out, acc = [0.0], 0.0
        for s in steps:
            acc += s
            out.append(acc / total)
        out[-1] = 1.0
        return out

    def params_at(self, t: float) -> torch.Tensor:
        """The band at normalised position ``t`` (linear between the two pivots around it)."""
        pos = self.positions()
        i = max(j for j in range(len(pos) - 1) if pos[j] <= t) if t < 1.0 else len(pos) - 2
        width = pos[i + 1] - pos[i]
        frac = 0.0 if width == 0 else (t - pos[i]) / width
        return torch.lerp(self.pivots[i], self.pivots[i + 1], min(max(frac, 0.0), 1.0))

    @torch.no_grad()
    def state_at(self, t: float, recal_data: Any = None) -> State:
        """The point at normalised position ``t`` as a state dict on the CPU; interior points get their BatchNorm
        statistics recomputed on ``recal_data`` (when given); t=0 and t=1 are θ_A and θ_B bit for bit."""
        if t == 0.0 or t == 1.0:
            return {k: v.clone() for k, v in (self.state_a if t == 0.0 else self.state_b).items()}
        params = self._params(self.params_at(t))
        near = self.state_b if t >= 0.5 else self.state_a
        seen: set[int] = set()
        for name, dst in self.model.state_dict().items():
            if dst.data_ptr() in seen:
                continue  # a tied alias: it shares storage with the tensor already written
            seen.add(dst.data_ptr())
            dst.copy_(params[name].to(dst.dtype) if name in params else near[name])
        if recal_data is not None:
            recalibrate_bn(self.model, recal_data)
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


def check(settings: AutoNEBSettings) -> None:
    """Refuse invalid settings, every problem at once.

    Raises:
        ConfigError: naming each field, its value and what is allowed.
    """
    problems = settings.problems()
    if problems:
        raise ConfigError(problems)


@register("autoneb")
class AutoNEB(TrainedMethod):
    """The elastic band, trained on the training data; its points recalibrated."""

    settings = AutoNEBSettings
    rank = 40

    @classmethod
    def round_problems(cls, rounds: Any, settings: AutoNEBSettings) -> list[str]:
        if rounds.round_iters >= settings.max_pivots:
            return []
        return [
            f"certify round_iters={rounds.round_iters}: must be >= autoneb max_pivots ({settings.max_pivots}), so "
            "that every round moves each pivot at least once"
        ]

    def build(self, prepared: PreparedEnds) -> TrainedCurve:
        e, settings = prepared, prepared.settings
        band, stream = ElasticBand(e.ea.model, e.sa, e.sb, device=e.device), ResumableBatches(e.loader)
        eval_batches = e.batches[: settings.eval_batches]

        def load(state: dict) -> None:
            band.load_state_dict(state["curve"])
            stream.load_state_dict(state["batches"])

        return TrainedCurve(
            state_at=lambda t: band.state_at(t, e.batches),
            train_budget=lambda: band.train(stream, eval_batches, settings, loss_fn=e.loss_fn),
            train_round=lambda n: band.train_round(stream, eval_batches, n, settings, loss_fn=e.loss_fn),
            iterations=lambda: band.iterations,
            summary=lambda: {"pivots": len(band.pivots) - 2, "inserted_per_cycle": band.inserted},
            budget_chunk=lambda: band.train_cycle(stream, eval_batches, settings, loss_fn=e.loss_fn),
            state_dict=lambda: {"curve": band.state_dict(), "batches": stream.state_dict()},
            load_state_dict=load,
        )


__all__ = ["AutoNEB", "AutoNEBSettings", "ElasticBand", "check"]
