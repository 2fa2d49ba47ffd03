"""Experiment trackers (``report_to``, through Accelerate): the run's settings, a row per tick, the ceiling."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from accelerate import Accelerator

from hf_llpf.config import ConnectConfig


def tick_logger(
    config: ConnectConfig, accelerator: Accelerator, *, ceiling: float | None = None
) -> Callable[[dict], None] | None:
    """With ``report_to``: start the run's experiment trackers and return the per-tick logging callback.

    Each tick logs its training loss, stage, distance to θ_B, SGD iterations so far and, where the certifier
    measured them, the probe losses of its point and segment, at step = its tick; with a loss ceiling, the
    ceiling too (``loss_ceiling``, one value per tick, so it draws as a line beside the probe losses).
    Without ``report_to``: ``None`` (nothing is started).
    """
    if not config.report_to:
        return None
    accelerator.init_trackers("hf_llpf", config=tracker_config(config))
    keys = ("train_loss", "stage", "dist_b", "sgd_iters", "probe_loss", "segment_loss")
    fixed = {} if ceiling is None else {"loss_ceiling": ceiling}

    def on_tick(row: dict) -> None:
        logged = {k: row[k] for k in keys if row.get(k) is not None}
        accelerator.log({**logged, **fixed}, step=row["tick"])

    return on_tick


def tracker_config(config: ConnectConfig) -> dict[str, int | float | str | bool]:
    """The run's settings flattened for experiment trackers: ``m2o.policy``-style keys, scalar values only
    (TensorBoard's hparams refuse nested dicts, lists and None; those become their JSON text)."""
    flat: dict[str, int | float | str | bool] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value)

    walk("", config.model_dump(mode="json"))
    return flat
