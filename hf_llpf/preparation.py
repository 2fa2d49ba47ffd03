"""One run preparation for the entry points that build a path from endpoints: settings already resolved →
endpoints loaded and checked → storage → data → the run's data config applied alike to every endpoint → assets →
stage plan → certifier.

Everything here happens before the run directory is opened, so any problem is a clear error before anything is
written. The order is the order the engine's seeded randomness depends on: it must not change.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from hf_llpf.algorithms.certify import Certifier, run_certifier
from hf_llpf.config import ConnectConfig
from hf_llpf.data.intake import training_data
from hf_llpf.models.endpoints import Endpoint, check_endpoints_match, check_finite
from hf_llpf.models.timm_config import run_data_config, with_data_config
from hf_llpf.progress import progress_requested
from hf_llpf.run.assets import Assets, run_assets
from hf_llpf.run.inputs import example_batch, prepare_data, resolve_endpoint, stage_plan
from hf_llpf.run.storage import PointStorage
from hf_llpf.sharding.rows import (
    RowsEndpoint,
    check_headers,
    load_structure,
    measure_in,
    reads_by_rows,
    reshard,
    sharded_start,
)


@dataclass
class PreparedRun:
    """What a run works on, prepared once by :func:`prepare_run`.

    Attributes:
        endpoints: θ_A and θ_B (one endpoint for a walk to the origin), as the points store them, each carrying
            the run's data config.
        config: the settings, their ``data`` recording what was read.
        storage: the dtype and shard size of the points.
        loader: the training batches of the repair SGD; ``bundle``: the loaded data (``None`` for Python batches).
        example: one batch, for tracing the data flow.
        assets: the companion files the points carry (tokenizer, processor, timm config).
        plan: the Follow-Data-Flow stage plan (``None`` from :func:`prepare_inputs`).
        certifier: the run's certifier (disabled without a ceiling; ``None`` from :func:`prepare_inputs`).
        setup: seconds of each preparation phase (``setup_endpoints``, ``setup_data``, ``setup_stages``,
            ``setup_probe``), for ``--profile``.
        owned: per endpoint, whether the run loaded it itself (from a folder or the Hub) and may change or free
            its model once nothing reads it any more; a module the caller passed is never changed.
    """

    endpoints: list[Endpoint]
    config: ConnectConfig
    storage: PointStorage
    loader: Any
    bundle: Any
    example: Any
    assets: Assets
    plan: Any
    certifier: Certifier | None
    setup: dict[str, float] = field(default_factory=dict)
    owned: list[bool] = field(default_factory=list)


def prepare_inputs(models: list[Any], train_data: Any, config: ConnectConfig, *, progress: bool) -> PreparedRun:
    """The first half of :func:`prepare_run`: the endpoints loaded and checked, the storage, the data and the run's
    data config applied alike to every endpoint, the assets (``plan`` and ``certifier`` left ``None``). What a
    comparison needs before it runs each method (:func:`hf_llpf.compare`).

    Raises:
        LLPFError: an endpoint that does not load, holds a non-finite value or does not match the other; data that
            do not fit endpoint A.
    """
    setup: dict[str, float] = {}
    t = time.perf_counter()
    endpoints = _endpoints(models, config, progress=progress)
    for endpoint, label in zip(endpoints, "AB"):
        if isinstance(endpoint, RowsEndpoint):  # finite values: on each process's rows (prepare_run)
            check_headers(endpoint, label=label)
        else:
            check_finite(endpoint, label=label)
    if len(endpoints) == 2:
        check_endpoints_match(endpoints[0].model, endpoints[1].model)
    # point_dtype narrower than the endpoints': the path starts and ends at the endpoints as they are stored.
    storage = PointStorage.from_config(config)
    owned = [isinstance(m, (str, os.PathLike)) for m in models]
    endpoints = [storage.endpoint(e, owned=o) for e, o in zip(endpoints, owned)]
    setup["setup_endpoints"] = time.perf_counter() - t
    t = time.perf_counter()
    loader, bundle, config = prepare_data(train_data, config, *endpoints)
    example = example_batch(loader)
    # timm points say what they were trained on (input size, normalisation); the endpoints' companion files are
    # checked now, before any work, and travel with the points (hf_llpf.run.assets).
    data_config = run_data_config(bundle, example, config.data)
    endpoints = [with_data_config(e, data_config) for e in endpoints]
    other = endpoints[1] if len(endpoints) == 2 else None
    assets = run_assets(endpoints[0], other, bundle, keep_auto_map=config.keep_auto_map)
    setup["setup_data"] = time.perf_counter() - t
    return PreparedRun(endpoints, config, storage, loader, bundle, example, assets, None, None, setup, owned)


# False: a sharded run loads both endpoints whole in every process (the route before rows were read; tests compare).
_SHARDED_ROWS = True


def _endpoints(models: list[Any], config: ConnectConfig, *, progress: bool) -> list[Endpoint]:
    """The endpoints loaded; under ``sharding: fsdp`` with two folders or Hub ids, their structure only, parameters on
    the meta device (:mod:`hf_llpf.sharding.rows`: each process reads its rows once the model is sharded)."""
    with progress_requested(progress):
        if _SHARDED_ROWS and config.sharding == "fsdp" and len(models) == 2 and reads_by_rows(models):
            endpoints = [load_structure(m) for m in models]
            if all(isinstance(e, RowsEndpoint) for e in endpoints):
                return endpoints
        return [resolve_endpoint(m) for m in models]


def prepare_run(
    models: list[Any],
    train_data: Any,
    config: ConnectConfig,
    *,
    loss_fn: Any,
    accelerator: Any,
    progress: bool,
    probe_data: Any = None,
    certifier: Callable[[PreparedRun], Certifier] | None = None,
) -> PreparedRun:
    """Prepare a run from endpoint specs, modules or Endpoints (``[A, B]``, or ``[A]`` for a walk).

    Args:
        certifier: builds the run's certifier from the prepared run (a curve's: :mod:`hf_llpf.baselines.certify`);
            default: LLPF's (:func:`~hf_llpf.algorithms.certify.run_certifier`).

    Raises:
        LLPFError: an endpoint that does not load, holds a non-finite value or does not match the other; data that
            do not fit endpoint A; a ceiling that cannot be resolved.
    """
    prepared = prepare_inputs(models, train_data, config, progress=progress)
    ea, rows = prepared.endpoints[0], isinstance(prepared.endpoints[0], RowsEndpoint)
    t = time.perf_counter()
    if rows:  # the sharded working model, holding θ_A's rows; both endpoints' rows read and checked finite
        ea.work = sharded_start(ea, prepared.endpoints[1], accelerator.device)
        prepared.setup["setup_endpoints"] += time.perf_counter() - t
        t = time.perf_counter()
    prepared.plan = stage_plan(replace(ea, model=ea.work) if rows else ea, prepared.example, prepared.config)
    prepared.setup["setup_stages"] = time.perf_counter() - t
    t = time.perf_counter()
    if certifier is None:
        p, within = prepared, measure_in(prepared.endpoints) if rows else None
        prepared.certifier = run_certifier(p.endpoints, training_data(train_data), p.loader, p.bundle, p.config,
                                           loss_fn, accelerator, probe_data, measure_in=within)  # fmt: skip
    else:
        prepared.certifier = certifier(prepared)
    if rows:  # the trace and the probes leave the root unit gathered whole
        reshard(ea.work)
    prepared.setup["setup_probe"] = time.perf_counter() - t
    return prepared


__all__ = ["PreparedRun", "prepare_inputs", "prepare_run"]
