"""The straight line θ(t) = (1−t)·θ_A + t·θ_B as a path of saved points (docs/algorithm.md §10.4).

``method: auto`` takes it when the linear interpolation already stays under the loss ceiling at every probed t
(typical for two fine-tunes of one pretrained model): no walk can beat a certified straight line on cost, and a
walk could be worse. ``method: linear`` writes it in any case (its certification is reported as measured).

:class:`LinearPath` is the registered method ``linear``: connect runs :class:`Linear` (``LINEAR_POINTS`` certified
points), ``compare`` and :func:`hf_llpf.build_baseline` write :func:`lerp_state` at fixed t.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from hf_llpf.algorithms.base import Context, LoopState, Method, RunRecorder, RunSetup
from hf_llpf.algorithms.certify import Certifier, Verdict
from hf_llpf.algorithms.registry import CurveMethod, register
from hf_llpf.evaluation.interpolation import load_point
from hf_llpf.geometry import total_distance
from hf_llpf.run.records import PointRecord, TickRecord

# Points of the written path, ends included; the probe also measures the midpoint of each segment.
LINEAR_POINTS = 9


def probe_line(model: torch.nn.Module, a: dict, b: dict, certifier: Certifier, *, points: int = LINEAR_POINTS):
    """Probe losses at ``t = k/(2(points−1))``, the saved points and every segment's midpoint (ends excluded).

    Returns ``{j: loss}`` for ``t = j/(2(points−1))``, ``j = 1 … 2(points−1)−1``; the model is left holding
    the last probed point (reload before use).
    """
    n = 2 * (points - 1)
    out = {}
    for j in range(1, n):
        load_point(model, a, b, j / n)
        out[j] = certifier.loss(model)
    return out


def straight_line_certified(ea_model: torch.nn.Module, eb_model: torch.nn.Module, certifier: Certifier,
                            device: Any) -> tuple[bool, float, float]:  # fmt: skip
    """Whether the straight line stays under the ceiling at every probed t.

    The t of :func:`probe_line` are probed from the middle out (where a barrier peaks) and the first one above
    the ceiling ends the check, its probe stopped early (:meth:`ProbeSet.loss`). Returns (certified, loss, t):
    the largest probe loss and its t when certified, else a lower bound of the loss at the first t found above.
    """
    model = copy.deepcopy(ea_model).to(device)
    a = {k: v.detach().to(device) for k, v in ea_model.state_dict().items()}
    b = {k: v.detach().to(device) for k, v in eb_model.state_dict().items()}
    n, top = 2 * (LINEAR_POINTS - 1), (-math.inf, 0.5)
    for j in sorted(range(1, n), key=lambda j: (abs(2 * j - n), j)):
        load_point(model, a, b, j / n)
        loss = certifier.loss(model, above=certifier.ceiling)
        if not loss <= certifier.ceiling:
            return False, loss, j / n
        top = max(top, (loss, j / n))
    return True, *top


class Linear(Method):
    """Write the straight line from θ_A to θ_B as ``LINEAR_POINTS`` points, certified point by point."""

    def __init__(self, ctx: Context, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]):
        super().__init__(ctx)
        self.a, self.b = a, b
        self.recorder = ctx.recorder
        self.state = LoopState()
        self.finished = False

    @classmethod
    def for_run(cls, run: RunSetup) -> Linear:
        """A model of θ_A's architecture on the run's device; no repair training (the trainer is unused)."""
        model = copy.deepcopy(run.ea.model).to(run.device)
        a = {k: v.detach().to(run.device) for k, v in run.ea.model.state_dict().items()}
        b = {k: v.detach().to(run.device) for k, v in run.eb.model.state_dict().items()}
        ctx = Context(model, run.make_trainer(model), run.plan, run.config, progress=run.progress,
                      certifier=run.certifier)  # fmt: skip
        method = cls(ctx, a, b)
        method.recorder = RunRecorder(run.writer, run.ea, state=method.run_state)
        return method

    def run(self) -> LoopState:
        """Write every point (a resumed run writes them again: it is cheap and the result is the same)."""
        if self.finished:
            return self.state
        self.state = LoopState()
        names = [n for n, p in self.model.named_parameters() if p.is_floating_point()]
        a_params = [self.a[n] for n in names]
        last = LINEAR_POINTS - 1
        probes = probe_line(self.model, self.a, self.b, self.certifier) if self.certifier.enabled else {}
        for k in range(LINEAR_POINTS):
            t = k / last
            load_point(self.model, self.a, self.b, t)
            verdict = self._verdict(probes, k, last)
            phase = "start" if k == 0 else "end" if k == last else "linear"
            self.note_uncertified(verdict, tick=k, stage=-1, phase=phase)
            here = [self.model.get_parameter(n).detach() for n in names]
            dist_a = total_distance(a_params, here)
            dist_b = total_distance([self.b[n] for n in names], here)
            probe, segment = (verdict.point, verdict.segment) if verdict else (None, None)
            self.state.ticks.append(TickRecord(k, -1, float("nan"), 0, 0, dist_a, dist_b, "linear", probe,
                                               segment).row())  # fmt: skip
            rel = self.recorder.point(k, self.model)
            row = PointRecord(len(self.state.points), k, -1, phase, float("nan"), 0, dist_a, dist_b, k in (0, last),
                              rel, probe, segment)  # fmt: skip
            self.state.points.append(row.row())
            self.state.tick = k
        self._checkpoint(done=True)
        return self.state

    def _verdict(self, probes: dict[int, float], k: int, last: int) -> Verdict | None:
        if not self.certifier.enabled:
            return None
        ends = self.certifier.endpoint_losses
        point = ends[0] if k == 0 else ends[-1] if k == last else probes[2 * k]
        segment = probes[2 * k - 1] if k > 0 and self.config.certify_segments else None
        return Verdict(point, segment, 0, self.certifier.ceiling)


def lerp_state(t: float, state_a: dict, state_b: dict) -> dict:
    """θ(t) = (1−t)·θ_A + t·θ_B per tensor (``torch.lerp``; ends exact; integer buffers from the nearer end)."""
    out = {}
    for name, a in state_a.items():
        b = state_b[name]
        if t == 0.0 or t == 1.0 or not a.is_floating_point():
            out[name] = (b if t >= 0.5 else a).clone()
        else:
            out[name] = torch.lerp(a, b.to(a.dtype), t)
    return out


@register("linear")
class LinearPath(CurveMethod):
    """The straight line: :class:`Linear` under connect, :func:`lerp_state` at fixed t as a baseline."""

    engine = Linear
    rank = 10

    def build(self, prepared: Any):
        return lambda t: lerp_state(t, prepared.sa, prepared.sb)
