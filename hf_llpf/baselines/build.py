"""Building a baseline's path between two endpoints: :func:`build_baseline` (docs/baselines.md).

Resolves the endpoints and the training data the way :func:`hf_llpf.connect` does, runs one method and writes
its points at fixed t as a run directory (:mod:`hf_llpf.baselines.pathdir`), which is then judged by the same
evaluator as an LLPF path (:func:`hf_llpf.evaluate_run`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import islice
from typing import Any

import torch
from accelerate import Accelerator

import hf_llpf.baselines.autoneb as neb
from hf_llpf.algorithms.repair import batch_stream
from hf_llpf.baselines.bezier import BezierCurve, BezierSettings, check
from hf_llpf.baselines.certify import (
    CertifySettings,
    CurveCheck,
    baseline_certifier,
    certify_settings,
    close_baseline,
    train_until_certified,
)
from hf_llpf.baselines.pathdir import BaselineRun, State, fixed_ts, state_of, write_path
from hf_llpf.baselines.permutation import permutation_spec
from hf_llpf.baselines.slerp import lerp_state, slerp_state
from hf_llpf.baselines.weight_matching import apply_permutation, ends_check, match_weights
from hf_llpf.batches import LossFn, cpu_only
from hf_llpf.errors import ConfigError, UnknownNameError
from hf_llpf.evaluation.recalibration import recalibrate_bn
from hf_llpf.models.endpoints import Endpoint, check_endpoints_match, check_finite
from hf_llpf.models.timm_config import run_data_config, with_data_config
from hf_llpf.run import Path
from hf_llpf.run.assets import run_assets
from hf_llpf.run.inputs import example_batch, local_specs, prepare_data, resolve_config, resolve_endpoint
from hf_llpf.run.rundir import check_exist
from hf_llpf.run.seeding import seed_everything

BASELINES = ("linear", "slerp", "bezier", "autoneb", "weight-matching")
TRAINED = ("bezier", "autoneb")  # the baselines that train (SGD), their BatchNorm statistics recomputed at each t


def _recal_batches(loader: Any, bundle: Any, config: Any, n: int) -> list:
    """``n`` unaugmented training batches for recomputing BatchNorm statistics (the same for every point)."""
    if bundle is not None:
        loader = bundle.loader("train", batch_size=config.batch_size, seed=config.seed, augment=False)
    return list(islice(iter(loader), n))


def _recalibrated(state_at: Callable[[float], State], model: torch.nn.Module, batches: list) -> Callable:
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


def bezier_settings(bezier: BezierSettings | dict | None, seed: int) -> BezierSettings:
    """Checked :class:`BezierSettings` from settings, a dict of their fields or None (the defaults).

    Raises:
        UnknownNameError: an unknown field. ConfigError: an invalid value.
    """
    if bezier is None:
        return BezierSettings(seed=seed)
    if isinstance(bezier, dict):
        unknown = sorted(set(bezier) - set(BezierSettings.__dataclass_fields__))
        if unknown:
            raise UnknownNameError("bezier setting", unknown[0], list(BezierSettings.__dataclass_fields__))
        bezier = BezierSettings(**{"seed": seed, **bezier})
    check(bezier)
    return bezier


def autoneb_settings(settings: neb.AutoNEBSettings | dict | None, seed: int) -> neb.AutoNEBSettings:
    """Checked :class:`~hf_llpf.baselines.autoneb.AutoNEBSettings` from settings, a dict of their fields or None.

    Raises:
        UnknownNameError: an unknown field. ConfigError: an invalid value.
    """
    fields = list(neb.AutoNEBSettings.__dataclass_fields__)
    if settings is None:
        settings = neb.AutoNEBSettings(seed=seed)
    elif isinstance(settings, dict):
        unknown = sorted(set(settings) - set(fields))
        if unknown:
            raise UnknownNameError("autoneb setting", unknown[0], fields)
        settings = neb.AutoNEBSettings(**{"seed": seed, **settings})
    neb.check(settings)
    return settings


def build_baseline(
    method: str,
    model_a: str | os.PathLike | torch.nn.Module | Endpoint,
    model_b: str | os.PathLike | torch.nn.Module | Endpoint,
    train_data: Any = None,
    *,
    run_dir: str | os.PathLike,
    config: Any = None,
    points: int = 31,
    bezier: BezierSettings | dict | None = None,
    autoneb: neb.AutoNEBSettings | dict | None = None,
    ceiling: float | None = None,
    certify: CertifySettings | dict | None = None,
    recalibrate_bn: bool = False,
    loss_fn: LossFn | None = None,
    exist: str = "error",
    device: torch.device | str | None = None,
    command: str | None = None,
    inside: str | os.PathLike | None = None,
) -> Path:
    """Build the path of one baseline from θ_A to θ_B and write it to ``run_dir`` (points at fixed t).

    Args:
        method: ``linear``, ``slerp``, ``bezier``, ``autoneb`` or ``weight-matching``.
        model_a, model_b: endpoint specs, modules or Endpoints (as for :func:`hf_llpf.connect`).
        train_data: the training data (as for :func:`hf_llpf.connect`; ``None``: ``config.data``): Bézier trains
            on it, every method recomputes BatchNorm statistics on it when asked, weight matching checks its ends
            on one batch of it.
        config: a :class:`~hf_llpf.config.ConnectConfig` or dict: its ``data``, ``batch_size`` and ``seed`` are used.
        points: points written, ends included, at t = i/(points−1).
        bezier: :class:`~hf_llpf.baselines.bezier.BezierSettings` or a dict of its fields (``iters``, ``lr``, ...).
        autoneb: :class:`~hf_llpf.baselines.autoneb.AutoNEBSettings` or a dict of its fields (``iters``, ...).
        ceiling: the loss ceiling Bézier and AutoNEB are certified under (``compare`` passes LLPF's run's); ``None``:
            ``config.loss_ceiling`` (``auto``: LLPF's rule from the endpoints; null: no certificate, and they train
            their fixed ``iters``). Under a ceiling they train in rounds until the certificate accepts the path or
            ``certify``'s cap (docs/baselines.md, "Certified baselines").
        certify: :class:`~hf_llpf.baselines.certify.CertifySettings` or a dict (``round_iters``, ``cap``).
        recalibrate_bn: recompute the BatchNorm statistics of every interior point (linear, SLERP, weight matching:
            the "reset" of REPAIR, Jordan et al. 2022); Bézier always does (Garipov et al. 2018).
        loss_fn: the training loss of Bézier (default: cross-entropy / ``outputs.loss``).
        exist: ``"error"`` or ``"overwrite"``.
        device: where Bézier trains (default: the device Accelerate chooses).
        command: the command line, recorded.
        inside: the run directory ``run_dir`` lies in, when it is one's baseline (no link may lie between them).

    Returns:
        The :class:`~hf_llpf.run.Path`.

    Raises:
        UnknownNameError: an unknown method.
        NotApplicableError: weight matching on a model whose permutations cannot be read from its graph.
        ConfigError: invalid settings.
    """
    if method not in BASELINES:
        raise UnknownNameError("baseline method", method, BASELINES)
    ts = fixed_ts(points)
    rounds = certify_settings(certify)
    check_exist(run_dir, exist, inside=inside, protected=local_specs(model_a, model_b, train_data))  # before any work
    config = resolve_config(config)
    settings = {"bezier": lambda: bezier_settings(bezier, config.seed),
                "autoneb": lambda: autoneb_settings(autoneb, config.seed)}.get(method, lambda: None)()  # fmt: skip
    if method in TRAINED:
        check_rounds(method, rounds, settings, ceiling)
    seed_everything(config.seed)
    start = time.perf_counter()
    ea, eb = resolve_endpoint(model_a), resolve_endpoint(model_b)
    check_finite(ea, label="A")
    check_finite(eb, label="B")
    check_endpoints_match(ea.model, eb.model)
    loader, bundle, data_config = prepare_data(train_data, config, ea, eb)
    # As connect does: timm points record the data they describe, and the companion files travel (hf_llpf.assets).
    described = run_data_config(bundle, example_batch(loader), data_config.data)
    ea, eb = with_data_config(ea, described), with_data_config(eb, described)
    assets = run_assets(ea, eb, bundle)
    data = bundle.config.model_dump(mode="json") if bundle is not None else None
    sa, sb = state_of(ea.model), state_of(eb.model)
    run = BaselineRun(method=method, data=data, seed=config.seed, settings={"points": points})
    recal = recalibrate_bn or method in TRAINED
    batches = _recal_batches(loader, bundle, config, settings.recal_batches if settings else 8) if recal else []
    finish = None
    if method in ("linear", "slerp"):
        state_at = (lambda t: lerp_state(t, sa, sb)) if method == "linear" else (lambda t: slerp_state(t, sa, sb))
    elif method == "weight-matching":
        state_at = _weight_matching(ea, sa, sb, loader, run, seed=config.seed)
    else:
        device = device or Accelerator(cpu=cpu_only()).device
        certifier = baseline_certifier([ea.model, eb.model], train_data, loader, bundle, config, ceiling=ceiling,
                                       loss_fn=loss_fn, device=device)  # fmt: skip
        make = _autoneb if method == "autoneb" else _bezier
        trained = make(ea, sa, sb, loader, batches, settings, loss_fn=loss_fn, device=device)
        state_at, finish = _train(trained, method, settings, run, certifier, rounds, ts, ea, device, start)
    if recal and method not in TRAINED:
        state_at = _recalibrated(state_at, ea.model, batches)
    run.settings["recalibrate_bn"] = recal
    return write_path(run_dir, ea, eb, ts, state_at, run, exist=exist, command=command,
                      seconds=time.perf_counter() - start, assets=assets, inside=inside, finish=finish)  # fmt: skip


def _weight_matching(ea: Endpoint, sa: State, sb: State, loader: Any, run: BaselineRun, *, seed: int) -> Callable:
    """Match θ_B to θ_A; ``t -> (1−t)·θ_A + t·π(θ_B)``. Records the permutation and the ends check in ``run``."""
    example = example_batch(loader)
    inputs = example[0] if isinstance(example, (tuple, list)) else example
    spec = permutation_spec(ea.model, inputs)
    perms, sweeps = match_weights(sa, sb, spec, seed=seed)
    spb = apply_permutation(sb, spec, perms)
    check = ends_check(ea.model, sb, spb, inputs)
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    total = sum(len(p) for p in perms.values())
    run.end_b = "π(θ_B): θ_B with its hidden units permuted (same function, different weights)"
    run.summary["weight_matching"] = {
        "spaces": {k: v["size"] for k, v in spec.spaces.items()},
        "sweeps": sweeps,
        "units_moved": moved,
        "units": total,
        "ends_check": check,
    }
    return lambda t: lerp_state(t, sa, spb)


@dataclass
class _Trained:
    """A trained baseline's curve, whichever the method: how to train it and read it."""

    state_at: Callable[[float], State]  # the written point at t (BatchNorm statistics recomputed)
    train_budget: Callable[[], list[float]]  # the fixed-budget training (no ceiling); returns the losses
    train_round: Callable[[int], list[float]]  # one round of at most n SGD iterations; returns the losses
    iterations: Callable[[], int]
    summary: Callable[[], dict]  # the method's own figures for summary.run.<method>


