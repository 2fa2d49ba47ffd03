"""Writing a baseline's path: points at fixed t in the run-directory format of an LLPF run (docs/baselines.md).

A baseline (linear, SLERP, Bézier, weight matching) is a curve θ(t), t ∈ [0, 1]; its path is the curve
sampled at fixed t and written exactly like an LLPF path (``points/t_NNNNNN``, ``path_metrics.json``,
``endpoints.json``, ``llpf_config.yaml``), so :class:`hf_llpf.run.Path`, :func:`hf_llpf.evaluate_path`,
``hf-llpf evaluate``, ``export`` and ``push`` work on it unchanged; its resume state, when it has one, is in
``checkpoint/`` (never published). The point's ``tick`` is its index; ``t`` is recorded beside it, and
``llpf_config.yaml`` holds the method's own settings (plus ``data``, which the evaluation reads), not LLPF
settings.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import yaml
from torch import nn

from hf_llpf import __version__
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.interpolation import load_point, param_names
from hf_llpf.evaluation.walk import l2_step
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run import Path, PointRecord, RunWriter
from hf_llpf.run.assets import Assets, write_assets
from hf_llpf.run.layout import CONFIG_YAML, ENDPOINTS_JSON

State = dict[str, torch.Tensor]


def fixed_ts(points: int) -> list[float]:
    """``points`` evenly spaced t in [0, 1], ends included (exactly 0.0 and 1.0).

    Raises:
        ConfigError: fewer than 2 points.
    """
    if not isinstance(points, int) or points < 2:
        raise ConfigError(f"points={points!r}: must be a whole number of at least 2 (the two ends)")
    return [i / (points - 1) for i in range(points)]


def state_of(model: nn.Module) -> State:
    """A detached copy of ``model``'s tensors on the CPU (parameters and buffers)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


@dataclass
class BaselineRun:
    """What a baseline writes besides its points.

    Attributes:
        method: the method's name (``linear``, ``slerp``, ``bezier``, ``weight-matching``).
        settings: the method's own settings (written to ``llpf_config.yaml`` under ``baseline``).
        data: the data spec as a dict (``DataConfig.model_dump``), or ``None`` (the evaluation then needs data=).
        seed: the seed the method used.
        sgd_iters: SGD iterations the method spent (0 for closed-form curves).
        summary: extra figures for ``path_metrics.json``'s ``summary["run"]`` (e.g. the ends check).
        end_b: what the last point is, when it is not θ_B itself (weight matching: "π(θ_B)").
    """

    method: str
    settings: dict[str, Any] = field(default_factory=dict)
    data: dict | None = None
    seed: int = 0
    sgd_iters: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    end_b: str | None = None


@dataclass
class PreparedEnds:
    """What a curve method builds on (:meth:`hf_llpf.algorithms.registry.PathMethod.build`), made from the prepared
    run by :func:`hf_llpf.baselines.curve_run.run_curve` (``build_baseline`` and ``connect --method bezier``).

    Attributes:
        ea, eb: θ_A and θ_B, each carrying the run's data config; ``sa``, ``sb``: their tensors on the CPU.
        loader: the training batches; ``bundle``: the loaded data (``None`` for Python batches).
        config: the run's settings (``seed``, ``batch_size``, ``data``).
        settings: the method's own settings (an instance of its ``settings`` class), or ``None``.
        batches: the training batches BatchNorm statistics are recomputed on (empty when they are not).
        record: what the run writes besides its points; a method adds its own figures to ``record.summary``.
        loss_fn: the training loss (``None``: cross-entropy / ``outputs.loss``); ``device``: where a method trains.
    """

    ea: Endpoint
    eb: Endpoint
    sa: State
    sb: State
    loader: Any
    bundle: Any
    config: Any
    settings: Any
    batches: list
    record: BaselineRun
    loss_fn: Any = None
    device: Any = None


