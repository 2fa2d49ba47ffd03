"""Judging a path honestly: metrics of every saved point, the linear baseline, continuity (docs/evaluation.md).

The engine's recorded ``train_loss`` is a moving average of augmented mini-batch losses taken *during* the
repair training. Here every saved point is evaluated afterwards, in eval mode and without gradients, on a
fixed seeded subset of the training data and on the test set (data given without one: no test column), and
compared with straight linear interpolation θ(t) = (1−t)·θ_A + t·θ_B on the same data, with the same
definitions (:mod:`hf_llpf.evaluation.summary`);
**path length** (sum of the L2 steps between consecutive points over all parameters) is reported beside the
**straight distance** |θ_B − θ_A|, and **continuity** checks K interior points of each segment.

The data (``data=``, :mod:`hf_llpf.data.intake`; docs/evaluation.md, "Which data ``data=`` takes"): the
``DataLoader`` the path was built with is its training split alone, so it gives no test column.
With ``sharding="none"`` the points are split over the processes, each holding the whole model; with
``sharding="fsdp"`` each process holds 1/N of every parameter and reads only its rows of each point (FSDP2, processes
started by torchrun; docs/distributed.md, "Models larger than one device").

θ_A and θ_B are the first and the last saved point. Evaluation computes and returns; it writes nothing:
:func:`hf_llpf.api.evaluate_run` writes the results into the run directory, draws the plots and updates the
report.

Modules: :mod:`~hf_llpf.evaluation.sets` (the fixed data), :mod:`~hf_llpf.evaluation.scoring` (loss and
accuracy of one point), :mod:`~hf_llpf.evaluation.recalibration` (BatchNorm statistics),
:mod:`~hf_llpf.evaluation.interpolation` (points between points), :mod:`~hf_llpf.evaluation.summary` (the
figures), :mod:`~hf_llpf.evaluation.walk` (the walk over the saved points, split over processes),
:mod:`~hf_llpf.evaluation.sharded` (the model sharded over processes: ``sharding="fsdp"``).
"""

from __future__ import annotations

import os
import time
from typing import Any

from accelerate import Accelerator
from torch import nn

from hf_llpf.batches import LossFn
from hf_llpf.devices.accelerator import make_accelerator
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.evaluation.interpolation import PointModel, continuity, linear_interpolation, load_point, param_names
from hf_llpf.evaluation.recalibration import recalibrate_bn
from hf_llpf.evaluation.scoring import EVAL_COLUMNS, RECAL, evaluate_point, score
from hf_llpf.evaluation.sets import BatchSource, EvalBatches, EvalSets, make_eval_sets, resolve_data, sets_for
from hf_llpf.evaluation.sharded import check_sharded_evaluation
from hf_llpf.evaluation.summary import barrier, locate_continuity, path_summary, positions, summarise
from hf_llpf.evaluation.walk import WalkOptions, gather_rows, gather_walk, walk_path
from hf_llpf.models.weights import stored_dtype
from hf_llpf.run import RunPath
from hf_llpf.run.lock import holds_run_directory


def as_path(path_or_run_dir: RunPath | str | os.PathLike, template: nn.Module | None = None) -> RunPath:
    """A :class:`~hf_llpf.run.RunPath` for a run directory (or the given one, with ``template`` set if given)."""
    if isinstance(path_or_run_dir, RunPath):
        if template is not None:
            path_or_run_dir.template = template
        return path_or_run_dir
    return RunPath(path_or_run_dir, template=template)


def _check_options(opts: dict[str, Any]) -> None:
    """Refuse invalid evaluation settings, listing everything that is wrong.

    Raises:
        ConfigError: one line per invalid setting.
    """
    train_subset, batch_size, linear_points = opts["train_subset"], opts["batch_size"], opts["linear_points"]
    continuity_k, continuity_subset = opts["continuity_k"], opts["continuity_subset"]
    problems = []
    if train_subset is not None and train_subset < 1:
        problems.append(f"train_subset={train_subset!r}: must be a positive number of examples or None (all)")
    if batch_size < 1:
        problems.append(f"batch_size={batch_size!r}: must be a positive integer")
    if linear_points < 2:
        problems.append(f"linear_points={linear_points!r}: must be at least 2 (the two endpoints)")
    if continuity_k < 0:
        problems.append(f"continuity_k={continuity_k!r}: must be 0 (no check) or a positive integer")
    if continuity_subset < 1:
        problems.append(f"continuity_subset={continuity_subset!r}: must be a positive number of examples")
    if problems:
        raise ConfigError(problems)