def _bezier(ea: Endpoint, sa: State, sb: State, loader: Any, batches: list, settings: BezierSettings, *,
            loss_fn: LossFn | None, device: Any) -> _Trained:  # fmt: skip
    """The Bézier curve, its control point trained on ``loader``; points recalibrated on ``batches``."""
    curve, stream = BezierCurve(ea.model, sa, sb, device=device), batch_stream(loader)
    return _Trained(
        state_at=lambda t: curve.state_at(t, batches),
        train_budget=lambda: curve.train(stream, settings, loss_fn=loss_fn),
        train_round=lambda n: curve.train(stream, settings, loss_fn=loss_fn, iters=n),
        iterations=lambda: curve.iterations,
        summary=dict,
    )


def _autoneb(ea: Endpoint, sa: State, sb: State, loader: Any, batches: list, settings: neb.AutoNEBSettings, *,
             loss_fn: LossFn | None, device: Any) -> _Trained:  # fmt: skip
    """The elastic band, trained on ``loader``; points recalibrated on ``batches``."""
    band, stream = neb.ElasticBand(ea.model, sa, sb, device=device), batch_stream(loader)
    eval_batches = batches[: settings.eval_batches]
    return _Trained(
        state_at=lambda t: band.state_at(t, batches),
        train_budget=lambda: band.train(stream, eval_batches, settings, loss_fn=loss_fn),
        train_round=lambda n: band.train_round(stream, eval_batches, n, settings, loss_fn=loss_fn),
        iterations=lambda: band.iterations,
        summary=lambda: {"pivots": len(band.pivots) - 2, "inserted_per_cycle": band.inserted},
    )


