"""The thin orchestrators: :func:`connect` (two endpoints → a path on disk) and :func:`walk_to_origin`.

It resolves the inputs (endpoint specs or modules, data specs, datasets or DataLoaders), builds the
Follow-Data-Flow stages, opens the run directory and runs the algorithm. No YAML and no Hub are needed:
``hf_llpf.connect(model_a, model_b, loader, run_dir="runs/x")`` works on two plain ``nn.Module`` s.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path as FsPath
from typing import Any

from accelerate import Accelerator
from accelerate.logging import get_logger
from torch import nn

from hf_llpf import __version__
from hf_llpf.algorithms.base import Method, RunSetup
from hf_llpf.algorithms.certify import Certifier, certification_line
from hf_llpf.algorithms.final_check import environment, final_check, point_hashes, record_final
from hf_llpf.algorithms.linear import LINEAR_POINTS, straight_line_certified
from hf_llpf.algorithms.m2o import OUTWARD_MESSAGE
from hf_llpf.algorithms.registry import curve_method, method_class
from hf_llpf.algorithms.repair import RepairTrainer
from hf_llpf.algorithms.sharded import check_sharding
from hf_llpf.algorithms.sharded_m2o import rows_sphere_report, sharded_method_class
from hf_llpf.algorithms.spheres import choose_method
from hf_llpf.baselines.build import connect_curve, with_method
from hf_llpf.batches import LossFn
from hf_llpf.config import ConnectConfig
from hf_llpf.devices.accelerator import describe_launch, launch_line, launched_sharding, make_accelerator
from hf_llpf.devices.allocator import return_freed_memory
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.preparation import PreparedRun, prepare_run
from hf_llpf.progress import progress_requested
from hf_llpf.recipes import to_yaml
from hf_llpf.reporting.logging import RunLog
from hf_llpf.reporting.tracking import tick_logger
from hf_llpf.run import METRICS_JSON, NullWriter, RunPath, RunWriter, read_metrics
from hf_llpf.run.assets import write_assets
from hf_llpf.run.inputs import (
    local_specs,
    read_paths,
    resolve_config,
)
from hf_llpf.run.layout import CONFIG_YAML, ENDPOINTS_JSON, LAYER_GROUPS_JSON, LOG_FILE
from hf_llpf.run.lock import holds_run_directory
from hf_llpf.run.records import stage_records
from hf_llpf.run.resume import (
    Stretches,
    carried_stretches,
    check_same_run,
    read_checkpoint,
    refuse_path_without_checkpoint,
    version_notice,
)
from hf_llpf.run.rundir import check_exist
from hf_llpf.run.seeding import seed_everything
from hf_llpf.run.storage import disk_estimate
from hf_llpf.sharding.rows import RowsEndpoint

logger = get_logger(__name__)


def connect(
    model_a: str | os.PathLike | nn.Module | Endpoint,
    model_b: str | os.PathLike | nn.Module | Endpoint,
    train_data: Any = None,
    *,
    config: ConnectConfig | dict | None = None,
    run_dir: str | os.PathLike,
    loss_fn: LossFn | None = None,
    exist: str = "error",
    progress: bool = True,
    accelerator: Accelerator | None = None,
    command: str | None = None,
    probe_data: Any = None,
    protected: Sequence[str | os.PathLike] = (),
    method: str | None = None,
    settings: Any = None,
    points: int | None = None,
    certify: Any = None,
) -> RunPath:
    """Build a path from ``model_a`` (θ_A) to ``model_b`` (θ_B) and write it to ``run_dir``: LLPF's, or a curve's.

    Args:
        model_a, model_b: endpoint specs (folder, Hub id, safetensors + arch), modules, or Endpoints.
        train_data: a data spec or :class:`~hf_llpf.config.DataConfig`, a :class:`DataBundle`, a ``datasets.Dataset``
            (torch-formatted columns), a ``DataLoader`` of ``(inputs, labels)`` or dicts, ``{"train": ...,
            "test": ...}`` (the run trains on ``"train"``), or ``None``: ``config.data``. Every entry point reads these
            forms alike (:mod:`hf_llpf.data.intake`).
        config: :class:`~hf_llpf.config.ConnectConfig` or a dict of settings, in blocks as a recipe writes them
            (``{"repair": {"lr": 0.01}}``) or as its flat fields (``{"lr": 0.01}``); defaults when ``None``.
        run_dir: the run directory to write.
        loss_fn: ``loss_fn(model, batch) -> loss``; default cross-entropy, or ``outputs.loss`` for dicts.
        exist: ``"error"`` (refuse an existing run directory), ``"overwrite"`` or ``"resume"``.
        progress: show a progress bar.
        accelerator: the Accelerator that places the model (one on the CPU/GPU by default).
        command: the command line that started the run (recorded for reproduction).
        probe_data: re-iterable batches to certify the path on (default: ``config.probe_size`` examples of a
            seeded subset of the training data, docs/algorithm.md §10).
        protected: other files and folders the caller reads (the CLI's ``--recipe``): ``run_dir`` must not be,
            hold or lie inside one of them, as for the local endpoints and data (docs/run-directory.md).
        method: the method (default ``config.method``); a curve (``bezier``, ``autoneb``, ``slerp``,
            ``weight-matching``) is written at fixed t, certified when it trains, and resumes (docs/baselines.md).
        settings, points, certify: a curve's own settings, points (default 31) and certification rounds.

    Returns:
        The :class:`~hf_llpf.run.RunPath` (points load lazily from ``run_dir``).

    Raises:
        RunDirectoryError: ``run_dir`` cannot be written under ``exist`` (checked before anything is loaded, and
            again before anything is written; docs/run-directory.md, "What --overwrite and --resume may do").
    """
    config = resolve_config(config if method is None else with_method(config, method))
    curve = curve_method(config.method)
    if curve is not None or (settings, points, certify) != (None, None, None):
        return connect_curve(curve, model_a, model_b, train_data, config, run_dir=run_dir, settings=settings,
                             points=points, certify=certify, loss_fn=loss_fn, exist=exist, accelerator=accelerator,
                             command=command, protected=protected)  # fmt: skip
    return _connect_llpf(model_a, model_b, train_data, config, run_dir, loss_fn, exist, progress, accelerator,
                         command, probe_data, protected)  # fmt: skip


def _connect_llpf(model_a, model_b, train_data, config, run_dir, loss_fn, exist, progress, accelerator, command,
                  probe_data, protected) -> RunPath:  # fmt: skip
    """:func:`connect` of an LLPF method: the Accelerator and the run's log around the run."""
    return_freed_memory()  # with HF_LLPF_ALLOCATOR=return: freed blocks go back to the system at once
    accelerator = accelerator or make_accelerator(
        mixed_precision=config.mixed_precision, report_to=config.report_to, project_dir=str(run_dir)
    )
    config = launched_sharding(used_precision(config, accelerator))
    check_sharding(config, accelerator, exist=exist)  # refused before any work, never run another way
    progress = progress and accelerator.is_main_process  # one bar (or one set of progress lines) per run
    run_log = RunLog() if accelerator.is_main_process else None
    try:
        return _connect(model_a, model_b, train_data, config, run_dir, loss_fn, exist, progress, accelerator,
                        command, probe_data, protected, run_log)  # fmt: skip
    finally:
        if run_log is not None:
            run_log.close()


def _connect(model_a, model_b, train_data, config, run_dir, loss_fn, exist, progress, accelerator, command,
             probe_data, protected, run_log) -> RunPath:  # fmt: skip
    """:func:`connect` once its settings and Accelerator are resolved: everything it says goes to ``run_log``
    (the run directory's log file, once that is open)."""
    if accelerator.is_main_process:  # fail before any work; checked again when the run directory is opened
        if exist == "resume":
            refuse_path_without_checkpoint(run_dir, config)
        check_exist(
            run_dir, exist, protected=[*protected, *local_specs(model_a, model_b, train_data, config.data.source)]
        )
    logger.info(launch_line(describe_launch(accelerator, sharding=config.sharding)), main_process_only=True)
    seed_everything(config.seed)
    prepared = prepare_run([model_a, model_b], train_data, config, loss_fn=loss_fn, accelerator=accelerator,
                           progress=progress, probe_data=probe_data)  # fmt: skip
    ea, eb = prepared.endpoints
    config, storage, plan, certifier, setup = (prepared.config, prepared.storage, prepared.plan,
                                               prepared.certifier, prepared.setup)  # fmt: skip
    t = time.perf_counter()
    method = _straight_if_certified(ea, eb, certifier, config, accelerator) or choose_method(
        ea, eb, config, report=_rows_report(ea, eb)
    )
    setup["setup_probe"] += time.perf_counter() - t
    estimate, large = disk_estimate(ea.model, storage, method=method, stages=len(plan.stages), config=config)
    (logger.warning if large else logger.info)(f"{run_dir}: {estimate}", main_process_only=True)

    # Only the main process writes; the others wait until it has created (or cleared) the run directory.
    protected = [*protected, *read_paths(ea, eb, config=config)]
    writer = (
        RunWriter(run_dir, exist=exist, protected=protected, storage=storage)
        if accelerator.is_main_process
        else NullWriter(storage)
    )
    try:
        if writer.root is not None:
            write_assets(writer.root, prepared.assets)
        with progress_requested(progress):
            return _run_and_record(prepared, method, writer, run_dir, loss_fn, accelerator, progress, command, run_log)
    finally:
        writer.close()


def _run_and_record(
    prepared: PreparedRun,
    method: str,
    writer: RunWriter | NullWriter,
    run_dir: str | os.PathLike,
    loss_fn: LossFn | None,
    accelerator: Accelerator,
    progress: bool,
    command: str | None,
    run_log: RunLog | None,
) -> RunPath:
    """Write the run's description, run (or resume) the method, write the summary; returns the path. The run's log
    file is opened once the run goes ahead: a refused resume leaves the run directory as it was."""
    accelerator.wait_for_everyone()
    (ea, eb), config, certifier = prepared.endpoints, prepared.config, prepared.certifier
    template = ea.model if ea.kind == "module" else None
    ckpt, resumed_with = _checkpoint_to_resume(run_dir, config, ea, eb, method)
    if ckpt is not None and ckpt.get("done") and "run" in RunPath(run_dir).summary:
        logger.info(f"{run_dir} is already complete; nothing to resume", main_process_only=True)
        return RunPath(run_dir, template=template)
    if run_log is not None:
        run_log.open(writer.root / LOG_FILE)
    if ckpt is None or resumed_with:
        _describe_run(writer, ea, eb, prepared.plan, config, method, command, new=ckpt is None)
    make_trainer = trainer_factory(config, prepared.loader, loss_fn, accelerator)
    start = time.perf_counter()
    setup_run = RunSetup(ea, eb, prepared.plan, config, make_trainer, writer, accelerator.device, progress,
                         ckpt is not None, certifier)  # fmt: skip
    runner = (sharded_method_class(method) if config.sharding == "fsdp" else method_class(method)).for_run(setup_run)
    if config.sharding == "fsdp" and prepared.owned[1] and eb.model is not ea.model:
        # Each process holds its own copy of its rows of θ_B (ShardedM2M, ShardedCrossSphere): the whole θ_B it
        # loaded is dead.
        eb.model.to("meta")
    on_tick = tick_logger(config, accelerator, ceiling=certifier.ceiling)
    if on_tick is not None:
        runner.on_tick = on_tick
    history = _resume_runner(run_dir, ckpt, resumed_with, runner, certifier) if ckpt is not None else []
    stretches = _open_stretches(run_dir, ckpt, runner, certifier, writer)
    runner.run()
    accelerator.wait_for_everyone()  # the points are written: the final check reads them back
    _check_finished_path(runner, prepared, RunPath(run_dir, template=template), accelerator)
    summary = _summary(runner, method, prepared, elapsed=time.perf_counter() - start)
    _add_session_records(summary, runner, prepared, writer, accelerator, history=history, stretches=stretches)
    writer.write_metrics(runner.state.points, runner.state.ticks, summary)
    _announce_end(run_dir, runner.state, summary, config, accelerator)
    return RunPath(run_dir, template=template)


def _checkpoint_to_resume(run_dir, config: ConnectConfig, ea: Endpoint, eb: Endpoint, method: str) -> tuple:
    """The run directory's checkpoint (None: none, a new run) and, for one, the resumable settings changed since it
    was written (:func:`~hf_llpf.run.resume.check_same_run`).

    Raises:
        ConfigError: another setting or endpoint than the checkpoint's. RunDirectoryError: another method's run, or a
            damaged record.
    """
    ckpt = read_checkpoint(run_dir)
    resumed_with = check_same_run(run_dir, config, ea, eb) if ckpt is not None else None
    if ckpt is not None and ckpt.get("method") != method:
        raise RunDirectoryError(
            f"--resume: {run_dir} holds a {ckpt.get('method')!r} run, this one is {method!r}; use --overwrite"
        )
    return ckpt, resumed_with


def _resume_runner(run_dir, ckpt: dict, resumed_with: dict | None, runner: Any, certifier: Certifier) -> list[dict]:
    """Put the runner and the certifier back in the checkpoint's state; returns the settings changed at each resume
    so far, this one's included (:func:`_resume_history`)."""
    history = _resume_history(run_dir, resumed_with)
    runner.load_state_dict(ckpt["state"])
    certifier.restore_counters(ckpt.get("counters"))
    return history


def _check_finished_path(runner: Any, prepared: PreparedRun, path: RunPath, accelerator: Accelerator) -> None:
    """Free what the finished walk no longer needs, then the final check of ``path`` (:func:`close_the_loop`)."""
    (ea, _), config = prepared.endpoints, prepared.config
    own_a = prepared.owned[0] and ea.kind != "module"  # (a module's template is θ_A itself: left as it is)
    release = getattr(runner, "release", None)
    if release is not None:  # the walk's optimizer state, gradients and snapshots are dead from here on
        release()
    close_the_loop(prepared.certifier, path, ea.model, runner.state, accelerator=accelerator,
                   work=final_check_model(runner, config, ea.model if own_a else None, rows=ea))  # fmt: skip


def _add_session_records(
    summary: dict,
    runner: Any,
    prepared: PreparedRun,
    writer: Any,
    accelerator: Accelerator,
    *,
    history: list,
    stretches: Stretches,
) -> None:
    """Add to the summary what the run's method does not know: the launch, how the points are stored, the
    certification, the resumes so far and the stretches of the run."""
    run, ea = summary["run"], prepared.endpoints[0]
    run["launch"] = describe_launch(accelerator, sharding=prepared.config.sharding)
    run.update(writer.storage.summary(ea.model))  # point_dtype, endpoint_dtype, max_shard_size
    run["certification"] = prepared.certifier.summary(runner.uncertified)
    if history:
        run["resumed_with"] = history
    run["stretches"] = stretches.all()
    run.update(stretches.totals(run["stretches"]))


def _announce_end(run_dir, state: Any, summary: dict, config: ConnectConfig, accelerator: Accelerator) -> None:
    """The run's last line, and its figures to the trackers."""
    logger.info(f"{run_dir}: {len(state.points)} points, {summary['run']['sgd_iters']} SGD iterations; "
                f"{certification_line(summary['run']['certification'])}", main_process_only=True)  # fmt: skip
    if config.report_to:
        accelerator.log({f"run/{k}": v for k, v in summary["run"].items() if isinstance(v, (int, float))})
        accelerator.end_training()
    accelerator.wait_for_everyone()


def _open_stretches(run_dir, ckpt: dict | None, runner: Any, certifier: Certifier, writer: Any) -> Stretches:
    """This session's stretch of the run, carried by every checkpoint it writes; says so when an earlier stretch
    was written by another hf_llpf version."""
    carried = carried_stretches(run_dir, ckpt)
    notice = version_notice(run_dir, carried)
    if notice is not None:
        logger.warning(notice, main_process_only=True)
    stretches = Stretches(carried, work=runner.work, counters=certifier.counters)
    writer.checkpoint_extra = stretches.checkpoint  # (a NullWriter's: used only by a sharded run's checkpoint)
    return stretches


def final_check_model(
    runner: Any, config: ConnectConfig, own_a: nn.Module | None = None, *, rows: Any = None
) -> nn.Module | None:
    """A model the final check may evaluate in instead of a copy of θ_A: the finished walk's working model, where
    it is a plain module that computes as a copy of θ_A would, else ``own_a`` (θ_A as the run loaded it itself, which
    nothing reads after the check), else ``None`` (a copy). Not the working model when FSDP2 shards it, when the
    Accelerator wrapped its forward for mixed precision, or for a method without one working model (cross-sphere);
    except where θ_A (``rows``) was read by rows: the sharded working model, each process then reading its rows of
    each point (θ_A's parameters are on the meta device)."""
    if isinstance(rows, RowsEndpoint):
        return runner.model
    if config.sharding != "none" or config.mixed_precision != "no" or not isinstance(runner, Method):
        return own_a
    return runner.model


def close_the_loop(
    certifier: Certifier,
    path: RunPath,
    model: nn.Module,
    state: Any,
    *,
    accelerator: Any,
    work: nn.Module | None = None,
) -> None:
    """On the exact route, the final check (:func:`~hf_llpf.algorithms.final_check.final_check`): every saved
    point and segment midpoint evaluated on all the training examples; its figures go into the certifier's record,
    the points' rows (``full_loss``, ``full_segment_loss``) and the timing (``probe_final``). On every route, each
    point's sha256 and where the figures were computed (what ``hf-llpf verify`` checks). ``work``: a module the
    check may evaluate in (the finished walk's working model) instead of a copy of ``model``."""
    if not certifier.enabled:
        return
    certifier.recorded = {"point_sha256": point_hashes(path), "environment": environment(model, accelerator.device)}
    if not certifier.examples.exact:
        return
    final = certifier.final = final_check(
        certifier, path, model, device=accelerator.device, work=work, together=accelerator.num_processes > 1
    )
    if len(state.points) == final["points"]:
        record_final(state.points, final)
    state.timing["probe_final"] = state.timing.get("probe_final", 0.0) + final["seconds"]


def _rows_report(ea: Endpoint, eb: Endpoint) -> Callable[[], list[dict]] | None:
    """The sphere check's report of endpoints read by rows (merged from every process's rows), else ``None``."""
    if not isinstance(ea, RowsEndpoint) or getattr(ea, "work", None) is None:
        return None
    return lambda: rows_sphere_report(ea, eb)


def _straight_if_certified(ea, eb, certifier: Certifier, config: ConnectConfig, accelerator) -> str | None:
    """``"linear"`` when ``method: auto`` and the straight line already stays under the ceiling, else ``None``. Not
    tested under ``sharding: fsdp``: the straight line runs unsharded (the sphere check chooses m2m or
    cross-sphere)."""
    if config.method != "auto" or not certifier.enabled:
        return None
    if config.sharding == "fsdp":
        logger.info("method: auto under sharding: fsdp does not test the straight line (it runs unsharded): the "
                    "sphere check chooses m2m or cross-sphere", main_process_only=True)  # fmt: skip
        return None
    ok, top, t = straight_line_certified(ea.model, eb.model, certifier, accelerator.device)
    measured = (
        f"stays under the ceiling {certifier.ceiling:.4g} (max probe loss {top:.4g} at "
        f"{2 * (LINEAR_POINTS - 1) - 1} interior points): the path is the straight line (method: m2m walks anyway)"
        if ok
        else f"rises above the ceiling {certifier.ceiling:.4g} (probe loss at t={t:.4g} at least {top:.4g})"
    )
    logger.info(f"the straight line {measured}", main_process_only=True)
    return "linear" if ok else None


def used_precision(config: ConnectConfig, accelerator: Any) -> ConnectConfig:
    """``config`` with ``mixed_precision`` as the Accelerator actually runs it (``auto`` resolved by the launch):
    what ``llpf_config.yaml`` and the summary record."""
    used = accelerator.mixed_precision
    used = str(getattr(used, "value", used) or "no")
    return config if config.mixed_precision == used else config.model_copy(update={"mixed_precision": used})


def _resume_history(run_dir: str | os.PathLike, changed: dict | None) -> list[dict]:
    """The settings changed at each resume so far, with this one's (at the last tick on disk)."""
    # A cross-sphere run whose B walks has written no path rows into the run directory yet.
    metrics = read_metrics(run_dir) if (FsPath(run_dir) / METRICS_JSON).is_file() else {}
    history = metrics.get("summary", {}).get("run", {}).get("resumed_with", [])
    at_tick = max((row["tick"] for row in metrics.get("ticks", [])), default=0)
    return [*history, {"at_tick": at_tick, "changed": changed}] if changed else history


def _describe_run(writer, ea, eb, plan, config, method, command, *, new: bool) -> None:
    """``llpf_config.yaml`` (the settings in force), and for a new run ``endpoints.json`` and ``layer_groups.json``."""
    writer.write_yaml(CONFIG_YAML, to_yaml(config))
    if not new or writer.root is None:  # (another process than the main one: nothing written, no hash to take)
        return
    endpoints = {"A": ea.describe(), "B": eb.describe(), "command": command, "hf_llpf_version": __version__}
    writer.write_json(ENDPOINTS_JSON, {**endpoints, "method": method})
    writer.write_json(LAYER_GROUPS_JSON, plan.to_json())


def _summary(runner: Any, method: str, prepared: PreparedRun, *, elapsed: float) -> dict:
    """The run's summary so far: what the method did, its timing (the preparation's phases first) and its stages."""
    state, plan = runner.state, prepared.plan
    timing = runner.timing
    return {
        "run": {
            "method": method,
            "phases": sorted({p["phase"] for p in state.points} - {"start", "end"}),
            "ticks": state.points[-1]["tick"],
            "sgd_iters": state.points[-1]["sgd_iters"],
            "seconds_this_session": round(elapsed, 3),
            "timing": {k: round(v, 4) for k, v in {**prepared.setup, **timing}.items()},
            "stage_starts": [t + runner.offset for t in getattr(state, "stage_starts", [0])],
            "failures": state.failures,
            "backtracks": runner.backtracks,
            "repair_lr_scale": getattr(state, "lr_scale", 1.0),  # the repair's final lr over config.lr
            "num_stages": len(plan.stages),
            "stages": stage_records(state.ticks),
            "mixed_precision": prepared.config.mixed_precision,
        }
    }


def trainer_factory(
    config: ConnectConfig, loader: Any, loss_fn: LossFn | None, accelerator: Accelerator
) -> Callable[..., RepairTrainer]:
    """``make(model, per_tensor_lr=False)`` → the run's minimal-training loop for ``model``."""

    def make(model: nn.Module, *, per_tensor_lr: bool = False, sharded: bool = False) -> RepairTrainer:
        return RepairTrainer(
            model,
            loader,
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            min_iters=config.min_iters,
            max_iters=config.max_iters,
            loss_threshold=config.loss_threshold,
            bn_momentum=config.bn_momentum,
            loss_fn=loss_fn,
            accelerator=accelerator,
            per_tensor_lr=per_tensor_lr,
            sharded=sharded,
        )

    return make


def walk_to_origin(
    model: str | os.PathLike | nn.Module | Endpoint,
    train_data: Any = None,
    *,
    config: ConnectConfig | dict | None = None,
    run_dir: str | os.PathLike,
    loss_fn: LossFn | None = None,
    exist: str = "error",
    progress: bool = True,
    accelerator: Accelerator | None = None,
) -> RunPath:
    """LLPF_M2O on its own: walk one endpoint toward the origin until every moved tensor's variance is
    ``config.m2o.target_variance`` times its start (docs/algorithm.md §6), writing the path to ``run_dir``.

    Raises:
        ConfigError: ``m2o.target_variance`` is not below 1 (M2O never walks outward).
    """
    config = resolve_config(config)
    accelerator = accelerator or make_accelerator(mixed_precision=config.mixed_precision)
    config = used_precision(config, accelerator)
    progress = progress and accelerator.is_main_process  # one bar per run
    if config.sharding != "none":
        raise ConfigError(
            f"devices.sharding={config.sharding!r}: the walk to the origin runs unsharded; allowed: 'none'"
        )
    if config.m2o.target_variance >= 1:
        raise ConfigError(f"m2o.target_variance={config.m2o.target_variance}: must be < 1. {OUTWARD_MESSAGE}")
    seed_everything(config.seed)
    prepared = prepare_run([model], train_data, config, loss_fn=loss_fn, accelerator=accelerator, progress=progress)
    (endpoint,) = prepared.endpoints
    config, storage, plan, certifier = prepared.config, prepared.storage, prepared.plan, prepared.certifier
    protected = read_paths(endpoint, config=config)
    with RunWriter(run_dir, exist=exist, storage=storage, protected=protected) as writer, progress_requested(progress):
        write_assets(writer.root, prepared.assets)
        writer.write_yaml(CONFIG_YAML, to_yaml(config))
        description = {"A": endpoint.describe(), "B": None, "method": "m2o", "hf_llpf_version": __version__}
        writer.write_json(ENDPOINTS_JSON, description)
        writer.write_json(LAYER_GROUPS_JSON, plan.to_json())
        make_trainer = trainer_factory(config, prepared.loader, loss_fn, accelerator)
        run = RunSetup(endpoint, None, plan, config, make_trainer, writer, accelerator.device, progress,
                       certifier=certifier)  # fmt: skip
        walk = method_class("m2o").for_run(run)
        walk.run()
        writer.write_metrics(walk.points, walk.ticks)  # the final check reads the points back
        walk.release()
        template = endpoint.model if endpoint.kind == "module" else None
        close_the_loop(certifier, RunPath(run_dir, template=template), endpoint.model, walk.state,
                       accelerator=accelerator, work=final_check_model(walk, config))  # fmt: skip
        run = {"method": "m2o", "ticks": walk.tick, "sgd_iters": walk.trainer.iterations, "timing": walk.timing}
        run.update(storage.summary(endpoint.model))
        run.update(reached=bool(walk.done()), backtracks=walk.backtracks,
                   certification=certifier.summary(walk.uncertified))  # fmt: skip
        writer.write_metrics(walk.points, walk.ticks, {"run": run})
    logger.info(f"{run_dir}: {len(walk.points)} points, {walk.trainer.iterations} SGD iterations; "
                f"{certification_line(run['certification'])}", main_process_only=True)  # fmt: skip
    return RunPath(run_dir, template=template)


@holds_run_directory("path_or_run_dir", exclusive=True, action="evaluate")
def evaluate_run(
    path_or_run_dir: RunPath | str | os.PathLike,
    *,
    report: bool = True,
    template: nn.Module | None = None,
    accelerator: Accelerator | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a path and write the results into its run directory: what ``hf-llpf evaluate`` does.

    Calls :func:`hf_llpf.evaluation.evaluate_path` (which refuses a damaged run directory before anything is
    computed or written), then, on the main process only, merges the results into ``path_metrics.json`` and
    rewrites ``path_metrics.csv`` (:func:`hf_llpf.run.write_evaluation`), and with ``report`` draws
    ``plots/*.png`` (:func:`hf_llpf.reporting.plots.plot_path`) and updates the report section of ``README.md``
    (:func:`hf_llpf.reporting.report.write_report`). A published path, which has no run directory of ours to write
    into, is evaluated with ``evaluate_path`` alone.

    Args:
        path_or_run_dir: a run directory or a :class:`~hf_llpf.run.RunPath`.
        report: also draw the plots and update the report (``False``: the metrics files only).
        template: a module of the path's architecture, for paths of plain ``nn.Module`` s.
        accelerator: decides the device and which process writes (default: a new ``Accelerator``).
        **options: the other keyword arguments of :func:`~hf_llpf.evaluation.evaluate_path` (``data``,
            ``train_subset``, ``recalibrate_bn``, ``linear_points``, ``continuity_k``, ``loss_fn``, ...). ``data``
            takes every form :func:`connect` takes: the very ``DataLoader`` (or ``datasets.Dataset``) the path was
            built with is judged as its training split alone, and the metrics, plots, report and card then hold
            no test figure ("not evaluated").

    Returns:
        The result of :func:`~hf_llpf.evaluation.evaluate_path`, as written.

    Raises:
        RunDirectoryError: not a run directory, or no data recorded and none given.
        ConfigError: invalid settings.
    """
    from accelerate import PartialState

    from hf_llpf.evaluation import as_path, evaluate_path
    from hf_llpf.run import PLOTS_DIR
    from hf_llpf.run.ownership import refuse_links_under

    path = as_path(path_or_run_dir, template)
    if report:  # plots are drawn by file name: never into a link planted in the run directory
        refuse_links_under(path.root, [PLOTS_DIR])
    result = evaluate_path(path, template=template, accelerator=accelerator, **options)
    # evaluate_path has set up the process state (its own Accelerator when none was given).
    state = accelerator or PartialState()
    tables = None
    if report and options.get("sharding") == "fsdp":  # layers.png's tables by rows too, every process taking part
        from hf_llpf.reporting.layer_plots import layer_tables_by_rows

        tables = layer_tables_by_rows(path, state.device)
    if state.is_main_process:
        record_evaluation(path.root, result, template=template, report=report, layer_tables=tables)
    return result


def record_evaluation(
    run_dir: str | os.PathLike,
    result: dict[str, Any],
    *,
    template: nn.Module | None = None,
    report: bool = True,
    layer_tables: Any = None,
) -> None:
    """Write an evaluation's ``result`` (:func:`~hf_llpf.evaluation.evaluate_path`) into its run directory: the
    metrics files (:func:`hf_llpf.run.write_evaluation`), and with ``report`` the plots and the report section of
    ``README.md``. Called once everything is computed, so a failure before leaves the run directory unchanged.
    ``layer_tables``: ``layers.png``'s tables computed by rows (a sharded evaluation), else the plot reads the points
    whole."""
    from hf_llpf.reporting.plots import plot_path
    from hf_llpf.reporting.report import write_report
    from hf_llpf.run import write_evaluation

    write_evaluation(run_dir, result)
    if report:
        plot_path(run_dir, template=template, layer_tables=layer_tables)
        write_report(run_dir)
