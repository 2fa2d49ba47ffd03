"""One registered curve between two endpoints as a run directory that resumes (docs/baselines.md).

What :func:`hf_llpf.build_baseline` and ``hf-llpf connect --method bezier`` (any curve but ``linear``, which connect
runs as its certified engine) both run: the one run preparation (:func:`hf_llpf.preparation.prepare_run`, whose
certifier is the trained curves', :func:`~hf_llpf.baselines.certify.baseline_certifier`), then the method built on
the prepared ends, trained when it trains (in rounds until the certificate accepts it or the cap, else its fixed
budget in chunks), then its points written at fixed t (:mod:`hf_llpf.baselines.pathdir`).

A trained curve writes a resume checkpoint (``checkpoint/``, :mod:`hf_llpf.run.state`) after every round or chunk:
its training state (control point or pivots, optimizer, generators, iterations, the batches' position), the global
generators, the rounds of certification made and the certifier's counters; ``exist="resume"`` continues from it
bit for bit. Once the points are written a last checkpoint says the run is done; a closed-form curve writes only
that one (a resume of an unfinished one writes its points again). What a resume must match, the limits it may raise
and the finished run it recognises before the preparation: :mod:`hf_llpf.baselines.curve_resume`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import yaml
from accelerate.logging import get_logger
from torch import nn

from hf_llpf.algorithms.certify import Certifier
from hf_llpf.algorithms.registry import PathMethod
from hf_llpf.baselines.certify import CertifySettings, CurveCheck, baseline_certifier, close_baseline
from hf_llpf.baselines.certify import train_until_certified as _rounds
from hf_llpf.baselines.curve_resume import (
    check_same_curve,
    finished_before_preparation,
    recorded_settings,
    refuse_raised_when_over,
)
from hf_llpf.baselines.pathdir import (
    BaselineRun,
    PreparedEnds,
    State,
    curve_config,
    describe_curve,
    fixed_ts,
    state_of,
    write_points,
)
from hf_llpf.config import SCHEMA
from hf_llpf.data.intake import training_data
from hf_llpf.evaluation.recalibration import recalibrate_bn
from hf_llpf.preparation import PreparedRun, prepare_run
from hf_llpf.run import RunPath, RunWriter
from hf_llpf.run.inputs import read_paths
from hf_llpf.run.layout import CONFIG_YAML, METRICS_JSON
from hf_llpf.run.resume import read_checkpoint
from hf_llpf.run.seeding import rng_state, seed_everything, set_rng_state

logger = get_logger(__name__)

TAIL = 50  # training losses the final_train_loss averages (the last ones)


@dataclass
class CurveJob:
    """One curve to build, its settings checked (:func:`hf_llpf.baselines.build.curve_job`).

    Attributes:
        entry: the registered curve method.
        points: points written, ends included.
        settings: the method's own settings (an instance of its ``settings`` class), or ``None``.
        rounds: how a trained curve is certified (round length, cap).
        ceiling: the ceiling a trained curve is certified under (``None``: the settings' ``loss_ceiling``).
        recalibrate_bn: recompute the BatchNorm statistics of a closed-form curve's interior points.
        loss_fn: the training loss; ``device``: where a trained curve trains.
        exist: ``"error"``, ``"overwrite"`` or ``"resume"``.
        command: the command line, recorded; ``inside``: the run directory this one lies in (a run's baseline).
        protected: files and folders the caller reads, never written.
    """

    entry: type[PathMethod]
    points: int
    settings: Any
    rounds: CertifySettings
    ceiling: float | None = None
    recalibrate_bn: bool = False
    loss_fn: Any = None
    device: Any = None
    exist: str = "error"
    command: str | None = None
    inside: Any = None
    protected: Sequence[Any] = ()


def run_curve(job: CurveJob, model_a: Any, model_b: Any, train_data: Any, config: Any, run_dir: Any) -> RunPath:
    """Build ``job``'s curve from θ_A to θ_B and write (or continue) it in ``run_dir``; returns the path. A resume
    of a finished run says so before the preparation when it can tell
    (:func:`~hf_llpf.baselines.curve_resume.finished_before_preparation`)."""
    if finished_before_preparation(job, [model_a, model_b], train_data, config, run_dir):
        logger.info(f"{run_dir} is already complete; nothing to resume", main_process_only=True)
        return RunPath(run_dir, template=model_a if isinstance(model_a, nn.Module) else None)
    seed_everything(config.seed)
    start = time.perf_counter()
    made: list[PreparedEnds] = []
    train = training_data(train_data)  # a dict of splits: its training split (what the certifier probes)
    prepared = prepare_run([model_a, model_b], train_data, config, loss_fn=job.loss_fn, accelerator=None,
                           progress=False, certifier=lambda p: _certifier(job, train, p, made))  # fmt: skip
    protected = [*job.protected, *read_paths(*prepared.endpoints, config=prepared.config)]
    with RunWriter(run_dir, exist=job.exist, inside=job.inside, protected=protected,
                   storage=prepared.storage) as writer:  # fmt: skip
        return _run(job, prepared, made[0], writer, start)


def _certifier(job: CurveJob, train_data: Any, p: PreparedRun, made: list[PreparedEnds]) -> Certifier:
    """The prepared run's certifier step for a curve: the ends it builds on (their BatchNorm batches drawn first, as
    the curves always drew them), then a trained curve's certifier (disabled without a ceiling)."""
    ends = _prepared_ends(job, p)
    made.append(ends)
    if not job.entry.trains:
        return Certifier()
    ends.device, ends.loss_fn = job.device, job.loss_fn
    certifier = baseline_certifier([ends.ea.model, ends.eb.model], train_data, p.loader, p.bundle, p.config,
                                   ceiling=job.ceiling, loss_fn=job.loss_fn, device=job.device)  # fmt: skip
    return certifier or Certifier()


def _prepared_ends(job: CurveJob, p: PreparedRun) -> PreparedEnds:
    """What the method builds on: the prepared ends, their tensors, the data, the settings, the BatchNorm batches (a
    trained method's always, another's when ``recalibrate_bn``), and the record of the run."""
    ea, eb = p.endpoints
    data = p.bundle.config.model_dump(mode="json") if p.bundle is not None else None
    record = BaselineRun(method=job.entry.name, data=data, seed=p.config.seed, settings={"points": job.points})
    batches = []
    if job.recalibrate_bn or job.entry.trains:
        loader = p.loader
        if p.bundle is not None:  # unaugmented: the same batches for every point
            loader = p.bundle.loader("train", batch_size=p.config.batch_size, seed=p.config.seed, augment=False)
        batches = list(islice(iter(loader), getattr(job.settings, "recal_batches", 8)))
    return PreparedEnds(ea, eb, state_of(ea.model), state_of(eb.model), p.loader, p.bundle, p.config, job.settings,
                        batches, record)  # fmt: skip


def _run(job: CurveJob, prepared: PreparedRun, ends: PreparedEnds, writer: RunWriter, start: float) -> RunPath:
    """Build the curve, continue or start its run directory, train, write the points."""
    template = ends.ea.model if ends.ea.kind == "module" else None
    ckpt = read_checkpoint(writer.root) if job.exist == "resume" else None
    built = job.entry().build(ends)
    ends.record.settings.update(recorded_settings(job, certified=prepared.certifier.enabled))
    if ckpt is not None:
        changed = check_same_curve(writer.root, ckpt, ends, job)
        refuse_raised_when_over(writer.root, ckpt, changed)
        if ckpt.get("done") and (writer.root / METRICS_JSON).is_file():
            logger.info(f"{writer.root} is already complete; nothing to resume", main_process_only=True)
            return RunPath(writer.root, template=template)
        _record_resume(writer, ckpt, ends.record, changed)
    else:
        describe_curve(writer, ends.ea, ends.eb, ends.record, command=job.command, assets=prepared.assets)
    finish = None
    if job.entry.trains:
        training = CurveTraining(job, built, prepared.certifier, ends, writer, start)
        state_at, finish = training.run(ckpt)
    else:
        state_at = _recalibrated(built, ends.ea.model, ends.batches) if job.recalibrate_bn else built
    seconds = time.perf_counter() - start  # this session's (a resumed curve's seconds to certify count them all)
    path = write_points(writer, ends.ea, fixed_ts(job.points), state_at, ends.record, seconds=seconds, finish=finish)
    if job.inside is None:  # a run's own baseline (RUN/baselines/<method>) is rebuilt, never resumed
        writer.save_checkpoint({"schema_version": SCHEMA, "method": job.entry.name, "done": True})
    return path


def _record_resume(writer: RunWriter, ckpt: dict, record: BaselineRun, changed: dict[str, list[Any]]) -> None:
    """A resume that raised a limit: ``llpf_config.yaml`` gets the settings in force, and ``summary.run.resumed_with``
    each resume's raised settings (carried by the checkpoints until the points are written)."""
    history = [h for h in ckpt.get("resumed_with") or [] if isinstance(h, dict)]
    if changed:
        history.append({"changed": changed})  # at_sgd_iters: set once the training is restored
        writer.write_yaml(CONFIG_YAML, yaml.safe_dump(curve_config(record), sort_keys=False))
    if history:
        record.summary["resumed_with"] = history


def _recalibrated(state_at: Callable[[float], State], model: Any, batches: list) -> Callable[[float], State]:
    """``state_at`` whose interior points get their BatchNorm statistics recomputed on ``batches``."""
    import copy

    work = copy.deepcopy(model).cpu()

    def at(t: float) -> State:
        state = state_at(t)
        if t in (0.0, 1.0):
            return state
        work.load_state_dict(state)
        recalibrate_bn(work, batches)
        return state_of(work)

    return at


class CurveTraining:
    """The training of a trained curve: its fixed budget in chunks (no ceiling), else rounds until certified or the
    cap; a resume checkpoint after each chunk or round, and one when the training is over.

    Args:
        job: the curve's job; ``trained``: what its method built; ``certifier``: the run's (disabled: no ceiling).
        ends: the prepared ends (their record gets the method's figures); ``writer``: the run directory's writer.
        start: when the run started (this session).
    """

    def __init__(self, job: CurveJob, trained: Any, certifier: Certifier, ends: PreparedEnds, writer: RunWriter,
                 start: float):  # fmt: skip
        self.job, self.trained, self.certifier, self.ends, self.writer = job, trained, certifier, ends, writer
        self.method, self.start, self.elapsed = job.entry.name, start, 0.0
        self.losses: list[float] = []
        self.rounds: list[dict] = []
        self.outcome: dict | None = None  # the rounds' outcome, once the training is over
        self.check = None
        if certifier.enabled:
            ts = fixed_ts(job.points)
            self.check = CurveCheck(certifier, ends.ea.model, ts, phase=self.method, device=job.device)

    def run(self, ckpt: dict | None) -> tuple[Callable[[float], State], Any]:
        """Train (or continue from ``ckpt``); returns ``state_at`` and the write's ``finish`` (the certification
        record, ``None`` without a ceiling). Records the method's figures in the run's record."""
        done = self._restore(ckpt) if ckpt is not None else False
        history = self.ends.record.summary.get("resumed_with")
        if history and "at_sgd_iters" not in history[-1]:  # this resume raised a limit: where it took effect
            history[-1]["at_sgd_iters"] = self.trained.iterations()
        if not done:
            if self.check is None:
                self._budget()
            else:
                self._certify()
            self._checkpoint(trained=True)
        record = self.ends.record
        record.sgd_iters = self.trained.iterations()
        tail = self.losses[-TAIL:]
        record.summary[self.method] = {"final_train_loss": sum(tail) / len(tail) if tail else None,
                                       **self.trained.summary()}  # fmt: skip
        return self.trained.state_at, (None if self.check is None else self._finish)

    def _budget(self) -> None:
        """The fixed budget, chunk by chunk (in one call for a curve that cannot be saved)."""
        chunk = self.trained.budget_chunk
        if chunk is None or self.trained.state_dict is None:
            self.losses += self.trained.train_budget()
            return
        while (losses := chunk()) is not None:
            self.losses = (self.losses + losses)[-TAIL:]
            self._checkpoint(trained=False)

    def _certify(self) -> None:
        """Rounds until certified or the cap, a checkpoint after each."""

        def train_round(n: int) -> int:
            before = self.trained.iterations()
            self.losses = (self.losses + self.trained.train_round(n))[-TAIL:]
            return self.trained.iterations() - before

        def after(rounds: list[dict]) -> None:
            self.rounds = rounds
            self._checkpoint(trained=False)

        self.outcome = _rounds(self.check, self.trained.state_at, train_round, self.job.rounds,
                               iterations=self.trained.iterations, rounds=self.rounds,
                               after_round=after if self.trained.state_dict is not None else None,
                               elapsed=self.elapsed)  # fmt: skip

    def _finish(self, path: Any, rows: list[dict]) -> dict:
        """The written path's certification record (:func:`~hf_llpf.baselines.certify.close_baseline`)."""
        started = self.start - self.elapsed
        cert = close_baseline(self.certifier, path, self.ends.ea.model, rows, self.outcome, device=self.job.device,
                              sgd_iters=self.trained.iterations(), started=started)  # fmt: skip
        return {"certification": cert}

    def _checkpoint(self, *, trained: bool) -> None:
        """The resume state: the curve's training, the generators, the losses' tail, the rounds and the certifier."""
        if self.trained.state_dict is None or self.job.inside is not None:
            return
        state = {
            "schema_version": SCHEMA,
            "method": self.method,
            "done": False,
            "trained": trained,
            "curve": self.trained.state_dict(),
            "rng": rng_state(),
            "losses": list(self.losses),
            "rounds": list(self.rounds),
            "outcome": self.outcome,
            "check": self.check.state_dict() if self.check is not None else None,
            "certifier": self.certifier.state_dict(),
            "counters": self.certifier.counters(),
            "seconds": round(self.elapsed + time.perf_counter() - self.start, 3),
            "resumed_with": self.ends.record.summary.get("resumed_with", []),
        }
        self.writer.save_checkpoint(state)

    def _restore(self, ckpt: dict) -> bool:
        """Continue from a checkpoint of this curve; returns whether its training was over."""
        if self.trained.load_state_dict is None or "curve" not in ckpt:
            return False  # a curve that cannot be saved, or one whose training had not saved yet: start again
        self.trained.load_state_dict(ckpt["curve"])
        set_rng_state(ckpt["rng"])
        self.losses, self.rounds, self.outcome = list(ckpt["losses"]), list(ckpt["rounds"]), ckpt.get("outcome")
        self.elapsed = float(ckpt.get("seconds") or 0.0)
        if self.check is not None and ckpt.get("check") is not None:
            self.check.load_state_dict(ckpt["check"])
        self.certifier.load_state_dict(ckpt.get("certifier") or {})
        self.certifier.restore_counters(ckpt.get("counters"))
        return bool(ckpt.get("trained"))


__all__ = ["CurveJob", "CurveTraining", "run_curve"]