def _train(trained: _Trained, method: str, settings: Any, run: BaselineRun, certifier: Any,
           rounds: CertifySettings, ts: list[float], ea: Endpoint, device: Any, start: float) -> tuple:  # fmt: skip
    """Train ``trained``: its fixed budget without a certifier, else in rounds until certified or the cap. Records
    the method's figures in ``run``; returns ``state_at`` and the write's ``finish`` (the certification record)."""
    # Under a ceiling the fixed budget (iters, spread over AutoNEB's cycles) is not used: the rounds and the cap are.
    unused = () if certifier is None else ("iters", "cycles")
    run.settings[method] = {k: v for k, v in asdict(settings).items() if k not in unused}
    if certifier is None:
        losses = trained.train_budget()
        finish = None
    else:
        losses: list[float] = []

        def train_round(n: int) -> int:
            before = trained.iterations()
            losses.extend(trained.train_round(n))
            return trained.iterations() - before

        check = CurveCheck(certifier, ea.model, ts, phase=method, device=device)
        outcome = train_until_certified(check, trained.state_at, train_round, rounds, iterations=trained.iterations)
        run.settings["certify"] = asdict(rounds)

        def finish(path: Any, rows: list[dict]) -> dict:
            return {"certification": close_baseline(certifier, path, ea.model, rows, outcome, device=device,
                                                    sgd_iters=trained.iterations(), started=start)}  # fmt: skip

    run.sgd_iters = trained.iterations()
    tail = losses[-min(len(losses), 50) :]
    run.summary[method] = {"final_train_loss": sum(tail) / len(tail) if tail else None, **trained.summary()}
    return trained.state_at, finish