@dataclass
class TrainedCurve:
    """A trained method's curve (what :class:`~hf_llpf.algorithms.registry.TrainedMethod` ``.build`` returns):
    how to train it, read it, and save and restore its training for a resume (the last three optional: a curve
    without them trains its budget in one call and starts again on a resume)."""

    state_at: Callable[[float], State]  # the written point at t (BatchNorm statistics recomputed)
    train_budget: Callable[[], list[float]]  # the fixed-budget training (no ceiling); returns the losses
    train_round: Callable[[int], list[float]]  # one round of at most n SGD iterations; returns the losses
    iterations: Callable[[], int]
    summary: Callable[[], dict]  # the method's own figures for summary.run.<method>
    budget_chunk: Callable[[], list[float] | None] | None = None  # the budget's next chunk; None once spent
    state_dict: Callable[[], dict] | None = None  # the training's state (tensors and scalars), for a checkpoint
    load_state_dict: Callable[[dict], None] | None = None  # continue from state_dict's output


CHUNK = 50  # SGD iterations of the fixed budget between two resume checkpoints


class ResumableBatches:
    """The endless training batches of a curve (:func:`~hf_llpf.algorithms.repair.batch_stream`), whose position a
    checkpoint saves: a :class:`~hf_llpf.data.loader.SeededLoader`'s own position, else the batches drawn so far,
    drawn again on a resume (the same batches when the source gives the same ones each pass, as a list does)."""

    def __init__(self, loader: Any):
        from hf_llpf.algorithms.repair import batch_stream

        self.loader, self._make = loader, batch_stream
        self.stream, self.drawn = batch_stream(loader), 0

    def __iter__(self) -> ResumableBatches:
        return self

    def __next__(self) -> Any:
        self.drawn += 1
        return next(self.stream)

    def state_dict(self) -> dict[str, Any]:
        """The position: batches drawn, and a seeded loader's own position."""
        from hf_llpf.data.loader import SeededLoader

        own = self.loader.state_dict() if isinstance(self.loader, SeededLoader) else None
        return {"drawn": self.drawn, "loader": own}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.drawn = int(state["drawn"])
        if state.get("loader") is not None:
            self.loader.load_state_dict(state["loader"])
            self.stream = self._make(self.loader)
            return
        from hf_llpf.algorithms.repair import resumed_stream

        self.stream = resumed_stream(self.loader, self.drawn)


def write_path(
    run_dir: str | os.PathLike,
    ea: Endpoint,
    eb: Endpoint,
    ts: Iterable[float],
    state_at: Callable[[float], State],
    run: BaselineRun,
    *,
    exist: str = "error",
    command: str | None = None,
    seconds: float = 0.0,
    assets: Assets | None = None,
    inside: str | os.PathLike | None = None,
    finish: Callable[[Path, list[dict]], dict] | None = None,
) -> Path:
    """Write the points ``state_at(t)`` for each ``t`` of ``ts`` as a run directory.

    Points are computed and written one at a time (at most one point's tensors besides the two ends).

    Args:
        run_dir: the run directory to write.
        ea, eb: the endpoints (A decides the points' format; both are described in ``endpoints.json``).
        ts: the fixed t of the points, starting at 0.0 and ending at 1.0.
        state_at: ``t -> state dict`` of the curve.
        run: the method's description (:class:`BaselineRun`).
        exist: ``"error"`` or ``"overwrite"`` (see :class:`~hf_llpf.run.RunWriter`).
        command: the command line that made it, recorded for reproduction.
        seconds: time the method spent before writing (training, matching); added to the wall time.
        assets: the endpoints' companion files (:func:`hf_llpf.run.assets.run_assets`), stored in ``assets/``.
        inside: the run directory ``run_dir`` lies in (``RUN/baselines/<method>``): no folder between them may be a
            symbolic link (see :class:`~hf_llpf.run.RunWriter`).
        finish: called once the points and metrics are written, with the path and its rows (which it may add
            columns to): what it returns is added to ``summary["run"]``, and the metrics are written again (a
            certified baseline's final check, :mod:`hf_llpf.baselines.certify`).

    Returns:
        The :class:`~hf_llpf.run.Path` (points load lazily).

    Raises:
        ConfigError: ``ts`` does not start at 0 and end at 1.
    """
    ts = checked_ts(ts)
    with RunWriter(run_dir, exist=exist, inside=inside) as writer:
        describe_curve(writer, ea, eb, run, command=command, assets=assets)
        return write_points(writer, ea, ts, state_at, run, seconds=seconds, finish=finish)


