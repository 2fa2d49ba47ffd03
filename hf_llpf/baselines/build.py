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
from dataclasses import asdict, is_dataclass, replace
from itertools import islice
from typing import Any

import torch
from accelerate import Accelerator

from hf_llpf.algorithms.registry import PathMethod, baseline_names, path_method
from hf_llpf.baselines.autoneb import AutoNEBSettings
from hf_llpf.baselines.bezier import BezierSettings
from hf_llpf.baselines.certify import (
    CertifySettings,
    CurveCheck,
    baseline_certifier,
    certify_settings,
    close_baseline,
    train_until_certified,
)
from hf_llpf.baselines.pathdir import BaselineRun, PreparedEnds, State, TrainedCurve, fixed_ts, state_of, write_path
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


def __getattr__(name: str) -> tuple[str, ...]:
    """``BASELINES`` and ``TRAINED`` (the curves, and those that train), read from the registry when asked: every
    method registers itself (:mod:`hf_llpf.algorithms.registry`)."""
    if name == "BASELINES":
        return baseline_names()
    if name == "TRAINED":
        return tuple(n for n in baseline_names() if path_method(n).trains)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def method_settings(method: str | type[PathMethod], given: Any, seed: int) -> Any:
    """Checked settings of ``method``'s own ``settings`` class from an instance, a dict of its fields or None (the
    defaults); ``seed`` is the default of a ``seed`` field. ``None`` for a method without settings.

    Raises:
        UnknownNameError: an unknown field. ConfigError: an invalid value, or settings given to a method with none.
    """
    entry = path_method(method) if isinstance(method, str) else method
    cls = entry.settings
    if cls is None:
        if given is not None:
            raise ConfigError(f"{entry.name} settings={given!r}: {entry.name} has no settings of its own")
        return None
    fields = list(cls.__dataclass_fields__)
    defaults = {"seed": seed} if "seed" in fields else {}
    if given is None:
        given = cls(**defaults)
    elif isinstance(given, dict):
        unknown = sorted(set(given) - set(fields))
        if unknown:
            raise UnknownNameError(f"{entry.name} setting", unknown[0], fields)
        given = cls(**{**defaults, **given})
    elif not isinstance(given, cls):
        raise ConfigError(f"{entry.name} settings={type(given).__name__}: expected {cls.__name__}, a dict or None")
    problems = given.problems()
    if problems:
        raise ConfigError(problems)
    return given


def bezier_settings(bezier: BezierSettings | dict | None, seed: int) -> BezierSettings:
    """Checked :class:`BezierSettings` from settings, a dict of their fields or None (the defaults)."""
    return method_settings("bezier", bezier, seed)


def autoneb_settings(settings: AutoNEBSettings | dict | None, seed: int) -> AutoNEBSettings:
    """Checked :class:`~hf_llpf.baselines.autoneb.AutoNEBSettings` from settings, a dict of their fields or None."""
    return method_settings("autoneb", settings, seed)


