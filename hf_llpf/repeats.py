"""Consistency: R paths between the same endpoints with different seeds of the minimal training (docs/evaluation.md).

The paper claims the loss curves of ≥ 10 repetitions almost overlap; :func:`run_repeats` measures it: each
repeat r is a full run directory ``RUN_DIR/repeat_{r:02d}`` built with seed ``config.seed + r`` and evaluated
like any path, and ``RUN_DIR/consistency.json`` holds mean ± std and min/max of the summary figures.

Under several processes (``accelerate launch``/``torchrun``) the repeats are spread over them: process p builds
and evaluates repeats p, p + P, ... on its own device as single-process runs (:class:`ProcessLocal`), so each
repeat is the same path a one-process run of its seed builds; the main process then writes the summary.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path as FsPath
from typing import Any

from torch import nn

from hf_llpf.batches import LossFn
from hf_llpf.config import ConnectConfig
from hf_llpf.data.bundle import DataBundle
from hf_llpf.data.text import TextBundle
from hf_llpf.devices.accelerator import make_accelerator
from hf_llpf.devices.process_local import ProcessLocal
from hf_llpf.errors import ConfigError
from hf_llpf.files.textfiles import read_yaml
from hf_llpf.reporting.plots import plot_repeats
from hf_llpf.reporting.report import write_report
from hf_llpf.run import RunWriter, atomic_write_text, read_metrics, read_run_json
from hf_llpf.run.inputs import resolve_config
from hf_llpf.run.layout import CONFIG_YAML, CONSISTENCY_JSON, PLOTS_DIR

# (summary section, figure) pairs reported across repeats; the *_recal sections are added when present.
FIGURES = ("max_train_loss", "barrier", "min_train_acc", "worst_continuity_loss")


def _stats(values: list[float]) -> dict[str, Any]:
    # Sample standard deviation (n − 1): the repeats are a sample of the seeds; 0 for a single repeat.
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values), "values": values}


def consistency_summary(run_dirs: list[str | os.PathLike]) -> dict[str, Any]:
    """Mean ± std and min/max over evaluated run directories of max train loss, barrier, min accuracy, continuity.

    Returns:
        ``{"repeats", "runs", "seeds", "figures": {"llpf.max_train_loss": {mean, std, min, max, values}, ...}}``.
    """
    summaries = [read_metrics(d)["summary"] for d in run_dirs]
    figures: dict[str, Any] = {}
    for section in ("llpf", "linear", "llpf_recal", "linear_recal"):
        if not all(section in s for s in summaries):
            continue
        for fig in FIGURES:
            values = [s[section].get(fig) for s in summaries]
            if all(isinstance(v, (int, float)) for v in values):
                figures[f"{section}.{fig}"] = _stats([float(v) for v in values])
    seeds = []
    for d in run_dirs:
        cfg = FsPath(d) / CONFIG_YAML
        seeds.append(_seed_of(cfg) if cfg.is_file() else None)
    return {"repeats": len(run_dirs), "runs": [FsPath(d).name for d in run_dirs], "seeds": seeds, "figures": figures}


def _seed_of(config_file: FsPath) -> int | None:
    return read_yaml(config_file).get("seed")


def run_repeats(
    model_a: Any,
    model_b: Any,
    train_data: Any = None,
    *,
    config: ConnectConfig | dict | None = None,
    run_dir: str | os.PathLike,
    repeats: int,
    loss_fn: LossFn | None = None,
    evaluate_options: dict[str, Any] | None = None,
    exist: str = "error",
    progress: bool = False,
    protected: Sequence[str | os.PathLike] = (),
) -> dict[str, Any]:
    """Build and evaluate ``repeats`` paths with seeds ``config.seed + r``; write ``consistency.json`` and plots.

    Args:
        model_a, model_b: the endpoints (as :func:`hf_llpf.connect` takes them).
        train_data: the training data (as :func:`hf_llpf.connect` takes it).
        config: the settings shared by all repeats (:class:`~hf_llpf.config.ConnectConfig` or a dict).
        run_dir: the parent folder; repeat r goes to ``run_dir/repeat_{r:02d}``.
        repeats: R ≥ 1.
        loss_fn: the path's loss, used for building and for evaluating.
        evaluate_options: keyword arguments of :func:`~hf_llpf.api.evaluate_run` (``train_subset``,
            ``recalibrate_bn``, ``data``, ``report``, ...). With a ``DataBundle`` as ``train_data`` it is the
            default ``data``.
        exist: ``"error"``, ``"overwrite"`` or ``"resume"``: for ``run_dir`` (a folder of repeats of this tool,
            see :class:`~hf_llpf.run.RunWriter` ``kind="repeats"``) and for each repeat directory.
        progress: show the progress bar of each run.
        protected: files and folders the caller reads (as for :func:`hf_llpf.connect`).

    Returns:
        The content of ``consistency.json``.

    Raises:
        ConfigError: ``repeats`` < 1.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r}: must be a positive integer (the number of paths)")
    config = resolve_config(config)
    options = _evaluate_options(evaluate_options, train_data)
    root = FsPath(run_dir)
    dirs = [root / f"repeat_{r:02d}" for r in range(repeats)]
    # The Accelerator first: it detects the processes (a bare PartialState misses CPU-only multi-process launches).
    state = make_accelerator(mixed_precision=config.mixed_precision)
    local = ProcessLocal(state) if state.num_processes > 1 else None
    # The folder of the repeats: checked (exist policy, ownership, links) and held by the main process.
    holder = RunWriter(root, exist=exist, protected=protected, kind="repeats") if state.is_main_process else None
    state.wait_for_everyone()
    try:
        _build_repeats(model_a, model_b, train_data, config, dirs, state, local, loss_fn, options, exist, progress,
                       protected)  # fmt: skip
        if state.is_main_process:
            _write_consistency(root, dirs)
    finally:
        if holder is not None:
            holder.close()
    state.wait_for_everyone()
    return read_run_json(root, CONSISTENCY_JSON)


