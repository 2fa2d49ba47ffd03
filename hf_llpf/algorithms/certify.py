"""Certification: a path held under a loss ceiling on a fixed probe set (docs/algorithm.md §10).

Every method's tick ends with :meth:`Certifier.certify`: the point as it will be saved (after the last
variance correction, with the BatchNorm statistics it carries) is probed in eval mode; a point above the
ceiling gets more repair, in rounds, within ``repair_budget`` iterations; then the straight segment from the
previous tick's point is probed at its midpoint. A tick whose point or segment stays above is rolled back and
retried with half the step (:meth:`hf_llpf.algorithms.base.Method.certified_tick`); after ``max_backtracks``
halvings it is kept and reported; a segment already far above after the first repair round ends its attempt
there. An easy tick (certified at once, within one repair round) doubles the next
step, up to a move of a stage's whole distance, so a stage that one move keeps under the ceiling takes one tick.
"""

from __future__ import annotations

import copy
import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.logging import get_logger
from torch import nn

from hf_llpf.algorithms.ceiling import (
    AUTO_FLOOR,
    CEILING_RULES,
    PERPLEXITY_RATIO,
    ceiling_rule,
    clip_of,
    headroom_span,
    resolve_ceiling,
    resolve_headroom,
)
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.batches import move_batch
from hf_llpf.config import ConnectConfig
from hf_llpf.evaluation.decisions import TrainingExamples
from hf_llpf.evaluation.probe import ProbeSet, build_probe
from hf_llpf.models.weights import STORAGE_DTYPES
from hf_llpf.run.storage import round_to_storage
from hf_llpf.sharding import local_state

logger = get_logger(__name__)

GROWTH = 1.5  # repair rounds grow by this factor: short first rounds, few probes on hard ticks
# After the first repair round, a segment midpoint this many ceilings up ends the attempt: a barrier that high
# never came down with more repair, and the budget it would spend is lost to the backtrack (docs/algorithm.md §10.2).
WATCH_FACTOR = 3.0
WATCH_EXAMPLES = 64  # what that decision reads: the first two probe batches (32 + 32), a coarse estimate


def run_certifier(
    endpoints: list[Any],
    train_data: Any,
    loader: Any,
    bundle: Any,
    config: ConnectConfig,
    loss_fn: Any,
    accelerator: Any,
    probe_data: Any = None,
    *,
    measure_in: Callable[[int], Any] | None = None,
) -> Certifier:
    """A run's certifier: its probe set built, the endpoints probed, the ceiling resolved and printed.

    Args:
        endpoints: the run's :class:`~hf_llpf.models.endpoints.Endpoint` s (θ_A and θ_B, or the one a walk starts
            from).
        train_data, loader, bundle: the training data as given, its batch source and its loaded bundle
            (:func:`hf_llpf.evaluation.probe.build_probe`).
        config: the run's settings (``loss_ceiling: null``: a disabled certifier).
        loss_fn: the path's loss.
        accelerator: the run's Accelerator (device, cross-process average).
        probe_data: re-iterable batches to probe instead of ``config.probe_size`` training examples.
        measure_in: as in :func:`make_certifier`.
    """
    if config.loss_ceiling is None:
        return Certifier()
    if probe_data is not None:
        batches = [move_batch(b, accelerator.device) for b in probe_data]
        whole = ProbeSet(batches, loss_fn=loss_fn, accelerator=accelerator)
        examples = TrainingExamples(whole, config, loss_fn=loss_fn, accelerator=accelerator, given=True)
    elif bundle is not None and bundle.split_size("train") > config.certify_exact_max:
        # The sequential route on a loaded data set: decisions read what they draw, so none of it is held.
        examples = TrainingExamples.read_on_demand(bundle, config, device=accelerator.device, loss_fn=loss_fn,
                                                   accelerator=accelerator)  # fmt: skip
    else:  # every training example: the data spec's training split unaugmented, a dataset, one pass of a loader
        whole = build_probe(train_data, loader, bundle, size=sys.maxsize, device=accelerator.device,
                            loss_fn=loss_fn, accelerator=accelerator)  # fmt: skip
        examples = TrainingExamples(whole, config, loss_fn=loss_fn, accelerator=accelerator)
    certifier = make_certifier([e.model for e in endpoints], examples, config, accelerator.device, loss_fn=loss_fn,
                               measure_in=measure_in)  # fmt: skip
    losses = ", ".join(f"{k} {v:.4g}" for k, v in zip("AB", certifier.endpoint_losses, strict=False))
    how = f"auto: {CEILING_RULES[certifier.rule]}" if certifier.rule != "set" else "set"
    logger.info(
        f"loss ceiling {certifier.ceiling:.4g} ({how}; endpoint "
        f"losses {losses} on {examples.endpoints.num_examples} training examples); {examples.route_line()}",
        main_process_only=True,
    )
    return certifier