def check_rounds(method: str, rounds: CertifySettings, settings: Any, ceiling: Any) -> None:
    """Refuse a ceiling that is not a positive number, and rounds too short for AutoNEB (a round must pay for one
    NEB step of the largest band), every problem at once.

    Raises:
        ConfigError: naming each value and what is allowed.
    """
    problems = []
    number = isinstance(ceiling, (int, float)) and not isinstance(ceiling, bool)
    if ceiling is not None and not (number and 0 < ceiling < math.inf):
        problems.append(f"ceiling={ceiling!r}: must be a positive number, or None (the settings' loss_ceiling)")
    if method == "autoneb" and rounds.round_iters < settings.max_pivots:
        problems.append(
            f"certify round_iters={rounds.round_iters}: must be >= autoneb max_pivots ({settings.max_pivots}), so "
            "that every round moves each pivot at least once"
        )
    if problems:
        raise ConfigError(problems)


def with_iters(settings: BezierSettings | dict | None, iters: int) -> dict | BezierSettings:
    """``settings`` with ``iters`` set (a budget matched to another method's SGD iterations)."""
    if isinstance(settings, BezierSettings):
        return replace(settings, iters=iters)
    if settings is not None and not isinstance(settings, dict):
        raise ConfigError(f"bezier={type(settings).__name__}: expected BezierSettings, a dict or None")
    return {**(settings or {}), "iters": iters}


__all__ = ["BASELINES", "TRAINED", "autoneb_settings", "bezier_settings", "build_baseline", "with_iters"]
