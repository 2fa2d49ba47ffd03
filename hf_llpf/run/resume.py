"""What a resumed run must match (the checkpoint it continues, its endpoints, data and settings) and what it
records: the stretches of the sessions that wrote it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path as FsPath
from typing import Any

import hf_llpf.run.sharded_state as sharded_state
import hf_llpf.run.state as resume_state
from hf_llpf.config import SCHEMA, SCHEMA_1_METHODS, ConnectConfig, flat_settings, setting_name, upgrade_settings
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.files.textfiles import check_kind, read_yaml
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run.layout import CHECKPOINT_DIR, CONFIG_YAML, ENDPOINTS_JSON, METRICS_JSON
from hf_llpf.run.reader import read_metrics, read_run_json

logger = logging.getLogger(__name__)


def read_checkpoint(run_dir: str | os.PathLike) -> dict | None:
    """The resume checkpoint of ``run_dir``, or None (every process reads it; only the main one writes it). A
    checkpoint written before settings schema 2 names its method as schema 2 does (``m2o`` → ``cross-sphere``). A
    sharded run's checkpoint gives each process its own state (:mod:`hf_llpf.run.sharded_state`)."""
    folder = FsPath(run_dir) / CHECKPOINT_DIR
    if sharded_state.is_sharded(folder):
        return sharded_state.load(folder)
    ckpt = resume_state.load(folder)
    if isinstance(ckpt, dict) and "schema_version" not in ckpt:
        method = ckpt.get("method")
        ckpt = {**ckpt, "schema_version": SCHEMA, "method": SCHEMA_1_METHODS.get(method, method)}
    return ckpt


