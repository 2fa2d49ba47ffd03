"""What every path method shares: the resumable loop state, the recorder, the timer and the certified tick.

A method (M2M, M2O, and later the baselines) is a class that is built on a :class:`Context`, runs with
:meth:`Method.run`, and can be checkpointed and resumed with :meth:`Method.state_dict` /
:meth:`Method.load_state_dict`. It never touches the filesystem: points and progress go to its
:class:`Recorder`, which the orchestrator creates (a :class:`RunRecorder` on the main process, a
:class:`NullRecorder` elsewhere, which writes nothing).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from accelerate.logging import get_logger
from torch import nn

from hf_llpf.algorithms.certify import Certifier, Verdict
from hf_llpf.algorithms.guard import Advice, DivergenceGuard, diverged
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.algorithms.segments import SegmentStart
from hf_llpf.config import SCHEMA, ConnectConfig
from hf_llpf.errors import DivergenceError
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run import RunWriter, point_name
from hf_llpf.run.seeding import rng_state, set_rng_state
from hf_llpf.run.storage import round_to_storage
from hf_llpf.stages import StagePlan

logger = get_logger(__name__)


@dataclass
class LoopState:
    """The part of a method's state that is plain data (JSON in the checkpoint): counters, rows, timings."""

    tick: int = 0
    step_scale: float = 1.0  # halved by the divergence guard
    failures: int = 0  # failed attempts in the current stretch
    points: list[dict] = field(default_factory=list)
    ticks: list[dict] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    backtracks: int = 0  # moves retried shorter because a point or segment was above the ceiling
    uncertified: list[dict] = field(default_factory=list)  # points/segments kept above the ceiling
    lr_scale: float = 1.0  # the repair's learning rate over config.lr (halved when a repair budget ran out)


class Recorder(Protocol):
    """Where a method's points and progress go."""

    def point(self, tick: int, model: nn.Module) -> str:
        """Save ``model`` as the point of ``tick``; returns its folder relative to the run directory."""

    def progress(self, points: list[dict], ticks: list[dict]) -> None:
        """Record the rows so far (with each checkpoint)."""

    def checkpoint(self) -> None:
        """Save the run's resumable state (the orchestrator knows what it is made of)."""


class NullRecorder:
    """What a non-main process records with: nothing (the main process writes the same path)."""

    def point(self, tick: int, model: nn.Module) -> str:
        return point_name(tick)

    def progress(self, points: list[dict], ticks: list[dict]) -> None:
        pass

    def checkpoint(self) -> None:
        pass


class RunRecorder:
    """Records into a run directory: points in ``endpoint``'s format; checkpoints of ``state()``.

    Args:
        points: where the points go (the run directory, or an aside one for a phase published reversed).
        endpoint: the endpoint whose format points are saved in.
        checkpoints: where progress and checkpoints go (the run directory).
        state: returns the run's whole resumable state (set by the orchestrator of the run).
    """

    def __init__(
        self, points: RunWriter, endpoint: Endpoint, *, checkpoints: RunWriter | None = None, state=None
    ) -> None:
        self.points_writer, self.endpoint = points, endpoint
        self.writer = checkpoints or points
        self.state: Callable[[], dict] | None = state

    def point(self, tick: int, model: nn.Module) -> str:
        # Rounded in place first (a no-op unless point_dtype narrows it, and on every process, a NullWriter's
        # included), so the working model goes on from exactly the point that is stored.
        round_to_storage(model, self.points_writer.storage.dtype)
        return self.points_writer.write_point(tick, cpu_copy(model), self.endpoint)

    def progress(self, points: list[dict], ticks: list[dict]) -> None:
        self.points_writer.write_metrics(points, ticks)

    def checkpoint(self) -> None:
        if self.state is not None:
            self.writer.save_checkpoint(self.state())


def cpu_copy(model: nn.Module) -> nn.Module:
    """The model itself when it lives on the CPU, else a CPU copy for writing."""
    p = next(model.parameters(), None)
    return model if p is None or p.device.type == "cpu" else copy.deepcopy(model).cpu()


