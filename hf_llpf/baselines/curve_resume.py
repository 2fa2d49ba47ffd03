"""What a curve's ``--resume`` must match and may change (docs/baselines.md, "Curves through connect", Resume).

A resume continues the same curve: the checkpoint's method, the endpoints ``endpoints.json`` names and the settings
``llpf_config.yaml`` records, but for the limits of :data:`RESUMABLE_CURVE_SETTINGS`, which say only how far the
training may still go and may be raised to continue it further (as LLPF's resume may change the settings its advice
names, :data:`hf_llpf.run.resume.RESUMABLE_SETTINGS`). Every other setting shapes the curve already trained (its
points, learning rate, seeds, batches): changing it would mix two runs in one path.

A finished run is said complete before the run preparation (endpoints, data, the certifier's probes) when its
checkpoint, settings, data and endpoints are seen to be this run's without loading anything
(:func:`finished_before_preparation`); anything else goes through the preparation and :func:`check_same_curve`.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path as FsPath
from typing import Any

import yaml
from torch import nn

from hf_llpf.baselines.pathdir import PreparedEnds, curve_config, curve_endpoints
from hf_llpf.data.intake import read_data
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.files.hashing import state_hash
from hf_llpf.files.textfiles import read_yaml
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.run import read_run_json
from hf_llpf.run.layout import CONFIG_YAML, ENDPOINTS_JSON, METRICS_JSON
from hf_llpf.run.resume import read_checkpoint

# Settings a curve's resume may raise, by their name in llpf_config.yaml: the cap of a certified curve's rounds and
# Bézier's fixed budget (no ceiling). Only raised: a lower limit could be below what the training already spent.
RESUMABLE_CURVE_SETTINGS = ("baseline.certify.cap", "baseline.bezier.iters")


def recorded_settings(job: Any, *, certified: bool) -> dict[str, Any]:
    """The settings the curve of ``job`` (a :class:`~hf_llpf.baselines.curve_run.CurveJob`) records
    (``llpf_config.yaml``'s ``baseline``): points, the method's own (under a ceiling without the fixed budget, which
    is not used), the certification's rounds (``certified``: the run has a ceiling), and whether BatchNorm is
    recomputed."""
    settings: dict[str, Any] = {"points": job.points}
    if job.entry.trains:
        unused = ("iters", "cycles") if certified else ()
        settings[job.entry.name] = {k: v for k, v in asdict(job.settings).items() if k not in unused}
        if certified:
            settings["certify"] = asdict(job.rounds)
    settings["recalibrate_bn"] = job.recalibrate_bn or job.entry.trains
    return settings


def check_same_curve(root: Any, ckpt: dict, ends: PreparedEnds, job: Any) -> dict[str, list[Any]]:
    """A resume continues the same curve: the checkpoint's method, the settings ``llpf_config.yaml`` records (but a
    raised :data:`RESUMABLE_CURVE_SETTINGS`) and the endpoints ``endpoints.json`` names; every difference is listed.

    Returns:
        The raised settings, ``{name: [old, new]}`` (empty: the same settings).

    Raises:
        RunDirectoryError: another method. ConfigError: other settings or endpoints.
    """
    if ckpt.get("method") != job.entry.name:
        raise RunDirectoryError(
            f"--resume: {root} holds a {ckpt.get('method')!r} run, this one is {job.entry.name!r}; use --overwrite"
        )
    saved, now = read_yaml(FsPath(root) / CONFIG_YAML), yaml.safe_load(yaml.safe_dump(curve_config(ends.record)))
    changed, problems = {}, []
    for key, was, is_ in _differences(saved, now):
        if key in RESUMABLE_CURVE_SETTINGS and isinstance(was, int) and isinstance(is_, int) and is_ > was:
            changed[key] = [was, is_]
        elif key in RESUMABLE_CURVE_SETTINGS:
            problems.append(f"--resume: {key} was {was!r} in {root}, now {is_!r} (it may only be raised: the "
                            "training may have spent it already)")  # fmt: skip
        else:
            problems.append(f"--resume: {key} was {was!r} in {root}, now {is_!r} (a curve resumes with its "
                            f"settings; it may raise only {', '.join(RESUMABLE_CURVE_SETTINGS)})")  # fmt: skip
    recorded, given = read_run_json(root, ENDPOINTS_JSON), curve_endpoints(ends.ea, ends.eb, ends.record, None)
    for key in ("A", "B"):
        was = (recorded.get(key) or {}).get("sha256") if isinstance(recorded.get(key), dict) else None
        if was is not None and was != given[key]["sha256"]:
            problems.append(f"--resume: endpoint {key} is not the one this run started with (its weights' sha256)")
    if problems:
        raise ConfigError(problems)
    return changed


def refuse_raised_when_over(root: Any, ckpt: dict, changed: dict[str, list[Any]]) -> None:
    """A raised limit continues a training that was not over; a run whose training was over (finished, or killed
    while writing its points) has nothing it could continue.

    Raises:
        ConfigError: naming each raised setting and saying how to build the run again.
    """
    if changed and (ckpt.get("done") or ckpt.get("trained")):
        state = "is complete" if ckpt.get("done") else "had finished its training"
        raised = "; ".join(f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise ConfigError(
            f"--resume: {root} {state}, so a raised limit cannot continue it ({raised}); pass --overwrite "
            "(exist='overwrite') to build it again with the new settings"
        )


def finished_before_preparation(job: Any, models: list[Any], train_data: Any, config: Any, run_dir: Any) -> bool:
    """Whether ``run_dir`` holds this curve finished, seen without loading the endpoints or the data: a done
    checkpoint of the same method, ``path_metrics.json``, the same recorded settings and data source, and the same
    endpoints (a module's weights hashed in memory, a local folder or file by the name it was given). Anything it
    cannot tell this way (a Hub id, a differing setting) is left to the preparation and :func:`check_same_curve`."""
    root = FsPath(run_dir)
    if job.exist != "resume" or job.inside is not None or not (root / METRICS_JSON).is_file():
        return False
    if not (root / CONFIG_YAML).is_file() or not (root / ENDPOINTS_JSON).is_file():
        return False
    ckpt = read_checkpoint(root)
    if not (isinstance(ckpt, dict) and ckpt.get("done") and ckpt.get("method") == job.entry.name):
        return False
    saved = read_yaml(root / CONFIG_YAML)
    certified = job.entry.trains and (job.ceiling is not None or config.loss_ceiling is not None)
    now = {"method": job.entry.name, "seed": config.seed, "baseline": recorded_settings(job, certified=certified)}
    if not isinstance(saved, dict) or any(saved.get(k) != v for k, v in yaml.safe_load(yaml.safe_dump(now)).items()):
        return False
    data = saved.get("data")
    if (data.get("source") if isinstance(data, dict) else None) != _source(train_data, config):
        return False
    recorded = read_run_json(root, ENDPOINTS_JSON)
    return all(_same_endpoint(m, recorded.get(k)) for m, k in zip(models, ("A", "B")))


def _source(train_data: Any, config: Any) -> str | None:
    """The data source a run on ``train_data`` records (``None``: data passed from Python record none)."""
    given = read_data(train_data, field="train_data")
    if given.form == "default":
        return config.data.source
    if given.form == "spec":
        return given.spec if isinstance(given.spec, str) else given.spec.source
    return given.bundle.config.source if given.form == "bundle" else None


def _same_endpoint(model: Any, recorded: Any) -> bool:
    """Whether ``model`` is seen, without loading it, to be the endpoint ``endpoints.json`` records."""
    if not isinstance(recorded, dict):
        return False
    if isinstance(model, (nn.Module, Endpoint)):
        sha = state_hash(model) if isinstance(model, nn.Module) else model.describe()["sha256"]
        return sha == recorded.get("sha256")
    local = isinstance(model, (str, os.PathLike)) and FsPath(model).exists()
    return local and str(model) == recorded.get("id")


def _differences(saved: Any, now: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The settings that differ, by dotted name (``baseline.points``), with their two values."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [] if saved == now else [(prefix.rstrip("."), saved, now)]
    out = []
    for key in sorted(set(saved) | set(now), key=str):
        out += _differences(saved.get(key), now.get(key), f"{prefix}{key}.")
    return out


__all__ = [
    "RESUMABLE_CURVE_SETTINGS",
    "check_same_curve",
    "finished_before_preparation",
    "recorded_settings",
    "refuse_raised_when_over",
]
