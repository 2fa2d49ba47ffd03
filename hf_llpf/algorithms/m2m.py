"""LLPF_M2M: the tick loop that walks a model from θ_A to θ_B (docs/algorithm.md §2).

One tick: move the active layer groups toward θ_B (clamped step) → variance correction → minimal
training → variance correction → record. Stages become active cumulatively in Follow-Data-Flow order:
the next stage starts when the newest stage has *arrived* (its remaining distance, over the stage as one
vector, at most ``arrival_tol`` of its initial distance), or at hand-set ticks when the config gives a
``schedule``.

Exact endpoints: point 0 is θ_A as loaded, and once every tensor has arrived the last point is θ_B
itself (parameters and buffers, bit for bit). Each tensor's variance target follows its own progress
from Var θ_A[k] to Var θ_B[k] (geometric interpolation), so the path does not end on A's spheres.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from hf_llpf import geometry, sharding
from hf_llpf.algorithms.base import Context, LoopState, Method, RunRecorder, RunSetup
from hf_llpf.algorithms.certify import Verdict
from hf_llpf.algorithms.guard import Advice, check_in_sync
from hf_llpf.algorithms.registry import register
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.progress import ProgressLines, loss_label, progress_enabled
from hf_llpf.run.records import PointRecord, TickRecord
from hf_llpf.stages.matching import schedule_start_ticks

logger = get_logger(__name__)


@dataclass
class TickState(LoopState):
    """M2M's loop state: the common counters plus the active stages and which tensors have landed on θ_B."""

    active: int = 1  # number of active stages (cumulative, FDF)
    stage_starts: list[int] = field(default_factory=lambda: [0])
    landed: list[bool] = field(default_factory=list)  # per tensor: a move has put it exactly on θ_B


