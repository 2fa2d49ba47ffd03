"""A trained baseline held under LLPF's certificate: train in rounds until the path is certified, or a cap
(docs/baselines.md, "Certified baselines").

A Bézier curve or an AutoNEB band trains in rounds of ``round_iters`` SGD iterations. After each round its path is
checked as it will be written: the points at ``points`` evenly spaced t (ends included) and each segment's midpoint
(the average of two consecutive points, BatchNorm statistics included, as LLPF's final check forms it), each judged
by the :class:`~hf_llpf.algorithms.certify.Certifier` an LLPF run uses: the same ceiling (the one LLPF's run used,
or resolved by the same rule from the endpoints), the same route (every training example when there are at most
``certify_exact_max``, else the sequential test). The run stops when every checked position is under the ceiling,
when ``cap`` SGD iterations are spent, or at once when an end is above the ceiling (training never moves the ends).
Once the path is written, LLPF's final check reads every point back and evaluates it and each segment's midpoint on
all the training examples (:func:`~hf_llpf.algorithms.final_check.final_check`).
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accelerate.logging import get_logger
from torch import nn

from hf_llpf.algorithms.ceiling import ceiling_rule, resolve_ceiling
from hf_llpf.algorithms.certify import Certifier, certification_line
from hf_llpf.algorithms.final_check import environment, final_check, midpoint, point_hashes, record_final
from hf_llpf.baselines.pathdir import State
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.decisions import TrainingExamples
from hf_llpf.evaluation.probe import build_probe

logger = get_logger(__name__)

ROUND_ITERS = 50  # SGD iterations between two checks: the cost to certify is known to within one round
HIGHEST_FIRST = 3  # positions the earlier checks found highest, measured first
CAP = 3000  # SGD iterations at most: on the demo pair (small_cnn, digits) a run that never certifies stops in minutes


@dataclass(frozen=True)
class CertifySettings:
    """How a trained baseline is held under the ceiling.

    Attributes:
        round_iters: SGD iterations per round; the path is checked after each.
        cap: SGD iterations at most; a path not certified by then is written and reported uncertified.
    """

    round_iters: int = ROUND_ITERS
    cap: int = CAP

    def problems(self) -> list[str]:
        """What is wrong with the settings, one line each."""
        out = []
        if not isinstance(self.round_iters, int) or self.round_iters < 1:
            out.append(f"certify round_iters={self.round_iters!r}: must be a whole number >= 1")
        if not isinstance(self.cap, int) or self.cap < 0:
            out.append(f"certify cap={self.cap!r}: must be a whole number >= 0")
        return out


def certify_settings(settings: CertifySettings | dict | None) -> CertifySettings:
    """Checked :class:`CertifySettings` from settings, a dict of their fields or None (the defaults).

    Raises:
        ConfigError: an unknown field or an invalid value, every problem at once.
    """
    if settings is None:
        return CertifySettings()
    if isinstance(settings, dict):
        fields = list(CertifySettings.__dataclass_fields__)
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise ConfigError(f"certify {unknown[0]!r}: unknown setting (expected one of {', '.join(fields)})")
        settings = CertifySettings(**settings)
    if not isinstance(settings, CertifySettings):
        raise ConfigError(f"certify={type(settings).__name__}: expected CertifySettings, a dict or None")
    if settings.problems():
        raise ConfigError(settings.problems())
    return settings


def baseline_certifier(
    models: list[nn.Module],
    train_data: Any,
    loader: Any,
    bundle: Any,
    config: Any,
    *,
    ceiling: float | None,
    loss_fn: Any,
    device: Any,
) -> Certifier | None:
    """The certifier of a trained baseline: LLPF's, on every training example (``None``: no ceiling).

    Args:
        models: the endpoints θ_A and θ_B.
        train_data, loader, bundle: the training data as given, its batch source and its loaded bundle.
        config: the run's :class:`~hf_llpf.config.ConnectConfig` (``loss_ceiling``, the route's settings).
        ceiling: the ceiling to hold (LLPF's run's, as ``compare`` passes it); ``None``: ``config.loss_ceiling``,
            ``auto`` resolved from the endpoints by LLPF's rule. A ceiling below an endpoint is not refused here:
            the run then says at once that it cannot be certified.
        loss_fn: the path's loss.
        device: where the examples and the checks live.
    """
    if ceiling is None and config.loss_ceiling is None:
        return None
    whole = build_probe(train_data, loader, bundle, size=sys.maxsize, device=device, loss_fn=loss_fn)
    examples = TrainingExamples(whole, config, loss_fn=loss_fn)
    losses = [examples.endpoints.loss(copy.deepcopy(m).to(device)) for m in models]
    rule = ceiling_rule(models, loss_fn)
    if ceiling is not None:
        value, source = float(ceiling), "given"
    elif config.loss_ceiling == "auto":
        value, source = resolve_ceiling(config, losses, rule=rule), "auto"
    else:
        value, source = float(config.loss_ceiling), "set"
    certifier = Certifier(examples, value, config, losses)
    certifier.rule = rule if source == "auto" else "set"
    certifier.source = source  # recorded as ceiling_source: given (LLPF's run's, by compare), auto or set
    return certifier


class CurveCheck:
    """The checks of one trained curve: its points at ``ts`` and each segment's midpoint, against the ceiling.

    Args:
        certifier: the run's :class:`~hf_llpf.algorithms.certify.Certifier`.
        model: a module of the architecture (copied; the checked states are loaded into the copy).
        ts: the written points' t (ends included).
        phase: what the points' rows call them (the method's name), for the uncertified list.
        device: where the checks run (the examples' device).
    """

    def __init__(self, certifier: Certifier, model: nn.Module, ts: list[float], *, phase: str, device: Any):
        self.certifier, self.ts, self.phase = certifier, ts, phase
        self.work = copy.deepcopy(model).to(device).eval()
        self.segments = bool(certifier.config.certify_segments)
        self.known: dict[tuple[str, int], float] = {}  # the latest value measured at each position
        self.ends: dict[int, float] = {}

    def positions(self) -> list[tuple[str, int]]:
        """Every checked position in path order: ``("point", i)`` and ``("segment", i)`` (points i and i+1)."""
        out = []
        for i in range(len(self.ts)):
            out.append(("point", i))
            if self.segments and i + 1 < len(self.ts):
                out.append(("segment", i))
        return out

    def _loss(self, state: State, *, full: bool = False) -> float:
        """The certifier's loss of ``state``; without ``full`` a pass above the ceiling may stop early."""
        self.work.load_state_dict(state, strict=False)
        return self.certifier.loss(self.work, above=None if full else self.certifier.ceiling)

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs to check as the uninterrupted run does: the ends' values, the latest at each
        position (which decide the order of the next check)."""
        return {"known": dict(self.known), "ends": dict(self.ends)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.known = {(str(w), int(i)): float(v) for (w, i), v in state["known"].items()}
        self.ends = {int(i): float(v) for i, v in state["ends"].items()}

    def check_ends(self, state_at: Callable[[float], State]) -> list[dict]:
        """Measure the two ends once (training never moves them); returns those above the ceiling."""
        for i in (0, len(self.ts) - 1):
            self.ends[i] = self._loss(state_at(self.ts[i]), full=True)
        return [self.entry("point", i, v) for i, v in self.ends.items() if not v <= self.certifier.ceiling]

    def run(self, state_at: Callable[[float], State]) -> dict[str, Any]:
        """One check of the curve ``state_at``; stops at the first position above the ceiling.

        The :data:`HIGHEST_FIRST` positions found highest by the earlier checks are measured first (where a path
        that is not yet under is most likely above), then the rest in path order, so at most a few points' states
        are held at once.

        Returns:
            ``{"above": [the position found above] or [], "highest": the highest value measured, "at": where}``;
            a value above the ceiling is a lower bound (its pass stopped once it was decided).
        """
        cache: dict[int, State] = {}

        def state(i: int) -> State:
            if i not in cache:
                cache[i] = state_at(self.ts[i])
            return cache[i]

        def value(what: str, i: int) -> float:
            if what == "point":
                return self.ends[i] if i in self.ends else self._loss(state(i))
            later, earlier = state(i + 1), state(i)
            return self._loss({k: midpoint(v, earlier[k]) for k, v in later.items()})

        first = sorted(self.known, key=self.known.get, reverse=True)[:HIGHEST_FIRST]
        order = first + [p for p in self.positions() if p not in first]
        measured: dict[tuple[str, int], float] = {}
        for n, (what, i) in enumerate(order):
            if n >= len(first):  # walking in path order: points behind it are not needed again
                for j in [j for j in cache if j < i]:
                    del cache[j]
            measured[(what, i)] = loss = value(what, i)
            if not loss <= self.certifier.ceiling:
                break
        self.known.update(measured)
        at = max(measured, key=measured.get)
        above = [] if measured[at] <= self.certifier.ceiling else [self.entry(*at, measured[at])]
        return {"above": above, "highest": measured[at], "at": self.entry(*at, measured[at])}

    def entry(self, what: str, i: int, loss: float) -> dict:
        """An uncertified position, named as the run's rows name points (``tick``: the point's index)."""
        t = self.ts[i] if what == "point" else (self.ts[i] + self.ts[i + 1]) / 2
        tick = i if what == "point" else i + 1  # a segment is named by the point it ends at, as LLPF names it
        return {"tick": tick, "stage": 0, "phase": self.phase, "what": what, "loss": loss, "t": t}


def train_until_certified(
    check: CurveCheck,
    state_at: Callable[[float], State],
    train_round: Callable[[int], int],
    settings: CertifySettings,
    *,
    iterations: Callable[[], int],
    rounds: list[dict] | None = None,
    after_round: Callable[[list[dict]], None] | None = None,
    elapsed: float = 0.0,
) -> dict[str, Any]:
    """Rounds of ``train_round(n)`` (n SGD iterations; returns how many it spent) and checks, until every checked
    position is under the ceiling or ``settings.cap`` iterations are spent.

    Args:
        rounds: the rounds a resumed run already made (its ``check`` restored too: the ends are not measured again).
        after_round: called with the rounds so far after each round's training (the run's resume checkpoint).
        elapsed: seconds the run spent before this session (a resume), counted in the rounds' ``seconds``.

    Returns:
        ``{"certified", "stopped", "uncertified", "rounds", "cap", "cap_hit", "round_iters"}``; ``stopped`` is
        ``"certified"``, ``"cap"`` or ``"end above"``; ``uncertified``: what the last check found above.
    """
    start = time.perf_counter() - elapsed
    rounds = [] if rounds is None else rounds
    record = {"round_iters": settings.round_iters, "cap": settings.cap, "cap_hit": False, "rounds": rounds}
    ends = [] if check.ends else check.check_ends(state_at)
    if ends:
        return {**record, "certified": False, "stopped": "end above", "uncertified": ends}
    while True:
        found = check.run(state_at)
        rounds.append({"sgd_iters": iterations(), "seconds": round(time.perf_counter() - start, 3),
                       "certified": not found["above"], "highest": found["at"]})  # fmt: skip
        if not found["above"]:
            return {**record, "certified": True, "stopped": "certified", "uncertified": []}
        left = settings.cap - iterations()
        if left <= 0 or train_round(min(settings.round_iters, left)) == 0:
            # What stayed above is named by the final check, which measures every position in full.
            return {**record, "certified": False, "stopped": "cap", "cap_hit": True, "uncertified": found["above"]}
        if after_round is not None:
            after_round(rounds)


def close_baseline(certifier: Certifier, path: Any, model: nn.Module, rows: list[dict], outcome: dict, *,
                   device: Any, sgd_iters: int, started: float) -> dict[str, Any]:  # fmt: skip
    """The written path's certification record (``summary.run.certification``): LLPF's final check on the points as
    written (every point and segment midpoint on all the training examples), the points' sha256, the rounds.

    Certified only when the rounds accepted the path and the final check finds nothing above the ceiling.
    """
    certifier.recorded = {"point_sha256": point_hashes(path), "environment": environment(model, device)}
    final = certifier.final = final_check(certifier, path, model, device=device)
    record_final(rows, final)
    # The final check names every position above, each measured in full; the rounds' finding only when it names none.
    cert = certifier.summary([] if final["above"] else outcome["uncertified"])
    certified = cert["certified"] and outcome["certified"]
    seconds = round(time.perf_counter() - started, 3)
    cert.update(
        certified=certified,
        stopped=outcome["stopped"] if certified or outcome["stopped"] != "certified" else "final check",
        iters_to_certify=sgd_iters if certified else None,
        seconds_to_certify=seconds if certified else None,
        full_set_max=final["max"],
        ceiling_source=getattr(certifier, "source", "set"),
        checked_points=len(rows),
        **{k: outcome[k] for k in ("round_iters", "cap", "cap_hit", "rounds")},
    )
    cost = f"{sgd_iters} SGD iterations, {len(outcome['rounds'])} checks, {seconds:.1f} s"
    capped = f" (the cap of {outcome['cap']} SGD iterations was reached)" if outcome["cap_hit"] else ""
    logger.info(f"{path.root}: {certification_line(cert)}; {cost}{capped}", main_process_only=True)
    return cert


__all__ = [
    "CAP",
    "ROUND_ITERS",
    "CertifySettings",
    "CurveCheck",
    "baseline_certifier",
    "certify_settings",
    "close_baseline",
    "train_until_certified",
]