def make_certifier(
    models: list[nn.Module],
    probe: ProbeSet | TrainingExamples | None,
    config: ConnectConfig,
    device: Any,
    *,
    loss_fn: Any = None,
    measure_in: Callable[[int], Any] | None = None,
) -> Certifier:
    """The run's certifier: the endpoints measured, the ceiling resolved (a disabled one without a ceiling).

    Args:
        models: the endpoints (θ_A, θ_B; one for a walk), wherever they live; each is measured on a copy on
            ``device``.
        probe: the training examples (:class:`TrainingExamples`), or a fixed probe set judged exactly (``None``
            when ``config.loss_ceiling`` is null).
        config: the run's settings.
        device: the training device.
        loss_fn: the path's loss (which auto ceiling applies: :func:`ceiling_rule`).
        measure_in: endpoint ``k`` → a context manager giving the module to measure it in (a sharded run reading
            by rows: its working model holding that endpoint's rows); default: a copy of ``models[k]`` on ``device``.

    Raises:
        ConfigError: a set ceiling below an endpoint's loss.
    """
    if probe is None or config.loss_ceiling is None:
        return Certifier()
    measure = probe.endpoints if isinstance(probe, TrainingExamples) else probe
    losses = []
    for k, m in enumerate(models):
        if measure_in is not None:
            with measure_in(k) as held:
                losses.append(measure.loss(held))
            continue
        on_device = copy.deepcopy(m).to(device)
        losses.append(measure.loss(on_device))
        del on_device
    rule = ceiling_rule(models, loss_fn)
    certifier = Certifier(probe, resolve_ceiling(config, losses, rule=rule), config, losses)
    certifier.rule = rule if config.loss_ceiling == "auto" else "set"
    return certifier


@dataclass
class Verdict:
    """What the certifier measured on one attempt of a tick."""

    point: float  # probe loss of the point
    segment: float | None  # probe loss at the segment's midpoint (None: not probed)
    extra_iters: int  # repair iterations the point needed
    ceiling: float
    train_loss: float = math.nan  # the last repair round's train-mode loss (NaN: no repair was needed)
    min_iters: int = 0  # the first repair round's length
    abandoned: bool = False  # the repair stopped after its first round: the segment was far above (an estimate)

    @property
    def ok(self) -> bool:
        under = self.point <= self.ceiling and not self.abandoned
        return under and (self.segment is None or self.segment <= self.ceiling)

    @property
    def easy(self) -> bool:
        """Certified after at most the first repair round: the next move may be longer."""
        return self.ok and self.extra_iters <= self.min_iters