@dataclass
class Context:
    """What a method runs on: the working model, its repair trainer, the plan, the settings and the recorder."""

    model: nn.Module
    trainer: RepairTrainer
    plan: StagePlan
    config: ConnectConfig
    recorder: Recorder = field(default_factory=NullRecorder)
    progress: bool = True
    certifier: Certifier = field(default_factory=Certifier)  # disabled unless the run has a ceiling


@dataclass
class RunSetup:
    """What the orchestrator hands a method to build itself for a run (:meth:`Method.for_run`)."""

    ea: Endpoint  # θ_A (the start; the endpoint whose format points are saved in)
    eb: Endpoint | None  # θ_B (None: a walk to the origin)
    plan: StagePlan
    config: ConnectConfig
    make_trainer: Callable[..., RepairTrainer]  # make_trainer(model, per_tensor_lr=False)
    writer: Any  # RunWriter on the main process, NullWriter elsewhere
    device: torch.device
    progress: bool = True
    resume: bool = False
    certifier: Certifier = field(default_factory=Certifier)


class Timer:
    """Accumulates seconds per phase into a state's ``timing`` (``--profile``)."""

    def __init__(self, state: LoopState):
        self.state = state

    def lap(self, key: str, start: float) -> float:
        """Add the time since ``start`` to ``key``; returns now (the next phase's start)."""
        now = time.perf_counter()
        self.state.timing[key] = self.state.timing.get(key, 0.0) + now - start
        return now


MIN_LR_SCALE = 1 / 8  # the repair's rate goes down to config.lr / 8 at most