@register("m2m")
class M2M(Method):
    """Walk ``ctx.model`` (a copy of θ_A) to θ_B, recording points and checkpoints through ``ctx.recorder``.

    Args:
        ctx: the working model (initialised to θ_A, on the training device), its trainer, the plan, settings.
        target: θ_B (its tensors are the targets; its buffers end the path).
        tick_offset: a phase after an earlier one (cross-sphere) numbers its points after it ...
        prior_points, prior_ticks: ... and continues its rows, starting on its last point.
        reference_a: θ_A for the distance-to-A column when this phase starts elsewhere (after M2O).
    """

    def __init__(
        self,
        ctx: Context,
        target: Endpoint,
        *,
        tick_offset: int = 0,
        prior_points: list[dict] | None = None,
        prior_ticks: list[dict] | None = None,
        reference_a: torch.nn.Module | None = None,
    ):
        super().__init__(ctx)
        model, plan, config = ctx.model, ctx.plan, ctx.config
        self.plan, self.progress, self.recorder = plan, ctx.progress, ctx.recorder
        device = next(model.parameters()).device
        self.names = plan.param_names()
        self.params = [model.get_parameter(n) for n in self.names]
        self.final_state, self.target = self._targets(target, device)
        # θ_A for the distance-to-A column: the given endpoint's own tensors (read only, never moved: no copy on its
        # device), else a copy of the working model's start, which the moves then change.
        if reference_a is None:
            self.start = [p.detach().clone().to(device) for p in self.params]
        else:
            self.start = [reference_a.get_parameter(n).detach().to(device) for n in self.names]
        # Variance correction applies to floating tensors of more than two elements. The paper skips only
        # one-element tensors, but a 2-element tensor's variance sphere at fixed mean is two points (x1 - x2 = ±c):
        # when θ_A and θ_B differ in the sign of x1 - x2, every projection sends the tensor back to θ_A's side and it
        # never arrives (seen on a 2-channel BatchNorm weight of a tiny DLA: 77 % of its distance left at max_ticks).
        self.corrected = [i for i, p in enumerate(self.params) if p.is_floating_point() and p.numel() > 2]
        # The per-tensor maths goes through hf_llpf.sharding: the geometry functions themselves on whole tensors,
        # their sharded equivalents on FSDP2's shards (a subclass then holds θ_B's rows only, laid out as the model's).
        corrected = [self.params[i] for i in self.corrected]
        self.var_a = sharding.variances(corrected)
        self.var_b = sharding.variances(sharding.shards_like(corrected, [self.target[i] for i in self.corrected]))
        self.d0 = sharding.distances(self.params, self.target)  # initial distance per tensor
        stage_of = {n: s.index for s in plan.stages for g in s.groups for n in g.param_names}
        self.stage_index = torch.tensor([stage_of[n] for n in self.names])
        self.num_stages = len(plan.stages)
        self.start_ticks = schedule_start_ticks(plan, config.schedule) if config.schedule else None
        self.state = TickState(points=list(prior_points or []), ticks=list(prior_ticks or []))
        self.state.landed = (self.d0 == 0).tolist()
        self.offset = tick_offset
        self.on_tick = None  # called with each tick's row (experiment trackers)
        self.last_dist = self.d0.clone()  # distances to θ_B after the last tick
        self.finished = False
        # Easy ticks may lengthen the step up to one move of a tensor's whole initial distance; a hand-set
        # schedule keeps the paper's fixed step (its start ticks assume it).
        self.max_step_scale = 1.0 if config.schedule or config.step_r == 0 else max(1.0, 1.0 / config.step_r)

    def _targets(self, target: Endpoint, device: torch.device) -> tuple[dict, list[torch.Tensor]]:
        """θ_B's whole state (what the path ends on, buffers included) and its tensors that the moves aim at: the
        endpoint's own tensors, read only (a copy only where the run's device is another), never a second copy."""
        b_state = target.model.state_dict()
        final = {k: v.detach() for k, v in b_state.items()}
        return final, [b_state[n].detach().to(device) for n in self.names]

    @classmethod
    def for_run(cls, run: RunSetup) -> M2M:
        """A copy of θ_A on the run's device, walking to θ_B; points in θ_A's format."""
        model = copy.deepcopy(run.ea.model).to(run.device)
        ctx = Context(model, run.make_trainer(model), run.plan, run.config, progress=run.progress,
                      certifier=run.certifier)  # fmt: skip
        method = cls(ctx, run.eb, reference_a=run.ea.model)  # θ_A's own tensors as the start: no copy of them
        method.recorder = RunRecorder(run.writer, run.ea, state=method.run_state)
        return method

    # ------------------------------------------------------------------------------------------ set-up
    def _active_mask(self) -> torch.Tensor:
        if not self.config.fdf:
            return torch.ones(len(self.names), dtype=torch.bool)
        if self.start_ticks is not None:
            started = torch.tensor([t <= self.state.tick for t in self.start_ticks])
            return started[self.stage_index]
        return self.stage_index < self.state.active

    # ----------------------------------------------------------------------------------- one tick's steps
    def _move(self, active: list[int], dist: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        # Per-tensor floor of the step: the fixed length step_f and a fraction step_r of the initial distance,
        # so every tensor arrives in a bounded number of ticks (step_a alone only approaches geometrically).
        floor = torch.clamp_min(cfg.step_r * self.d0[active], cfg.step_f) * self.state.step_scale
        # At the largest step the move lands: repair during earlier stages may have pushed a tensor farther from
        # θ_B than its initial distance, which one initial distance would then no longer cover.
        whole = self.max_step_scale > 1 and self.state.step_scale >= self.max_step_scale
        remaining = sharding.move_toward_(
            [self.params[i] for i in active],
            [self.target[i] for i in active],
            step_a=1.0 if whole else cfg.step_a * self.state.step_scale,
            step_f=floor,
        )
        for i, r in zip(active, (remaining == 0).tolist(), strict=True):
            self.state.landed[i] = self.state.landed[i] or r
        dist = dist.clone()
        dist[active] = remaining.to(dist.device)
        return dist  # the active tensors' new distances; the others' as of the last tick

    def _correct(self, dist: torch.Tensor | None = None) -> torch.Tensor:
        """Project every corrected tensor onto its sphere; returns the distances to θ_B it used.

        ``dist`` (the distances just after a move) saves measuring them again; the variance target only
        needs each tensor's progress approximately, its sphere is then hit exactly.
        """
        if dist is None:
            dist = sharding.distances(self.params, self.target)
        progress = torch.where(self.d0 > 0, 1 - dist / self.d0.clamp_min(1e-300), torch.ones_like(dist))
        targets = geometry.interpolate_variance(self.var_a, self.var_b, progress[self.corrected])
        # A tensor already equal to θ_B is on B's sphere: leave its bits alone.
        keep = [j for j, i in enumerate(self.corrected) if dist[i] > 0]
        sharding.project_to_variance_([self.params[self.corrected[j]] for j in keep], targets[keep])
        return dist

    def _stage_remaining(self, dist: torch.Tensor) -> torch.Tensor:
        """Per stage: its remaining distance to θ_B over its initial one, the stage's tensors taken as one vector.

        A tensor that a move has landed exactly on θ_B at least once counts as there whatever training did to it
        since; a stage with nothing to travel (equal in both endpoints) counts as there."""
        landed = torch.tensor(self.state.landed, dtype=torch.bool, device=dist.device)
        rem_sq = torch.where(landed, torch.zeros_like(dist), dist) ** 2
        stage = self.stage_index.to(dist.device)
        remaining = torch.zeros(self.num_stages, dtype=dist.dtype, device=dist.device).index_add_(0, stage, rem_sq)
        initial = torch.zeros_like(remaining).index_add_(0, stage, self.d0.to(dist.device) ** 2)
        return torch.where(initial > 0, (remaining / initial.clamp_min(1e-300)).sqrt(), torch.zeros_like(initial))

    def _arrived(self, dist: torch.Tensor, upto: int) -> bool:
        """Each of the first ``upto`` stages is within ``arrival_tol`` of θ_B (:meth:`_stage_remaining`).

        Measured over the stage, not per tensor, and counting landed tensors as there: both tolerate the drift that
        repair training adds. Per tensor a stage could stall for ever: a 2-element norm or squeeze-excite tensor
        with a tiny initial distance is pulled back by SGD by more than its own step every tick (EfficientNet,
        DLA); over the stage it weighs what it measures. The final snap onto θ_B closes what is left."""
        return bool((self._stage_remaining(dist)[:upto] <= self.config.arrival_tol).all())

    def run(self) -> TickState:
        """Run (or continue) the loop to θ_B; returns the final state."""
        st = self.state
        if self.finished:
            return st
        if st.tick == 0 and not st.points:  # (a phase after M2O starts on M2O's last point: already saved)
            probe = self.certifier.loss(self.model) if self.certifier.enabled else None
            self._record_point(0, float("nan"), self.d0, boundary=True, probe=probe)
            self._checkpoint()
        if self.segments.tick is None:  # a phase after M2O starts on M2O's last point, which is saved
            self.wrote_point(st.tick)
        # The bar counts stages (it advances when a stage starts); the ticks of the current stage are in the
        # postfix: the number of ticks a run takes is not known in advance (max_ticks is only a cap).
        bar = tqdm(
            total=self.num_stages,
            initial=st.active,
            desc="llpf m2m stages",
            unit="stage",
            disable=not progress_enabled(self.progress),
            leave=False,
        )
        lines = ProgressLines("llpf m2m", total=self.num_stages, done=max(st.active - 1, 0), log=logger.info,
                              enabled=self.progress and bar.disable)  # fmt: skip
        try:
            # Checked before each tick, not after: a run resumed from the checkpoint of its arrival tick must
            # finish, not take one more tick (the uninterrupted run stopped there).
            while st.tick < self.config.max_ticks and not self._finished(self.last_dist):
                self._tick()
                last = st.ticks[-1]
                lines.update(max(st.active - 1, 0), {"tick": st.tick, "repair loss": loss_label(last["train_loss"]),
                                                     "distance to θ_B": f"{last['dist_b']:.3g}"})  # fmt: skip
                bar.update(st.active - bar.n)
                bar.set_postfix(
                    stage_ticks=st.tick - self._stage_start_tick(),
                    loss=loss_label(st.ticks[-1]["train_loss"]),
                    dist_b=f"{st.ticks[-1]['dist_b']:.3g}",
                )
        finally:
            bar.close()
        self._finish()
        return st

    def _stage_start_tick(self) -> int:
        """The tick at which the newest active stage started (for the progress bar)."""
        if self.start_ticks is not None:
            return max([t for t in self.start_ticks if t <= self.state.tick], default=0)
        return self.state.stage_starts[-1] if self.state.stage_starts else 0

    def _attempt(self, repair: bool) -> float:
        """One try at the tick: move, correct, and with ``repair`` the minimal training and a second correction;
        returns the repair loss (NaN without repair)."""
        timer, t = self.timer, time.perf_counter()
        self._landed_before = list(self.state.landed)
        active = torch.nonzero(self._active_mask()).flatten().tolist()
        moved = self._move(active, self.last_dist)
        t = timer.lap("move", t)
        self._dist = self._correct(moved)
        t = timer.lap("correct", t)
        if not repair:
            return float("nan")
        loss, _ = self.trainer.repair()
        t = timer.lap("train", t)
        self._dist = self._correct()
        timer.lap("correct", t)
        return loss

    def _recorrect(self) -> None:
        """After the certifier's extra repair: the point is saved after a variance correction."""
        self._dist = self._correct()

    def rolled_back(self) -> None:
        self.state.landed = self._landed_before

    def insert_previous_point(self) -> None:
        """Save the last tick's point, which the model holds again, with that tick's figures."""
        last = self.state.ticks[-1]  # a row leaves out what was not measured (a segment after a point kept above)
        verdict = Verdict(last.get("probe_loss"), last.get("segment_loss"), 0, self.certifier.ceiling)
        self._record_point(self.state.tick, last["train_loss"], self.last_dist, boundary=False, verdict=verdict,
                           sgd_iters=last["sgd_iters"])  # fmt: skip

    def _tick(self) -> torch.Tensor:
        st, cfg = self.state, self.config
        iters_before, rounds_before = self.trainer.iterations, self.trainer.rounds
        loss, verdict = self.certified_tick(
            self._attempt, self._recorrect, name="m2m", advice=Advice(resumable=("step_a", "step_r", "step_f"))
        )
        dist = self.last_dist = self._dist
        st.tick += 1
        self.note_uncertified(verdict, tick=st.tick + self.offset, stage=st.active - 1, phase="m2m")
        boundary = False
        if cfg.fdf and self.start_ticks is None and st.active < self.num_stages and self._arrived(dist, st.active):
            st.active += 1  # FDF: the newest stage has arrived, its successor starts
            st.stage_starts.append(st.tick)
            boundary = True
        elif self.start_ticks is not None:
            started = sum(s <= st.tick for s in self.start_ticks)
            boundary = started > st.active
            st.active = max(st.active, started)
        rounds = self.trainer.rounds - rounds_before
        self._record_tick(loss, self.trainer.iterations - iters_before, dist, verdict, rounds=rounds)
        if boundary or st.tick % cfg.save_every == 0:
            self._record_point(st.tick, loss, dist, boundary=boundary, verdict=verdict)
        if self.trainer.distributed and st.tick % cfg.sync_check_every == 0:
            self._check_in_sync(where=f"at tick {st.tick + self.offset}")
        if st.tick % cfg.checkpoint_every == 0:
            self._checkpoint()
        return dist

    def _finished(self, dist: torch.Tensor) -> bool:
        all_active = self._active_mask().all().item()
        return bool(all_active and self._arrived(dist, self.num_stages))

    def _finish(self) -> None:
        """Snap onto θ_B exactly (parameters and buffers) and record it as the last point."""
        st = self.state
        dist = sharding.distances(self.params, self.target)
        rel = float(self._stage_remaining(dist).max())
        if rel > self.config.arrival_tol:
            logger.warning(
                f"m2m.max_ticks={self.config.max_ticks} reached before every stage arrived (largest remaining "
                f"distance {rel:.1%} of a stage's initial one): the last segment into θ_B is long — check continuity"
            )
        if self.segments.behind(st.tick):  # the last segment must start at a saved point: the last tick's
            self.insert_previous_point()
        device = self.params[0].device
        # The last segment's start, kept only when its midpoint is probed (certify_segments).
        keep = self.certifier.enabled and self.config.certify_segments
        previous = [t.clone() for t in sharding.local_state(self.model)] if keep else []
        self._snap_to_b(device)
        st.tick += 1
        verdict = self._certify_last_segment(previous)
        self._record_tick(float("nan"), 0, torch.zeros_like(dist), verdict)
        self._record_point(st.tick, float("nan"), torch.zeros_like(dist), boundary=True, phase="end", verdict=verdict)
        self._verify_end()
        if self.trainer.distributed:
            self._check_in_sync(where=f"at tick {st.tick + self.offset}")
        self._checkpoint(done=True)

    def _snap_to_b(self, device: torch.device) -> None:
        """Put the model exactly on θ_B, parameters and buffers."""
        self.model.load_state_dict({k: v.to(device) for k, v in self.final_state.items()})

    def _check_in_sync(self, *, where: str) -> None:
        """Every process holds the same weights (the processes hold whole copies: their checksums must agree)."""
        check_in_sync(self.trainer.accelerator, self.params, where=where)

    def _certify_last_segment(self, previous: list[torch.Tensor]) -> Verdict | None:
        """θ_B's probe loss and the last segment's midpoint (the snap onto θ_B cannot be retried: reported)."""
        cert = self.certifier
        if not cert.enabled:
            return None
        t = time.perf_counter()
        segment = cert.midpoint_loss(self.model, previous) if self.config.certify_segments else None
        verdict = Verdict(cert.loss(self.model), segment, 0, cert.ceiling)
        self.timer.lap("probe", t)
        self.note_uncertified(verdict, tick=self.state.tick + self.offset, stage=self.state.active - 1, phase="end")
        return verdict

    def _verify_end(self) -> None:
        state = self.model.state_dict()
        for k, v in self.final_state.items():
            if not torch.equal(state[k].cpu(), v.cpu()):
                raise RuntimeError(f"internal error: the last point differs from θ_B at {k!r}")

    # -------------------------------------------------------------------------------------- bookkeeping
    def _record_tick(
        self, loss: float, iters: int, dist: torch.Tensor, verdict: Verdict | None = None, *, rounds: int = 0
    ) -> None:
        st = self.state
        t = time.perf_counter()
        row = TickRecord(
            tick=st.tick + self.offset,
            stage=st.active - 1,
            train_loss=loss,
            iters=iters,
            sgd_iters=self.trainer.iterations,
            dist_a=sharding.total_distance(self.params, self.start),
            dist_b=float(torch.sqrt((dist**2).sum())),
            probe_loss=verdict.point if verdict else None,
            segment_loss=verdict.segment if verdict else None,
            step_scale=st.step_scale if verdict else None,
            backtracks=st.backtracks if verdict else None,
            repair_rounds=rounds,
        )
        st.ticks.append(row.row())
        if self.on_tick is not None:
            self.on_tick(st.ticks[-1])
        self.timer.lap("record", t)

    def _record_point(
        self,
        tick: int,
        loss: float,
        dist: torch.Tensor,
        *,
        boundary: bool,
        phase: str = "m2m",
        verdict: Verdict | None = None,
        probe: float | None = None,
        sgd_iters: int | None = None,
    ) -> None:
        st = self.state
        t = time.perf_counter()
        rel = self.recorder.point(tick + self.offset, self.model)
        self.wrote_point(tick)
        tick += self.offset
        t = self.timer.lap("write_points", t)
        last = st.ticks[-1] if st.ticks else None
        # The tick's row has just measured the distance to θ_A: a point saved at that tick reuses it.
        dist_a = last["dist_a"] if last and last["tick"] == tick else sharding.total_distance(self.params, self.start)
        row = PointRecord(
            index=len(st.points),
            tick=tick,
            stage=st.active - 1,
            phase="start" if tick == 0 else phase,
            train_loss=loss,
            sgd_iters=self.trainer.iterations if sgd_iters is None else sgd_iters,
            dist_a=dist_a,
            dist_b=float(torch.sqrt((dist**2).sum())),
            stage_boundary=boundary,
            point=rel,
            probe_loss=verdict.point if verdict else probe,
            segment_loss=verdict.segment if verdict else None,
        )
        st.points.append(row.row())
        self.timer.lap("record", t)

    def _checkpoint(self, done: bool = False) -> None:
        # The metrics file follows the checkpoint, not every point: rewriting it per point was quadratic in
        # ticks, and a resume rewrites the points after the checkpoint anyway.
        self.finished = done
        t = time.perf_counter()
        self.recorder.progress(self.state.points, self.state.ticks)
        t = self.timer.lap("write_metrics", t)
        self.recorder.checkpoint()
        self.timer.lap("write_checkpoint", t)

    def extra_state(self) -> dict[str, Any]:
        return {"last_dist": self.last_dist, "done": self.finished}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        self.last_dist = extra["last_dist"]
        self.finished = bool(extra.get("done"))