def _evaluate_options(evaluate_options: dict[str, Any] | None, train_data: Any) -> dict[str, Any]:
    """The keyword arguments of every repeat's evaluation: ``evaluate_options``, with ``train_data`` as the default
    ``data`` when it is a data bundle."""
    options = dict(evaluate_options or {})
    if isinstance(train_data, (DataBundle, TextBundle)):
        options.setdefault("data", train_data)
    return options


def _build_repeats(a, b, train_data, config, dirs, state, local, loss_fn, options, exist, progress, protected) -> None:
    """Build and evaluate this process's share of the repeats."""
    from hf_llpf.api import connect, evaluate_run

    for r in range(state.process_index, len(dirs), state.num_processes):
        cfg = config.model_copy(update={"seed": config.seed + r})
        path = connect(
            a,
            b,
            train_data,
            config=cfg,
            run_dir=dirs[r],
            loss_fn=loss_fn,
            exist=exist,
            progress=progress and state.is_main_process,
            accelerator=local,
            protected=protected,
        )
        template = path.template if isinstance(path.template, nn.Module) else None
        evaluate_run(path, loss_fn=loss_fn, template=template, accelerator=local, **options)
    state.wait_for_everyone()


def _write_consistency(root: FsPath, dirs: list[FsPath]) -> None:
    """``consistency.json``, ``plots/repeats.png`` and the report of a folder of repeated paths."""
    result = consistency_summary(dirs)
    atomic_write_text(root / CONSISTENCY_JSON, json.dumps(result, indent=2) + "\n")
    plot_repeats(dirs, root / PLOTS_DIR / "repeats.png")
    write_report(root)


__all__ = ["FIGURES", "consistency_summary", "run_repeats"]