class Certifier:
    """Judges points and segments against the ceiling on the training examples; a disabled one (no examples or no
    ceiling) measures nothing.

    Args:
        examples: the training examples and their route (:class:`~hf_llpf.evaluation.decisions.TrainingExamples`;
            ``None``: certification off).
        ceiling: the loss ceiling (``None``: off).
        config: ``repair_budget``, ``min_iters`` (the first round's length), ``certify_segments``,
            ``max_backtracks``.
        endpoint_losses: the endpoints' losses, as measured when the ceiling was resolved.
    """

    def __init__(
        self,
        examples: TrainingExamples | ProbeSet | None = None,
        ceiling: float | None = None,
        config: ConnectConfig | None = None,
        endpoint_losses: list[float] | None = None,
    ):
        # Exact: every training example is judged. A bare probe set (a caller's fixed batches) is judged exactly too,
        # but it may not hold every training example: the repair keeps its headroom for those it does not.
        exact = isinstance(examples, TrainingExamples) and examples.exact
        if examples is not None and not isinstance(examples, TrainingExamples):
            examples = TrainingExamples(examples, config, exact=True)
        self.examples, self.ceiling, self.config = examples, ceiling, config
        self.probe = examples.probe if examples is not None else None  # the exact passes over every example
        self.decider = examples.decider if examples is not None else None  # sequential decisions (None: exact)
        self.endpoint_losses = list(endpoint_losses or [])
        self.enabled = examples is not None and ceiling is not None and config is not None
        self.storage = STORAGE_DTYPES.get(config.point_dtype) if config is not None else None
        self.headroom = resolve_headroom(config, exact=exact) if config is not None else 0.0
        self._span = headroom_span(config) if config is not None else 0.0
        top = max(self.endpoint_losses, default=ceiling)
        self._room = max(self.headroom * (ceiling - top), 0.0) if self.enabled else 0.0  # target(0)'s distance down
        self.clip = clip_of(config, ceiling) if self.enabled else math.inf
        self.final: dict | None = None  # the final check's record (:func:`hf_llpf.algorithms.final_check.final_check`)
        self.rule = "set"  # which auto ceiling it is (CEILING_RULES), or "set"
        self.recorded: dict = {}  # the points' sha256 and the environment, once the path is written
        self.measured: dict[str, float] = {}  # exact route: whole passes so far, by the fingerprint of the weights
        self.reuse = True  # whether the final check may take a whole pass made on the same bits during the run

    def loss(self, model: nn.Module, *, above: float | None = None) -> float:
        """The loss of ``model`` as it will be stored (NaN when certification is off): the exact mean over every
        training example, or on the sequential route a decision against ``above`` (default: the ceiling) whose
        value is at most it exactly when it accepts; ``above``: a pass that is above it may stop early, its value
        then a lower bound or an estimate above it."""
        return self._probe_stored(model, above=above) if self.enabled else math.nan

    def _probe_stored(self, model: nn.Module, **probe: Any) -> float:
        """Round the point in place to the storage dtype (``point_dtype``), then measure it (``probe``: the options
        of :meth:`ProbeSet.loss`): the numbers that are written are judged, and the run goes on from them
        (:mod:`hf_llpf.run.storage`)."""
        round_to_storage(model, self.storage)
        return self._measure(model, **probe)

    def _measure(self, model: nn.Module, *, above: float | None = None, estimate: bool = False,
                 first: int | None = None) -> float:  # fmt: skip
        """The exact route's :meth:`ProbeSet.loss`, or the sequential route's decision against ``above``."""
        if self.decider is None:
            value = self.probe.loss(model, above=above, estimate=estimate, first=first)
            if self.probe.log[-1] == self.probe.num_examples:  # a whole pass: the final check may reuse it
                self.measured[fingerprint(model)] = value
            return value
        bar = self.ceiling if above is None else above
        return self.decider.decide(model, bar, clip=self.clip, estimate=estimate, first=first).value

    def state_dict(self) -> dict[str, Any]:
        """The sequential decisions' position (their generator), for a resume bit for bit."""
        return self.decider.state_dict() if self.decider is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        if self.decider is not None:
            self.decider.load_state_dict(state)

    def certify(
        self,
        model: nn.Module,
        trainer: RepairTrainer,
        previous: list[torch.Tensor],
        after_repair: Callable[[], None],
        *,
        timer: Any = None,
        watch: bool = False,
    ) -> Verdict:
        """The tick's repair, driven by the probe: repair only while the point is above the repair's target.

        The moved point is probed first; while it is above the target (:meth:`target`: the ceiling, less the
        headroom that shrinks as the budget is spent) it is repaired in rounds of
        ``min_iters`` iterations, each round 1.5× the last (at most ``repair_budget`` in all), each followed by
        the method's variance correction and a probe. A point under the ceiling then has its
        segment's midpoint probed. With ``watch``, a point still above after its first round has its segment's
        midpoint probed too, and an estimate above :data:`WATCH_FACTOR` ceilings ends the attempt there
        (``abandoned``): the caller backtracks without spending the rest of the budget on it. Probes that only
        decide "above" stop early (:meth:`ProbeSet.loss`); a value that ends up reported (a point or segment kept
        above the ceiling) is measured in full.

        Args:
            model: the working model holding the tick's moved point.
            trainer: its repair trainer.
            previous: the previous point's state tensors, in ``model.state_dict()`` order.
            after_repair: what the method does after each repair (its variance correction).
            timer: a :class:`~hf_llpf.algorithms.base.Timer`: probing goes to ``probe``, repair to ``train``.
            watch: whether a hopeless segment may end the attempt early (not when the attempt will be kept anyway).
        """
        cfg, lap = self.config, (timer.lap if timer is not None else lambda _key, start: time.perf_counter())
        ceiling, t = self.ceiling, time.perf_counter()
        # Until the point is under, "above" decides only whether to repair on: an estimate is enough.
        point, spent, loss = self._probe_stored(model, above=self.target(0), estimate=True), 0, math.nan
        size = cfg.min_iters
        t = lap("probe", t)
        while not point <= self.target(spent) and spent < cfg.repair_budget:
            n = min(int(size), cfg.repair_budget - spent)
            loss, _ = trainer.repair(iters=n)
            after_repair()
            spent, size = spent + n, size * GROWTH
            t = lap("train", t)
            point = self._probe_stored(model, above=self.target(spent), estimate=True)
            go_on = not point <= self.target(spent)
            if watch and spent == n and go_on and (far := self._far_segment(model, previous)):  # after round one
                lap("probe", t)
                return Verdict(point, far, spent, ceiling, loss, cfg.min_iters, abandoned=True)
            t = lap("probe", t)
        if not point <= self.target(spent):  # the full figure (it may be reported or certify; an estimate may err)
            point = self._measure(model)
        segment = None
        if cfg.certify_segments and point <= ceiling:
            segment = self.midpoint_loss(model, previous, above=ceiling)
        lap("probe", t)
        return Verdict(point, segment, spent, ceiling, loss, cfg.min_iters)

    def _far_segment(self, model: nn.Module, previous: list[torch.Tensor]) -> float | None:
        """The segment's midpoint estimate when it is above :data:`WATCH_FACTOR` ceilings (``None``: not that far,
        or segments are not certified). On the families' CNNs a midpoint that high after the first repair round
        stayed above the ceiling through the whole budget; certified ones were at most 2.3 ceilings there (an
        instrumented run, docs/algorithm.md §10.2 step 4)."""
        if not self.config.certify_segments:
            return None
        bar = WATCH_FACTOR * self.ceiling
        loss = self.midpoint_loss(model, previous, above=bar, estimate=True, first=WATCH_EXAMPLES)
        return loss if loss > bar else None

    def target(self, spent: int) -> float:
        """What the repair aims at after ``spent`` of the tick's budget: ``repair_headroom`` of the way from the
        ceiling down to the endpoints' probe loss at first, the ceiling itself once :func:`headroom_span` is spent.

        A point repaired only to the ceiling sits just under it on the probe, and the training examples the probe
        does not hold put it above as often as not; the headroom buys room for them while the budget allows.
        """
        left = 1.0 - min(spent / self._span, 1.0) if self._span > 0 else 0.0
        return self.ceiling - self._room * left

    @torch.no_grad()
    def midpoint_loss(
        self,
        model: nn.Module,
        previous: list[torch.Tensor],
        *,
        above: float | None = None,
        estimate: bool = False,
        first: int | None = None,
    ) -> float:
        """Probe loss at the midpoint of the straight segment from ``previous`` to the model's current state.

        Floating tensors (BatchNorm statistics included) are averaged, as the evaluation's continuity check
        interpolates them; integer buffers keep the current point's values. The model is left on its point.
        ``above``: a pass above it may stop early (:meth:`ProbeSet.loss`); the value returned is then measured
        again in full, as it may be reported, unless ``estimate`` or ``first`` ask for a decision only (the early
        value or estimate is returned).
        """
        state = local_state(model)  # under FSDP2, this process's shards (``previous`` holds the same parts)
        keep = _distinct_floating(state)
        live, prev = [state[i] for i in keep], [previous[i] for i in keep]
        here = [t.clone() for t in live]
        torch._foreach_add_(live, prev)
        torch._foreach_mul_(live, 0.5)
        try:
            loss = self._measure(model, above=above, estimate=estimate, first=first)
            decision = estimate or first is not None or self.decider is not None
            return loss if above is None or loss <= above or decision else self._measure(model)
        finally:
            torch._foreach_copy_(live, here)

    def counters(self) -> dict[str, Any]:
        """The probes made so far (``probes``, ``probes_stopped_early``) and, on the exact route, the whole passes
        made (``measured``, by fingerprint, which the final check reuses): carried by every checkpoint."""
        if not self.enabled:
            return {"probes": 0, "probes_stopped_early": 0}
        counts = {"probes": self.probe.calls, "probes_stopped_early": self.probe.stopped}
        return {**counts, "measured": dict(self.measured)} if self.reuse else counts

    def restore_counters(self, counters: dict | None) -> None:
        """Continue the counts of the checkpoint a run resumes from. The probes this session has made so far (the
        endpoints', to resolve the ceiling again) repeat the first session's, which the counts already hold; the
        whole passes carried let a resumed run's final check measure what an uninterrupted run's would."""
        if self.enabled and isinstance(counters, dict):
            self.probe.calls = int(counters.get("probes", self.probe.calls))
            self.probe.stopped = int(counters.get("probes_stopped_early", self.probe.stopped))
            measured = counters.get("measured")
            if self.reuse and isinstance(measured, dict):
                self.measured.update({str(k): float(v) for k, v in measured.items() if isinstance(v, (int, float))})

    def summary(self, uncertified: list[dict]) -> dict:
        """The run's certification record (``summary.run.certification``): the route, what each decision read,
        the final check (:mod:`hf_llpf.algorithms.final_check`) and what stayed above the ceiling."""
        if not self.enabled:
            return {"ceiling": None, "certified": False, "reason": "no loss ceiling (loss_ceiling: null)"}
        decider, probe = self.decider, self.probe
        log = decider.log if decider is not None else probe.log
        above = list(uncertified) + list((self.final or {}).get("above", []))
        record = {
            "ceiling": self.ceiling,
            "route": self.examples.route,
            "ceiling_rule": CEILING_RULES.get(self.rule, "set"),
            "probe_examples": self.examples.num_examples,  # the training examples certified on (all of them)
            "examples_source": "probe_data" if self.examples.given else "training set",
            "endpoint_probe_losses": self.endpoint_losses,
            "decisions": len(log),
            "examples_per_decision": list(log),
            "examples_run": (decider.examples_run if decider is not None else 0) + probe.examples_run,
            "probes": probe.calls,
            "probes_stopped_early": probe.stopped,
            "certified": not above,
            "uncertified": above,
            "segments": bool(self.config.certify_segments),
            "segment_positions": [0.5] if self.config.certify_segments else [],
        }
        if decider is not None:
            record.update(delta=decider.delta, clip=self.clip, tail=decider.tail, decision_cap=decider.cap)
        if self.final is not None:
            record["final_check"] = {k: v for k, v in self.final.items() if k != "above"}
        record.update(self.recorded)
        return record


