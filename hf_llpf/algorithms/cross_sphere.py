"""Cross-sphere connection: M2O from the larger-sphere endpoint onto the other's sphere, then M2M
(docs/algorithm.md §7).

The published path always runs from θ_A to θ_B:

- A on the larger sphere:  A ──M2O──▶ A' ──M2M──▶ B
- B on the larger sphere:  A ──M2M──▶ B' ──(B ──M2O──▶ B', reversed)──▶ B

Each M2O tensor stops exactly at the other endpoint's variance (or stays put when it is already smaller:
M2O never walks outward). Phases are recorded per point (``phase``: ``m2o``, ``m2m``, ``m2o_reversed``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from hf_llpf import geometry
from hf_llpf.algorithms.base import Context, RunRecorder, RunSetup
from hf_llpf.algorithms.certify import Certifier
from hf_llpf.algorithms.m2m import M2M, TickState
from hf_llpf.algorithms.m2o import M2O, moved_parameter_names
from hf_llpf.algorithms.registry import register
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.config import SCHEMA, ConnectConfig
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run import RunWriter
from hf_llpf.run.layout import ASIDE
from hf_llpf.stages import StagePlan

TrainerFactory = Callable[..., RepairTrainer]


def larger_sphere_is_a(a: nn.Module, b: nn.Module, names: list[str]) -> bool:
    """Which endpoint lies on the larger sphere: the sign of the mean log variance ratio over ``names``."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    va, vb = (geometry.variances([p[n] for n in names]) for p in (pa, pb))
    return larger_variances_are_a(va, vb)


def larger_variances_are_a(va: torch.Tensor, vb: torch.Tensor) -> bool:
    """Whether A's weight variances ``va`` lie on the larger sphere than B's ``vb``: the mean log ratio's sign."""
    ok = (va > 0) & (vb > 0)
    return bool(torch.log(va[ok] / vb[ok]).mean() > 0)