def checked_ts(ts: Iterable[float]) -> list[float]:
    """``ts`` as a list, refused unless it starts at 0.0 and ends at 1.0.

    Raises:
        ConfigError: naming the first and last t.
    """
    ts = list(ts)
    if len(ts) < 2 or ts[0] != 0.0 or ts[-1] != 1.0:
        raise ConfigError(f"ts={ts[:3]}...{ts[-2:]}: a baseline's points must start at t=0.0 and end at t=1.0")
    return ts


def curve_config(run: BaselineRun) -> dict[str, Any]:
    """What a curve's ``llpf_config.yaml`` holds: its method, seed, data and own settings (``baseline``)."""
    return {"method": run.method, "seed": run.seed, "data": run.data, "baseline": run.settings}


def curve_endpoints(ea: Endpoint, eb: Endpoint, run: BaselineRun, command: str | None) -> dict[str, Any]:
    """What a curve's ``endpoints.json`` holds (B's ``path_end`` when the last point is not θ_B itself)."""
    b = {**eb.describe(), "path_end": run.end_b} if run.end_b else eb.describe()
    return {"A": ea.describe(), "B": b, "method": run.method, "command": command, "hf_llpf_version": __version__}


def describe_curve(writer: RunWriter, ea: Endpoint, eb: Endpoint, run: BaselineRun, *, command: str | None,
                   assets: Assets | None) -> None:  # fmt: skip
    """Write a curve's description: ``llpf_config.yaml``, ``endpoints.json`` and the endpoints' companion files."""
    writer.write_yaml(CONFIG_YAML, yaml.safe_dump(curve_config(run), sort_keys=False))
    writer.write_json(ENDPOINTS_JSON, curve_endpoints(ea, eb, run, command))
    if assets is not None:
        write_assets(writer.root, assets)


def write_points(writer: RunWriter, ea: Endpoint, ts: list[float], state_at: Callable[[float], State],
                 run: BaselineRun, *, seconds: float = 0.0,
                 finish: Callable[[Path, list[dict]], dict] | None = None) -> Path:  # fmt: skip
    """The points ``state_at(t)`` written one at a time into ``writer``'s run directory, then the metrics (and
    ``finish``'s figures, as :func:`write_path` says); returns the path."""
    start = time.perf_counter()
    model = copy.deepcopy(ea.model).cpu()
    names = param_names(model)
    state_a, state_b = state_at(0.0), state_at(1.0)
    points = []
    for i, t in enumerate(ts):
        state = state_a if t == 0.0 else state_b if t == 1.0 else state_at(t)
        load_point(model, state)
        rel = writer.write_point(i, model, ea)
        last = i == len(ts) - 1
        phase = "start" if i == 0 else "end" if last else run.method
        dist_a, dist_b = l2_step(state, state_a, names), l2_step(state, state_b, names)
        record = PointRecord(index=i, tick=i, stage=0, phase=phase, train_loss=math.nan, point=rel,
                             sgd_iters=run.sgd_iters if i > 0 else 0, dist_a=dist_a, dist_b=dist_b,
                             stage_boundary=i == 0 or last)  # fmt: skip
        points.append({**record.row(), "t": t})
    summary = {"run": {"method": run.method, "ticks": len(ts) - 1, "sgd_iters": run.sgd_iters, **run.summary}}
    summary["run"]["seconds_this_session"] = round(seconds + time.perf_counter() - start, 3)
    writer.write_metrics(points, [], summary)
    template = ea.model if ea.kind == "module" else None
    if finish is not None:  # the points are on disk: read back as a Path, still under this writer's lock
        summary["run"].update(finish(Path(writer.root, template=template), points))
        summary["run"]["seconds_this_session"] = round(seconds + time.perf_counter() - start, 3)
        writer.write_metrics(points, [], summary)
    return Path(writer.root, template=template)


__all__ = [
    "CHUNK",
    "BaselineRun",
    "PreparedEnds",
    "ResumableBatches",
    "State",
    "TrainedCurve",
    "checked_ts",
    "curve_config",
    "curve_endpoints",
    "describe_curve",
    "fixed_ts",
    "state_of",
    "write_path",
    "write_points",
]