# Settings a resume may change (the divergence guard's advice names them), as ConnectConfig's attributes; each
# change is recorded in the summary under that name.
RESUMABLE_SETTINGS = (
    "step_a",
    "step_r",
    "step_f",
    "min_iters",
    "max_iters",
    "repair_budget",
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
    saved, now, differing = _differences(root, config)
    problems = [
        f"--resume: {setting_name(k)} was {saved.get(k)!r} in {run_dir}, now {now.get(k)!r} (a resume may change "
        f"only {', '.join(map(setting_name, RESUMABLE_SETTINGS))})"
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


def _differences(root: FsPath, config: ConnectConfig) -> tuple[dict, dict, list[str]]:
    """The settings recorded in ``root/llpf_config.yaml``, those given, and the attributes where they differ
    (a file of any schema: flat before schema 3, in blocks since)."""
    saved, notice = upgrade_settings(read_yaml(root / CONFIG_YAML), where=str(root / CONFIG_YAML))
    if notice is not None:
        logger.warning(notice)
    saved = {**ADDED_SETTINGS, **flat_settings(saved)}
    now = config.model_dump(mode="json")
    return saved, now, sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def refuse_path_without_checkpoint(run_dir: str | os.PathLike, config: ConnectConfig) -> None:
    """``--resume`` of a run directory that holds a path but no checkpoint (removed, or never written) is refused:
    without the checkpoint nothing can be continued, and starting again would replace the path. The message says
    whether it is finished and how ``config`` differs from the settings it recorded (``llpf_config.yaml``), as a
    resume with a checkpoint compares them (:func:`check_same_run`).

    Raises:
        RunDirectoryError: the folder holds ``path_metrics.json`` and no checkpoint.
    """
    root = FsPath(run_dir)
    if resume_state.exists(root / CHECKPOINT_DIR) or not (root / METRICS_JSON).is_file():
        return
    metrics = read_metrics(root)
    finished = "run" in metrics.get("summary", {})
    state = f"a {'finished' if finished else 'partial'} path of {len(metrics['points'])} points"
    if (root / CONFIG_YAML).is_file():
        saved, now, differing = _differences(root, config)
        # Checked before the data are loaded: of the data, the spec as given is compared.
        source = [(saved.get("data") or {}).get("source"), (now.get("data") or {}).get("source")]
        changes = [f"{setting_name(k)} was {saved.get(k)!r}, now {now.get(k)!r}" for k in differing if k != "data"]
        changes += [f"data.source was {source[0]!r}, now {source[1]!r}"] if source[0] != source[1] else []
        settings = (
            f"the settings differ from its {CONFIG_YAML}: {'; '.join(changes)}"
            if changes
            else (f"the settings are those of its {CONFIG_YAML}" + ("; nothing to resume" if finished else ""))
        )
    else:
        settings = f"it has no {CONFIG_YAML} to compare the settings with"
    raise RunDirectoryError(
        f"--resume {str(root)!r}: it holds {state} and no {CHECKPOINT_DIR}/ to continue it from ({settings}). "
        "--resume never rewrites a path it cannot continue: it is kept as it is. Pass --overwrite to build it "
        "again, or choose another --out"
    )


class Stretches:
    """The stretches of a run: one per session that wrote it (the first, and one per ``--resume``), each with the
    hf_llpf version that wrote it and what it counted (ticks, SGD iterations, probes, seconds).

    The counts travel in every checkpoint (:meth:`checkpoint`), cut at that checkpoint: a run killed and resumed
    counts each tick once, as the uninterrupted run does, and the stretches add up to the run's totals.

    Args:
        carried: the stretches of the sessions before (from the checkpoint); empty for a new run.
        work: returns what the method has done so far (``{"ticks", "sgd_iters"}``).
        counters: returns the certifier's counters so far (``{"probes", "probes_stopped_early"}``).
    """

    COUNTS = ("ticks", "sgd_iters", "probes", "probes_stopped_early")

    def __init__(self, carried: list[dict], *, work, counters):
        from hf_llpf import __version__

        self.carried, self.work, self.counters = carried, work, counters
        self.version = __version__
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._clock = time.perf_counter()
        # A new run counts from zero (the endpoints' probes made to resolve the ceiling included); a resumed one
        # from the checkpoint it continues.
        self._start = self._now() if carried else dict.fromkeys(self.COUNTS, 0)

    def _now(self) -> dict[str, int]:
        return {**self.work(), **self.counters()}

    def current(self) -> dict[str, Any]:
        """This session's stretch so far."""
        now = self._now()
        counts = {k: now[k] - self._start[k] for k in self.COUNTS}
        seconds = round(time.perf_counter() - self._clock, 3)
        return {"version": self.version, "started": self.started, **counts, "seconds": seconds}

    def all(self) -> list[dict[str, Any]]:
        """Every stretch, this session's last."""
        return [*self.carried, self.current()]

    def checkpoint(self) -> dict[str, Any]:
        """What a checkpoint carries: the certifier's counters and the stretches up to this moment."""
        return {"counters": self.counters(), "stretches": self.all()}

    def totals(self, stretches: list[dict[str, Any]]) -> dict[str, Any]:
        """``seconds``: the seconds of ``stretches`` (what :meth:`all` returned for the summary) added up, so that the
        total is the sum of the stretches as written, not of a later reading of the clock (the other counts are the
        run's own totals)."""
        return {"seconds": round(sum(s.get("seconds") or 0.0 for s in stretches), 3)}


def carried_stretches(run_dir: str | os.PathLike, ckpt: dict | None) -> list[dict]:
    """The stretches before this session: the checkpoint's, or for a checkpoint of a version that kept none, one
    stretch naming the version that started the run (``endpoints.json``), its counts unknown."""
    if ckpt is None:
        return []
    if isinstance(ckpt.get("stretches"), list):
        return [s for s in ckpt["stretches"] if isinstance(s, dict)]
    try:
        version = read_run_json(run_dir, ENDPOINTS_JSON).get("hf_llpf_version")
    except RunDirectoryError:  # missing or damaged: the version is unknown, the resume itself checks the file
        version = None
    return [{"version": version, "counted": False}]


def version_notice(run_dir: str | os.PathLike, carried: list[dict]) -> str | None:
    """One line when an earlier stretch of the run was written by another hf_llpf version (None otherwise)."""
    from hf_llpf import __version__

    others = sorted({str(s.get("version")) for s in carried if s.get("version") != __version__})
    if not others:
        return None
    return (
        f"--resume: {run_dir} was written so far by hf_llpf {', '.join(others)}; this stretch is written by "
        f"{__version__} (each stretch's version is recorded in summary.run.stretches)"
    )