def build_baseline(
    method: str,
    model_a: str | os.PathLike | torch.nn.Module | Endpoint,
    model_b: str | os.PathLike | torch.nn.Module | Endpoint,
    train_data: Any = None,
    *,
    run_dir: str | os.PathLike,
    config: Any = None,
    points: int = 31,
    settings: Any = None,
    bezier: BezierSettings | dict | None = None,
    autoneb: AutoNEBSettings | dict | None = None,
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
        method: a registered curve (:func:`hf_llpf.algorithms.registry.baseline_names`: ``linear``, ``slerp``,
            ``bezier``, ``autoneb``, ``weight-matching``, and any method registered since).
        model_a, model_b: endpoint specs, modules or Endpoints (as for :func:`hf_llpf.connect`).
        train_data: the training data (as for :func:`hf_llpf.connect`; ``None``: ``config.data``): Bézier trains
            on it, every method recomputes BatchNorm statistics on it when asked, weight matching checks its ends
            on one batch of it.
        config: a :class:`~hf_llpf.config.ConnectConfig` or dict: its ``data``, ``batch_size`` and ``seed`` are used.
        points: points written, ends included, at t = i/(points−1).
        settings: the method's own settings (an instance of its ``settings`` class or a dict of its fields).
        bezier: :class:`~hf_llpf.baselines.bezier.BezierSettings` or a dict of its fields (``iters``, ``lr``, ...),
            for ``bezier`` when ``settings`` is not given.
        autoneb: :class:`~hf_llpf.baselines.autoneb.AutoNEBSettings` or a dict of its fields (``iters``, ...), for
            ``autoneb`` when ``settings`` is not given.
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
    entry = path_method(method, kind="baseline method", among=list(baseline_names()))
    ts = fixed_ts(points)
    rounds = certify_settings(certify)
    check_exist(run_dir, exist, inside=inside, protected=local_specs(model_a, model_b, train_data))  # before any work
    config = resolve_config(config)
    given = settings if settings is not None else {"bezier": bezier, "autoneb": autoneb}.get(method)
    own = method_settings(entry, given, config.seed)
    if entry.trains:
        check_rounds(entry, rounds, own, ceiling)
    seed_everything(config.seed)
    start = time.perf_counter()
    ends, assets = _prepare_ends(entry, model_a, model_b, train_data, config, own, points, recalibrate_bn)
    finish = None
    if entry.trains:
        ends.device = device or Accelerator(cpu=cpu_only()).device
        certifier = baseline_certifier([ends.ea.model, ends.eb.model], train_data, ends.loader, ends.bundle, config,
                                       ceiling=ceiling, loss_fn=loss_fn, device=ends.device)  # fmt: skip
        ends.loss_fn = loss_fn
        trained = entry().build(ends)
        state_at, finish = _train(trained, method, own, ends.record, certifier, rounds, ts, ends.ea, ends.device,
                                  start)  # fmt: skip
    else:
        state_at = entry().build(ends)
        if recalibrate_bn:
            state_at = _recalibrated(state_at, ends.ea.model, ends.batches)
    ends.record.settings["recalibrate_bn"] = recalibrate_bn or entry.trains
    return write_path(run_dir, ends.ea, ends.eb, ts, state_at, ends.record, exist=exist, command=command,
                      seconds=time.perf_counter() - start, assets=assets, inside=inside, finish=finish)  # fmt: skip


def _prepare_ends(entry: type[PathMethod], model_a: Any, model_b: Any, train_data: Any, config: Any, own: Any,
                  points: int, recalibrate_bn: bool) -> tuple[PreparedEnds, Any]:  # fmt: skip
    """The ends loaded and checked, the data, the ends' data config and assets, and the BatchNorm batches (a
    trained method's always, another's when ``recalibrate_bn``), in the order the seeded randomness depends on."""
    ea, eb = resolve_endpoint(model_a), resolve_endpoint(model_b)
    check_finite(ea, label="A")
    check_finite(eb, label="B")
    check_endpoints_match(ea.model, eb.model)
    loader, bundle, data_config = prepare_data(train_data, config, ea, eb)
    # As connect does: timm points record the data they describe, and the companion files travel (hf_llpf.run.assets).
    described = run_data_config(bundle, example_batch(loader), data_config.data)
    ea, eb = with_data_config(ea, described), with_data_config(eb, described)
    assets = run_assets(ea, eb, bundle)
    data = bundle.config.model_dump(mode="json") if bundle is not None else None
    sa, sb = state_of(ea.model), state_of(eb.model)
    record = BaselineRun(method=entry.name, data=data, seed=config.seed, settings={"points": points})
    recal = recalibrate_bn or entry.trains
    batches = _recal_batches(loader, bundle, config, getattr(own, "recal_batches", 8)) if recal else []
    return PreparedEnds(ea, eb, sa, sb, loader, bundle, config, own, batches, record), assets


def _train(trained: TrainedCurve, method: str, settings: Any, run: BaselineRun, certifier: Any,
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


def check_rounds(method: str | type[PathMethod], rounds: CertifySettings, settings: Any, ceiling: Any) -> None:
    """Refuse a ceiling that is not a positive number, and rounds too short for AutoNEB (a round must pay for one
    NEB step of the largest band), every problem at once.

    Raises:
        ConfigError: naming each value and what is allowed.
    """
    entry = path_method(method) if isinstance(method, str) else method
    problems = []
    number = isinstance(ceiling, (int, float)) and not isinstance(ceiling, bool)
    if ceiling is not None and not (number and 0 < ceiling < math.inf):
        problems.append(f"ceiling={ceiling!r}: must be a positive number, or None (the settings' loss_ceiling)")
    problems += entry.round_problems(rounds, settings)
    if problems:
        raise ConfigError(problems)


def with_iters(settings: Any, iters: int) -> Any:
    """``settings`` (a trained method's settings, a dict of their fields or None) with ``iters`` set (a budget
    matched to another method's SGD iterations)."""
    if is_dataclass(settings) and not isinstance(settings, type):
        return replace(settings, iters=iters)
    if settings is not None and not isinstance(settings, dict):
        raise ConfigError(f"settings={type(settings).__name__}: expected a method's settings, a dict or None")
    return {**(settings or {}), "iters": iters}


__all__ = [
    "autoneb_settings",
    "bezier_settings",
    "build_baseline",
    "method_settings",
    "with_iters",
]