@register("cross-sphere")
class CrossSphere:
    """M2O from the larger-sphere endpoint onto the other's sphere, then M2M: one resumable path θ_A → θ_B.

    Args:
        ea, eb: the endpoints. plan, config: the stages and settings.
        make_trainer: ``make_trainer(model, per_tensor_lr=False)`` → the repair trainer of a working model.
        writer: the run directory (main process) or None (other processes: nothing is written).
        device: the training device. progress: show progress bars. on_tick: called with each M2M tick's row.
    """

    def __init__(
        self,
        ea: Endpoint,
        eb: Endpoint,
        plan: StagePlan,
        config: ConnectConfig,
        make_trainer: TrainerFactory,
        *,
        writer: RunWriter | None,
        device: torch.device,
        progress: bool = True,
        on_tick: Callable[[dict], None] | None = None,
        resume: bool = False,
        certifier: Certifier | None = None,
    ):
        self.ea, self.eb, self.plan, self.config, self.make_trainer = ea, eb, plan, config, make_trainer
        self.writer, self.device, self.progress, self.on_tick = writer, device, progress, on_tick
        self.certifier = certifier or Certifier()
        names = moved_parameter_names(plan, ea.model)
        weights = [n for n in names if ea.model.get_parameter(n).ndim > 1]
        self.a_larger = larger_sphere_is_a(ea.model, eb.model, weights)
        self.walker, other = (ea, eb) if self.a_larger else (eb, ea)
        # Where the M2O points go: straight into the path when A walks; aside (to be reversed) when B walks.
        self.aside = None if self.a_larger else writer.phase_folder(ASIDE, resume=resume)
        model = copy.deepcopy(self.walker.model).to(device)
        pw, po = dict(self.walker.model.named_parameters()), dict(other.model.named_parameters())
        target = torch.minimum(geometry.variances([pw[n] for n in names]), geometry.variances([po[n] for n in names]))
        trainer = make_trainer(model, per_tensor_lr=True)
        ctx = Context(model, trainer, plan, config, self._recorder(self.aside), progress, self.certifier)
        self.m2o = M2O(ctx, target, reference_a=ea.model, reference_b=eb.model)
        self.m2m: M2M | None = None
        self.walked: dict[str, torch.Tensor] | None = None  # the M2O phase's last state (where M2M starts or ends)

    @classmethod
    def for_run(cls, run: RunSetup) -> CrossSphere:
        """The cross-sphere run of ``run``'s endpoints."""
        return cls(run.ea, run.eb, run.plan, run.config, run.make_trainer, writer=run.writer, device=run.device,
                   progress=run.progress, resume=run.resume, certifier=run.certifier)  # fmt: skip

    def _recorder(self, points: RunWriter | None):
        return RunRecorder(points or self.writer, self.walker if points is self.aside else self.ea,
                           checkpoints=self.writer, state=self.run_state)  # fmt: skip

    def work(self) -> dict[str, int]:
        """Ticks and SGD iterations of both phases so far (M2M's trainer continues M2O's count when A walks)."""
        walked = self.m2o.work()
        if self.m2m is None:
            return walked
        joined = self.m2m.work()
        sgd = joined["sgd_iters"] if self.a_larger else walked["sgd_iters"] + joined["sgd_iters"]
        return {"ticks": walked["ticks"] + joined["ticks"], "sgd_iters": sgd}

    def run_state(self) -> dict:
        """The run's checkpoint: both phases and the M2O phase's last state."""
        return {"method": self.name, "schema_version": SCHEMA, "done": self.finished, "state": self.state_dict()}

    @property
    def finished(self) -> bool:
        return self.m2m is not None and self.m2m.finished

    def _build_m2m(self) -> None:
        m2o = self.m2o
        if self.walked is None:
            self.walked = {k: v.detach().clone() for k, v in m2o.model.state_dict().items()}
        walked_model = copy.deepcopy(self.walker.model)
        walked_model.load_state_dict(self.walked)
        walked = Endpoint(walked_model.cpu().eval(), self.walker.kind, f"{self.walker.source} (M2O)", None,
                          self.walker.arch)  # fmt: skip
        if self.a_larger:
            model = m2o.model
            model.load_state_dict(self.walked)
            target, offset, prior_points, prior_ticks = self.eb, m2o.tick, m2o.points, m2o.ticks
        else:
            model = copy.deepcopy(self.ea.model).to(self.device)
            target, offset, prior_points, prior_ticks = walked, 0, [], []
        trainer = self.make_trainer(model)
        if self.a_larger:  # SGD iterations count along the path: the M2M part continues the M2O part's count
            trainer.iterations = m2o.trainer.iterations
        ctx = Context(model, trainer, self.plan, self.config, self._recorder(None), self.progress, self.certifier)
        self.m2m = M2M(ctx, target, tick_offset=offset, prior_points=list(prior_points), prior_ticks=list(prior_ticks),
                       reference_a=self.ea.model)  # fmt: skip
        self.m2m.on_tick = self.on_tick

    def run(self) -> TickState:
        """Run (or continue) both phases and assemble the path; returns the M2M phase's final state."""
        if not self.m2o.finished:
            self.m2o.run()
        if self.m2m is None:
            self._build_m2m()
        if not self.m2m.finished:
            self.m2m.run()
        if not self.a_larger:
            self._reversal = (self.m2m.state.points[-1]["tick"], self.m2o.points[-1]["tick"])
            _append_reversed(self.m2m, self.m2o, self.aside, self.writer)
            self.aside.remove()
        self.writer.write_metrics(self.m2m.state.points, self.m2m.state.ticks)
        return self.m2m.state

    @property
    def uncertified(self) -> list[dict]:
        """Both phases' points and segments above the ceiling, with the path's tick numbers."""
        m2o = [dict(u) for u in self.m2o.uncertified]
        if not self.a_larger and getattr(self, "_reversal", None):
            end, last = self._reversal
            m2o = [{**u, "tick": end + last - u["tick"], "phase": "m2o_reversed"} for u in m2o]
        return m2o + (self.m2m.uncertified if self.m2m else [])

    @property
    def backtracks(self) -> int:
        return self.m2o.backtracks + (self.m2m.backtracks if self.m2m else 0)

    @property
    def state(self) -> TickState:
        return self.m2m.state

    @property
    def offset(self) -> int:
        return self.m2m.offset

    @property
    def timing(self) -> dict[str, float]:
        """Seconds per phase, both phases added."""
        return _merge(self.m2m.state.timing if self.m2m else {}, self.m2o.timing)

    def state_dict(self) -> dict:
        """Both phases' states (M2M's once it started) and the M2O phase's last state."""
        return {"m2o": self.m2o.state_dict(), "walked": self.walked,
                "m2m": self.m2m.state_dict() if self.m2m is not None else None}  # fmt: skip

    def load_state_dict(self, ckpt: dict) -> None:
        """Continue from :meth:`state_dict` output: the M2O phase first, then (if it had started) M2M."""
        self.m2o.load_state_dict(ckpt["m2o"])
        self.walked = ckpt.get("walked")
        if ckpt.get("m2m") is not None:
            self._build_m2m()
            self.m2m.load_state_dict(ckpt["m2m"])


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
        rel = writer.adopt_point(m2o_writer, row["point"], tick)
        sgd = spent + (m2o_total - row["sgd_iters"])
        st.points.append(
            {
                **row,
                "index": len(st.points),
                "tick": tick,
                "phase": "m2o_reversed",
                "sgd_iters": sgd,
                "point": rel,
            }
        )
    st.points[-1]["phase"] = "end"
    for row in reversed(m2o.ticks):
        if row["tick"] < last:
            sgd = spent + (m2o_total - row["sgd_iters"])
            st.ticks.append({**row, "tick": end + last - row["tick"], "phase": "m2o_reversed", "sgd_iters": sgd})


def _merge(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in set(a) | set(b) if not math.isnan(a.get(k, 0.0))}
