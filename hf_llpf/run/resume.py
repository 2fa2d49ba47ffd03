"""What a resumed run must match: the checkpoint it continues, its endpoints, data and settings."""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any

import hf_llpf.run.state as resume_state
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.models import Endpoint
from hf_llpf.run.layout import CHECKPOINT_DIR, CONFIG_YAML, ENDPOINTS_JSON
from hf_llpf.run.reader import read_run_json
from hf_llpf.textfiles import check_kind, read_yaml


def read_checkpoint(run_dir: str | os.PathLike) -> dict | None:
    """The resume checkpoint of ``run_dir``, or None (every process reads it; only the main one writes it)."""
    return resume_state.load(FsPath(run_dir) / CHECKPOINT_DIR)


# Settings a resume may change (the divergence guard's advice names them); each change is recorded in the summary.
RESUMABLE_SETTINGS = (
    "step_a",
    "step_r",
    "step_f",
    "min_iters",
    "max_iters",
    "loss_limit",
    "max_failures",
    "max_ticks",
)
# Settings added after run directories were written: one without them ran as these values do.
ADDED_SETTINGS = {"point_dtype": "auto", "max_shard_size": "5GB"}


def check_same_run(
    run_dir: str | os.PathLike, config: ConnectConfig, ea: Endpoint, eb: Endpoint
) -> dict[str, list[Any]]:
    """A resumed run must read the same endpoints and data with the same settings, or the path would mix two runs.

    Returns the changed :data:`RESUMABLE_SETTINGS` as ``{key: [old, new]}``.

    Raises:
        ConfigError: a setting outside :data:`RESUMABLE_SETTINGS` differs, or an endpoint's content differs from
            the one the run started with (``endpoints.json``); every difference is listed.
    """
    root = FsPath(run_dir)
    saved = {**ADDED_SETTINGS, **read_yaml(root / CONFIG_YAML)}
    now = config.model_dump(mode="json")
    differing = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    problems = [
        f"--resume: {k} was {saved.get(k)!r} in {run_dir}, now {now.get(k)!r} (a resume may change only "
        f"{', '.join(RESUMABLE_SETTINGS)})"
        for k in differing
        if k not in RESUMABLE_SETTINGS
    ]
    recorded = read_run_json(root, ENDPOINTS_JSON)
    for key, ep in (("A", ea), ("B", eb)):
        entry = check_kind(recorded.get(key), kind=(dict, type(None)), where=f"{root / ENDPOINTS_JSON}: {key}",
                           error=RunDirectoryError)  # fmt: skip
        was = check_kind((entry or {}).get("sha256"), kind=(str, type(None)),
                         where=f"{root / ENDPOINTS_JSON}: {key}.sha256", error=RunDirectoryError)  # fmt: skip
        if was is not None and was != ep.describe()["sha256"]:
            problems.append(
                f"--resume: endpoint {key} ({ep.source}) is not the one this run started with: its weights' sha256 "
                f"is {ep.describe()['sha256'][:16]}…, endpoints.json records {was[:16]}…"
            )
    if problems:
        raise ConfigError(problems)
    return {k: [saved.get(k), now.get(k)] for k in differing}