class Method:
    """Base of the path methods: a resumable loop on a :class:`Context`.

    Subclasses set ``self.state`` (a :class:`LoopState` subclass) and implement :meth:`run`; what else a
    resume needs goes into :meth:`extra_state` / :meth:`load_extra_state`.
    """

    name = "method"  # set by @register
    state: LoopState
    finished: bool = False
    offset: int = 0  # the tick this method's ticks are numbered from
    on_tick: Callable[[dict], None] | None = None  # called with each tick's row (experiment trackers)

    max_step_scale: float = 1.0  # how far easy ticks may lengthen the step (the certifier's trust region)

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.model, self.trainer, self.config = ctx.model, ctx.trainer, ctx.config
        self.certifier = ctx.certifier
        self.guard = DivergenceGuard(ctx.model, ctx.trainer)
        tracking = self.certifier.enabled and self.config.certify_segments and self.config.save_every > 1
        self.segments = SegmentStart(tracking)

    @property
    def uncertified(self) -> list[dict]:
        """Points and segments kept above the ceiling (tick, stage, phase, what, loss)."""
        return self.state.uncertified

    @property
    def backtracks(self) -> int:
        """Moves retried shorter so far."""
        return self.state.backtracks

    def rolled_back(self) -> None:
        """Undo what an attempt changed outside the model and optimizer (called after each rollback)."""

    def insert_previous_point(self) -> None:  # pragma: no cover - abstract
        """Save the model, which holds the previous tick's point, as a point of the path (``save_every`` > 1)."""
        raise NotImplementedError

    def wrote_point(self, tick: int) -> None:
        """The model, as just written, is the path's point of this method's ``tick``: segments start there."""
        self.segments.saved(self.model, tick)

    def _checkpoint(self, done: bool = False) -> None:
        """Record the rows so far and write the resume checkpoint (``done``: the method has finished)."""
        self.finished = done
        self.recorder.progress(self.state.points, self.state.ticks)
        self.recorder.checkpoint()

    def certified_tick(
        self, attempt: Callable[[bool], float], after_repair: Callable[[], None], *, name: str, advice: Advice
    ) -> tuple[float, Verdict | None]:
        """Run ``attempt(repair)`` (one move, and its repair when asked; returns the repair loss) until its point
        is kept.

        A diverged attempt is rolled back by the divergence guard. With a ceiling, the point and its segment are
        certified (:meth:`Certifier.certify`); an attempt above the ceiling is rolled back and retried with half
        the step, at most ``max_backtracks`` times (then kept, reported by the caller, and the next tick starts
        with this tick's step again); an attempt whose segment was far above after one repair round
        (:attr:`Verdict.abandoned`) is retried the same way, and one that follows another lowers the repair's rate
        (:meth:`_judge_repair_rate`). An attempt certified at once, with at most one repair round, doubles the
        step of the next tick, up to :attr:`max_step_scale`. With ``save_every`` > 1 the segment runs from the last
        saved point (:mod:`hf_llpf.algorithms.segments`); when only it is above, the previous tick's point is saved
        and the tick retried, without halving the step.

        Returns:
            The repair loss and the certifier's verdict (``None`` without a ceiling).
        """
        st, cfg, cert = self.state, self.config, self.certifier
        backtracks, verdict, scale, far_before = 0, None, st.step_scale, False
        while True:
            loss, judged, verdict = self._attempt_once(attempt, after_repair, backtracks=backtracks)
            if diverged(judged, cfg):
                try:
                    self.guard.failed(st, loss=judged, config=cfg, name=name, advice=advice, certified=cert.enabled)
                except DivergenceError:
                    self._checkpoint()
                    raise
                self.rolled_back()
                continue
            st.failures = 0  # failures count within one stretch of failed attempts, not over the run
            if verdict is None or verdict.ok:
                break
            self._judge_repair_rate(verdict, far_before=far_before, name=name)
            far_before = verdict.abandoned
            if verdict.point <= verdict.ceiling and self.segments.behind(st.tick):
                # The point is under but the segment from an older saved point is not: the previous tick's point,
                # whose own segment was certified, joins the path, and the tick is tried again from it.
                self.guard.restore()
                self.rolled_back()
                self.insert_previous_point()
                continue
            if backtracks >= cfg.max_backtracks:
                break
            self.guard.restore()
            self.rolled_back()
            st.step_scale *= 0.5
            backtracks += 1
        st.backtracks += backtracks
        self._next_step_scale(verdict, backtracks=backtracks, scale=scale)
        return loss, verdict

    def _attempt_once(
        self, attempt: Callable[[bool], float], after_repair: Callable[[], None], *, backtracks: int
    ) -> tuple[float, float, Verdict | None]:
        """Snapshot the model for a rollback, run ``attempt`` and judge its point (``backtracks``: the attempts
        of this tick already retried shorter).

        Returns:
            The repair loss, the loss the divergence guard judges (the certified point's loss with a ceiling, the
            repair loss without) and the certifier's verdict (``None`` without a ceiling).
        """
        cert = self.certifier
        t = time.perf_counter()
        self.guard.snapshot()
        self.timer.lap("snapshot", t)
        # With a ceiling the certifier does the repair, driven by the probe; without, the attempt repairs.
        loss = attempt(not cert.enabled)
        if not cert.enabled:
            return loss, loss, None
        start = self.segments.start(self.guard.saved_model_state())
        watch = backtracks < self.config.max_backtracks and not self.segments.behind(self.state.tick)
        verdict = cert.certify(self.model, self.trainer, start, after_repair, timer=self.timer, watch=watch)
        return verdict.train_loss, verdict.point, verdict

    def _next_step_scale(self, verdict: Verdict | None, *, backtracks: int, scale: float) -> None:
        """Set the step the next tick starts with, from the kept attempt's ``verdict`` (``backtracks``: how often
        this tick retried shorter; ``scale``: the step the tick started with)."""
        st = self.state
        if verdict is not None and not verdict.ok:
            st.step_scale = scale  # shorter moves did not help: the next tick goes on at the step it started with
        elif verdict is not None and verdict.easy and backtracks == 0:
            st.step_scale = min(st.step_scale * 2, self.max_step_scale)

    def _judge_repair_rate(self, verdict: Verdict, *, far_before: bool, name: str) -> None:
        """Lower the repair's rate after a failed attempt that says SGD at this rate does not get the point under:
        a whole repair budget left the point above the ceiling, or a segment far above after the first round
        stayed that far with a move half as long (``far_before``: the attempt before it in this tick was
        abandoned too), so the first round's own steps made the barrier."""
        budget = self.config.repair_budget
        if verdict.point > verdict.ceiling and 0 < budget <= verdict.extra_iters:
            self._lower_repair_rate(
                name, f"the point stayed above the ceiling after repair_budget={budget} iterations"
            )
        elif verdict.abandoned and far_before:
            self._lower_repair_rate(
                name, "its segment stayed far above the ceiling after one repair round at half the step"
            )

    def _lower_repair_rate(self, name: str, why: str) -> None:
        """Halve the repair's learning rate for the rest of the run (down to :data:`MIN_LR_SCALE`; ``why``: what
        the run prints): its noise alone kept a transformer's embedding stage at the ceiling (docs/algorithm.md
        §10.2)."""
        st = self.state
        if st.lr_scale <= MIN_LR_SCALE:
            return
        st.lr_scale /= 2
        self.trainer.scale_lr(st.lr_scale)
        logger.warning(
            f"{name} tick {st.tick + 1 + self.offset}: {why}; the repair's lr is now {self.config.lr * st.lr_scale:g}"
        )

    def note_uncertified(self, verdict: Verdict | None, *, tick: int, stage: int, phase: str) -> None:
        """Record a kept point (or its segment) that is above the ceiling."""
        if verdict is None or verdict.ok:
            return
        what, loss = ("point", verdict.point) if verdict.point > verdict.ceiling else ("segment", verdict.segment)
        self.state.uncertified.append({"tick": tick, "stage": stage, "phase": phase, "what": what, "loss": loss})

    def release(self) -> None:
        """Free what only the walk needed, once it has finished and written its last checkpoint: the optimizer's
        state (momentum), the gradients, the divergence guard's snapshot and the segments' saved point. The loop
        state, the working model and the counters stay (the summary and the final check read them)."""
        if not self.finished:
            raise RuntimeError("internal error: release() before the method has finished")
        self.trainer.release()
        self.guard.release()
        self.segments.release()

    @classmethod
    def for_run(cls, run: RunSetup) -> Method:  # pragma: no cover - abstract
        """Build the method for a run: its working model, trainer and recorder."""
        raise NotImplementedError

    def run(self) -> LoopState:  # pragma: no cover - abstract
        """Run (or continue) to the end; returns the final state."""
        raise NotImplementedError

    def work(self) -> dict[str, int]:
        """What this method has done so far: ``ticks`` (of its own) and ``sgd_iters`` (its trainer's)."""
        return {"ticks": int(self.state.tick), "sgd_iters": int(self.trainer.iterations)}

    def run_state(self) -> dict[str, Any]:
        """The run's checkpoint: which method, whether it is done, and its resumable state."""
        return {"method": self.name, "schema_version": SCHEMA, "done": self.finished, "state": self.state_dict()}

    @property
    def timing(self) -> dict[str, float]:
        """Seconds per phase of this run."""
        return self.state.timing

    @property
    def timer(self) -> Timer:
        return Timer(self.state)

    def extra_state(self) -> dict[str, Any]:
        """Tensors and values besides the loop state, model and trainer that a resume needs."""
        return {"done": self.finished}

    def load_extra_state(self, extra: dict[str, Any]) -> None:
        """Restore :meth:`extra_state`."""
        self.finished = bool(extra.get("done"))

    def state_dict(self) -> dict[str, Any]:
        """Everything to continue this method exactly: loop state, model, optimizer and data position, RNGs."""
        return {
            "loop": dict(self.state.__dict__),
            "model": self.model.state_dict(),
            "trainer": self.trainer.state_dict(),
            "rng": rng_state(),
            "extra": self.extra_state(),
            "segments": self.segments.state_dict(),
            "certifier": self.certifier.state_dict(),  # the sequential decisions' draws
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output; a stretch of failures that stopped the run starts anew."""
        self.state = type(self.state)(**ckpt["loop"])
        if self.state.failures >= self.config.max_failures:
            self.state.failures = 0
        self.model.load_state_dict(ckpt["model"])
        self.trainer.load_state_dict(ckpt["trainer"])
        self.trainer.lr_scale = self.state.lr_scale  # the optimizer's groups hold the scaled rates already
        set_rng_state(ckpt["rng"])
        self.load_extra_state(ckpt.get("extra", {}))
        self.segments.load_state_dict(ckpt.get("segments", {}))
        self.certifier.load_state_dict(ckpt.get("certifier", {}))