def fingerprint(model: nn.Module) -> str:
    """A digest of every tensor of ``model``'s state (names, dtypes, shapes, bits): two states with the same
    fingerprint hold the same numbers, so a loss measured on one is the other's."""
    digest = hashlib.blake2b(digest_size=20)
    for name, t in zip(model.state_dict(), local_state(model), strict=True):  # under FSDP2: this process's shards
        t = t.contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # The array itself, not a bytes copy of it (the largest tensor's size, transient).
        digest.update(t.reshape(-1).view(torch.uint8).cpu().numpy() if t.numel() else b"")
    return digest.hexdigest()


def _distinct_floating(tensors: list[torch.Tensor]) -> list[int]:
    """Indices of the floating tensors, each storage once (tied weights appear under two state_dict names)."""
    seen, keep = set(), []
    for i, t in enumerate(tensors):
        key = (t.data_ptr(), tuple(t.shape), t.stride())
        if t.is_floating_point() and key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def certification_line(cert: dict | None) -> str:
    """The run's certification sentence: the guarantee, in the terms the run earned it, or what broke it.

    The exact route: every saved point and each segment's checked positions, evaluated on all N training examples
    in the final check. The sequential route: the confidence, the clip B and the bound on the fraction above it.
    """
    if not cert or cert.get("ceiling") is None:
        return "not certified: no loss ceiling was enforced (loss_ceiling: null)"
    ceiling, n = cert["ceiling"], cert.get("probe_examples")
    positions = ", ".join(f"t = {p:g}" for p in cert.get("segment_positions", [0.5]))
    what = (f"every saved point and every segment at {positions}" if cert.get("segments")
            else "every saved point (segments not checked)")  # fmt: skip
    route = cert.get("route")
    if route == "sequential":
        clip, conf = cert["clip"], f"{1 - cert['delta']:g}"
        claim = (f"has a mean of min(loss, {clip:.4g}) <= {ceiling:.4g} over the {n} training examples, and at most "
                 f"{cert.get('tail', 1.0):.2%} of them above {clip:.4g} (sequential decisions, at most "
                 f"{cert.get('decision_cap', n)} examples each)")  # fmt: skip
        if cert.get("certified"):
            return f"certified with confidence {conf}: {what} {claim}"
        where = f"(sequential decisions at confidence {conf}, {n} training examples)"
    elif route == "exact":
        source = "training examples" if cert.get("examples_source") != "probe_data" else "examples of probe_data"
        final = cert.get("final_check")
        where = f"over all {n} {source} (exact" + (f"; final check: maximum {final['max']:.4g})" if final else ")")
        if cert.get("certified"):
            return f"certified: {what} has mean eval-mode training loss <= {ceiling:.4g} {where}"
    else:  # a run of an earlier version: decided on a fixed probe subset (its own words)
        where = f"on {n} probe examples"
        if cert.get("certified"):
            old = "every point and segment" if cert.get("segments") else "every point (segments not probed)"
            return f"certified: {old} <= {ceiling:.4g} {where}"
    bad = cert.get("uncertified", [])
    listed = "; ".join(
        f"{u['what']} at tick {u['tick']} (stage {u['stage']}, {u['phase']}): {u['loss']:.4g}" for u in bad[:5]
    )
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    return f"NOT certified: {len(bad)} above the ceiling {ceiling:.4g} {where}: {listed}{more}"


__all__ = [
    "AUTO_FLOOR",
    "CEILING_RULES",
    "PERPLEXITY_RATIO",
    "Certifier",
    "Verdict",
    "ceiling_rule",
    "certification_line",
    "fingerprint",
    "headroom_span",
    "make_certifier",
    "resolve_ceiling",
    "resolve_headroom",
    "run_certifier",
]
