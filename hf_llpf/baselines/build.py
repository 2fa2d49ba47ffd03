"""Building a baseline's path between two endpoints: :func:`build_baseline` (docs/baselines.md).

Checks the settings, then runs one registered curve through the one run preparation of :func:`hf_llpf.connect`
(:mod:`hf_llpf.baselines.curve_run`) and writes its points at fixed t as a run directory
(:mod:`hf_llpf.baselines.pathdir`), which is then judged by the same evaluator as an LLPF path
(:func:`hf_llpf.evaluate_run`).
"""

from __future__ import annotations

import math
import os
from dataclasses import is_dataclass, replace
from typing import Any

import torch

from hf_llpf.algorithms.registry import PathMethod, baseline_names, method_names, path_method
from hf_llpf.baselines.autoneb import AutoNEBSettings
from hf_llpf.baselines.bezier import BezierSettings
from hf_llpf.baselines.certify import CertifySettings, certify_settings
from hf_llpf.baselines.curve_run import CurveJob, run_curve
from hf_llpf.baselines.pathdir import fixed_ts
from hf_llpf.batches import LossFn
from hf_llpf.devices.accelerator import make_accelerator
from hf_llpf.errors import ConfigError, UnknownNameError
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run import Path
from hf_llpf.run.inputs import local_specs, resolve_config
from hf_llpf.run.rundir import check_exist

CURVE_POINTS = 31  # points of a curve, ends included, when neither the caller nor an LLPF run says how many


def __getattr__(name: str) -> tuple[str, ...]:
    """``BASELINES`` and ``TRAINED`` (the curves, and those that train), read from the registry when asked: every
    method registers itself (:mod:`hf_llpf.algorithms.registry`)."""
    if name == "BASELINES":
        return baseline_names()
    if name == "TRAINED":
        return tuple(n for n in baseline_names() if path_method(n).trains)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    points: int = CURVE_POINTS,
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
        train_data: as for :func:`hf_llpf.connect`: the trained curves train on it, BatchNorm statistics are
            recomputed on it, weight matching checks its ends on one batch of it.
        config: a :class:`~hf_llpf.config.ConnectConfig` or dict: its ``data``, ``batch_size`` and ``seed`` are used.
        points: points written, ends included, at t = i/(points−1).
        settings: the method's own settings (an instance of its ``settings`` class or a dict of its fields).
        bezier, autoneb: that method's settings when ``settings`` is not given (as ``settings``).
        ceiling: the loss ceiling Bézier and AutoNEB are certified under (``compare`` passes LLPF's run's); ``None``:
            ``config.loss_ceiling`` (``auto``: LLPF's rule from the endpoints; null: no certificate, and they train
            their fixed ``iters``). Under a ceiling they train in rounds until the certificate accepts the path or
            ``certify``'s cap (docs/baselines.md, "Certified baselines").
        certify: :class:`~hf_llpf.baselines.certify.CertifySettings` or a dict (``round_iters``, ``cap``).
        recalibrate_bn: recompute the BatchNorm statistics of every interior point (linear, SLERP, weight matching:
            the "reset" of REPAIR, Jordan et al. 2022); Bézier always does (Garipov et al. 2018).
        loss_fn, device: the trained curves' loss (default: cross-entropy / ``outputs.loss``) and device.
        exist: ``"error"``, ``"overwrite"`` or ``"resume"`` (a trained curve continues from its checkpoint).
        command: the command line, recorded.
        inside: the run directory ``run_dir`` lies in, when it is one's baseline (no link may lie between them).

    Returns:
        The :class:`~hf_llpf.run.Path`.

    Raises:
        UnknownNameError: an unknown method. ConfigError: invalid settings. NotApplicableError: weight matching on
            a model whose permutations cannot be read from its graph.
    """
    entry = path_method(method, kind="baseline method", among=list(baseline_names()))
    given = settings if settings is not None else {"bezier": bezier, "autoneb": autoneb}.get(method)
    job = curve_job(entry, config, points=points, settings=given, ceiling=ceiling, certify=certify,
                    recalibrate_bn=recalibrate_bn, loss_fn=loss_fn, exist=exist, device=device, command=command,
                    inside=inside)  # fmt: skip
    check_exist(run_dir, exist, inside=inside, protected=local_specs(model_a, model_b, train_data))  # before any work
    return run_curve(job, model_a, model_b, train_data, resolve_config(config), run_dir)


def curve_job(entry: type[PathMethod], config: Any, *, points: int, settings: Any, ceiling: Any = None,
              certify: Any = None, device: Any = None, **options: Any) -> CurveJob:  # fmt: skip
    """The checked :class:`~hf_llpf.baselines.curve_run.CurveJob` of a curve (``options``: its other fields), every
    setting refused before the endpoints and data load.

    Raises:
        ConfigError: invalid points, settings, certification rounds or ceiling.
    """
    fixed_ts(points)
    rounds = certify_settings(certify)
    own = method_settings(entry, settings, resolve_config(config).seed)
    if entry.trains:
        check_rounds(entry, rounds, own, ceiling)
        device = device or make_accelerator().device
    return CurveJob(entry, points, own, rounds, ceiling=ceiling, device=device, **options)


def connect_curve(entry: type[PathMethod] | None, model_a: Any, model_b: Any, train_data: Any, config: Any, *,
                  run_dir: Any, settings: Any, points: int | None, certify: Any, loss_fn: Any, exist: str,
                  accelerator: Any, command: str | None, protected: Any) -> Path:  # fmt: skip
    """:func:`hf_llpf.connect` for a curve method (``config.method``): its path written at fixed t through the one
    run preparation, a trained curve certified under ``config.loss_ceiling`` in rounds (or its fixed budget without
    one) and resumable with ``exist="resume"`` (:mod:`hf_llpf.baselines.curve_run`). Runs on one process, on the
    ``accelerator``'s device (default: the one Accelerate chooses).

    Raises:
        ConfigError: ``settings``, ``points`` or ``certify`` for an LLPF method; sharding; invalid settings.
        RunDirectoryError: ``run_dir`` cannot be written under ``exist`` (checked before anything is loaded).
    """
    if entry is None:
        raise ConfigError(
            f"method={config.method!r}: settings=, points= and certify= are a curve method's "
            f"({', '.join(n for n in baseline_names() if n != 'linear')}); an LLPF method takes its settings from "
            "config"
        )
    if config.sharding != "none":
        raise ConfigError(
            f"devices.sharding={config.sharding!r}: a curve ({entry.name}) runs unsharded; allowed: 'none'"
        )
    device = accelerator.device if accelerator is not None else None
    job = curve_job(entry, config, points=points or CURVE_POINTS, settings=settings, certify=certify, loss_fn=loss_fn,
                    exist=exist, device=device, command=command, protected=protected)  # fmt: skip
    check_exist(run_dir, exist, protected=[*protected, *local_specs(model_a, model_b, train_data, config.data.source)])
    return run_curve(job, model_a, model_b, train_data, config, run_dir)


def with_method(config: Any, method: str) -> Any:
    """``config`` (settings, a dict of them or ``None``) whose ``method`` is ``method``.

    Raises:
        ConfigError: ``method`` is not a name.
    """
    if not isinstance(method, str) or not method:
        raise ConfigError(f"method={method!r}: expected a registered method's name ({', '.join(method_names())})")
    return resolve_config(config).model_copy(update={"method": method})


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
    "CURVE_POINTS",
    "connect_curve",
    "curve_job",
    "method_settings",
    "with_iters",
    "with_method",
]