def _open_path(path_or_run_dir: RunPath | str | os.PathLike, template: nn.Module | None) -> RunPath:
    """The path to evaluate (see :func:`as_path`), its metadata checked and holding at least one saved point.

    Raises:
        RunDirectoryError: not a run directory, a damaged metadata file, or no saved point.
    """
    path = as_path(path_or_run_dir, template)
    path.validate()  # a damaged metadata file is refused before anything is computed or written
    if len(path) == 0:
        raise RunDirectoryError(f"{str(path.root)!r} holds no saved point to evaluate")
    return path


def _eval_sets(path: RunPath, data: Any, opts: dict[str, Any], accelerator: Accelerator) -> EvalSets:
    """The fixed data the path is judged on: ``data`` (see :func:`evaluate_path`) or the run's own, with the seeded
    subsets of ``opts``, on the accelerator's device."""
    set_opts = {k: opts[k] for k in ("train_subset", "continuity_subset", "batch_size", "seed")}
    return sets_for(resolve_data(path, data), device=accelerator.device, **set_opts)


def _settings(path: RunPath, sets: EvalSets, options: dict[str, Any], start: float) -> dict[str, Any]:
    """The ``summary["evaluation"]`` block: data sizes, options, the wall time and the dtype the points are stored
    in."""
    settings = {
        "train_examples": sets.train.num_examples,
        "test_examples": sets.test.num_examples if sets.test is not None else None,  # None: no test split given
        "continuity_examples": sets.continuity.num_examples,
        "train_data": sets.train.origin,  # train_subset and seed cut loaded data only
        **{k: options[k] for k in ("train_subset", "batch_size", "recalibrate_bn", "recal_batches")},
        **{k: options[k] for k in ("linear_points", "continuity_k", "seed", "sharding")},
        "loss": "custom loss_fn" if options["loss_fn"] is not None else "default (cross-entropy / outputs.loss)",
        "seconds": round(time.perf_counter() - start, 3),
    }
    # What was judged: the points as stored (read from their files; bf16/fp16 with point_dtype).
    first = path.checked_point_dir(0)
    settings["point_dtype"] = stored_dtype(first, allowed_root=path.point_fence(first))
    return settings


def _point_model(path: RunPath, opts: dict[str, Any], accelerator: Accelerator) -> tuple:
    """The model the points are evaluated in, this process's ``(rank, world)`` share of the points and where the
    parts are gathered: a whole model with the points split over the processes, or (``sharding="fsdp"``) the sharded
    model with every process on every point and nothing to gather."""
    if opts["sharding"] == "fsdp":
        from hf_llpf.evaluation.sharded import sharded_point_model

        return sharded_point_model(path, accelerator.device), (0, 1), None
    model = path.model_at(0).to(accelerator.device).eval()
    return PointModel(model), (accelerator.process_index, accelerator.num_processes), accelerator


def _linear(path: RunPath, held: PointModel, sets: EvalSets, opts: dict, shard: tuple, gather: Any) -> tuple:
    """The linear baseline between the first and the last point (gathered in order) and their distance."""
    state_a, state_b = held.read(path, 0), held.read(path, -1)
    straight = held.step(state_a, state_b)
    linear = linear_interpolation(
        held,
        state_a,
        state_b,
        sets,
        points=opts["linear_points"],
        loss_fn=opts["loss_fn"],
        recalibrate=opts["recalibrate_bn"],
        recal_batches=opts["recal_batches"],
        shard=shard,
        progress=opts["progress"],
    )
    return gather_rows(linear, gather), straight


def _evaluate(
    path: RunPath, sets: EvalSets, opts: dict[str, Any], accelerator: Accelerator, *, start: float
) -> dict[str, Any]:
    """The points, segments, baseline and summary of ``path`` on ``sets``, the summary with its settings
    (``start``: when the evaluation began)."""
    held, shard, gather = _point_model(path, opts, accelerator)
    if gather is None:  # every process walks every point: one shows the bars
        opts = {**opts, "progress": opts["progress"] and accelerator.is_main_process}
    walk_opts = WalkOptions(
        opts["loss_fn"], opts["recalibrate_bn"], opts["recal_batches"], opts["continuity_k"], opts["progress"]
    )
    rows, steps, cont = gather_walk(walk_path(path, held, sets, walk_opts, shard), gather)
    pos = positions(steps)
    locate_continuity(cont, path.ticks, pos)
    linear, straight = _linear(path, held, sets, opts, shard, gather)
    points = [{**m, **r, "position": t} for m, r, t in zip(path.metrics, rows, pos)]
    summary = path_summary(
        points, linear, cont, pos, opts["recalibrate_bn"], path_length=sum(steps), straight=straight
    )
    summary["evaluation"] = _settings(path, sets, opts, start)
    return {"points": points, "linear": linear, "continuity": cont, "summary": summary}


@holds_run_directory("path_or_run_dir", exclusive=False, action="evaluate")
def evaluate_path(
    path_or_run_dir: RunPath | str | os.PathLike,
    *,
    data: Any = None,
    train_subset: int | None = None,
    batch_size: int = 256,
    recalibrate_bn: bool = False,
    recal_batches: int | None = None,
    linear_points: int = 21,
    continuity_k: int = 4,
    continuity_subset: int = 512,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    template: nn.Module | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    sharding: str = "none",
) -> dict[str, Any]:
    """Evaluate a path's saved points, its segments and the linear baseline; return the results, write nothing.

    To write them into the run directory (with plots and report) use :func:`hf_llpf.api.evaluate_run`.

    Args:
        path_or_run_dir: a run directory or a :class:`~hf_llpf.run.RunPath`.
        data: any form :func:`hf_llpf.connect` takes (default: the run's ``llpf_config.yaml`` ``data``); without a
            test split the rows have no test column and the summary no test range (the module docstring).
        train_subset: number of training examples, a fixed seeded subset (``None``: the whole training set).
        batch_size: evaluation batch size.
        recalibrate_bn: also report every figure after BatchNorm recalibration (``*_recal`` columns).
        recal_batches: batches of the training subset used per recalibration (``None``: all of them).
        linear_points: points of the linear baseline, ends included.
        continuity_k: interior points per segment between consecutive points (0: no continuity check).
        continuity_subset: training examples used by the continuity check (part of the training subset).
        loss_fn: the path's ``loss_fn(model, batch) -> scalar`` (default: cross-entropy; ``outputs.loss`` for dicts).
        seed: seed of the fixed subsets.
        template: a module of the path's architecture, for paths of plain ``nn.Module`` s.
        accelerator: decides the device (default: a new ``Accelerator``: the device Accelerate chooses).
        progress: bars over the path's points and the baseline's (when they show: docs/cli.md#progress-and-logs).
        sharding: ``"none"`` (every process holds the whole model) or ``"fsdp"`` (each holds 1/N of every parameter);
            the figures are the same either way, up to the order of floating-point additions (the module docstring).

    Returns:
        ``{"points": [...], "linear": [...], "continuity": [...], "summary": {...}}`` (each point's row holds
        its metrics and the evaluation columns, plus ``position``; ``summary["evaluation"]`` the settings).

    Raises:
        RunDirectoryError: not a run directory, or no data recorded and none given.
        ConfigError: invalid settings (empty subset, fewer than 2 linear points, negative K, ...); ``sharding="fsdp"``
            without a process group (torchrun), or for points of a model it cannot build on meta.
    """
    opts = {"train_subset": train_subset, "batch_size": batch_size, "seed": seed, "loss_fn": loss_fn,
            "recalibrate_bn": recalibrate_bn, "recal_batches": recal_batches, "linear_points": linear_points,
            "continuity_k": continuity_k, "continuity_subset": continuity_subset, "progress": progress,
            "sharding": sharding}  # fmt: skip
    _check_options(opts)
    start, accelerator = time.perf_counter(), accelerator or make_accelerator()
    check_sharded_evaluation(sharding, accelerator)  # refused before the run directory is read
    path = _open_path(path_or_run_dir, template)
    sets = _eval_sets(path, data, opts, accelerator)
    return _evaluate(path, sets, opts, accelerator, start=start)


__all__ = [
    "EVAL_COLUMNS",
    "RECAL",
    "BatchSource",
    "EvalBatches",
    "EvalSets",
    "PointModel",
    "as_path",
    "barrier",
    "continuity",
    "evaluate_path",
    "evaluate_point",
    "linear_interpolation",
    "load_point",
    "make_eval_sets",
    "param_names",
    "positions",
    "recalibrate_bn",
    "score",
    "summarise",
]
