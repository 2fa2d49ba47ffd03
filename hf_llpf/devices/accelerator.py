"""The Accelerator of a run: device, processes, precision and trackers, and the one line that states them.

Device placement comes from the Accelerator alone, never from ``.cuda()``; :mod:`hf_llpf.devices.process_local`
gives one process its own view of it for work that is not shared between processes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from accelerate import Accelerator

from hf_llpf.batches import cpu_only
from hf_llpf.errors import ConfigError


def make_accelerator(
    *, mixed_precision: str = "auto", report_to: list[str] | None = None, project_dir: str | None = None
) -> Accelerator:
    """The Accelerator of a run: the device, processes, precision and trackers (never Accelerate's FSDP plugin:
    ``accelerate launch --use_fsdp`` asks for hf_llpf's own sharding, :func:`launched_sharding`).

    Accelerate chooses the device (CUDA, MPS, XPU, ... or the CPU; ``ACCELERATE_USE_CPU`` forces the CPU), and
    ``mixed_precision="auto"`` leaves the precision to the launch (``accelerate launch --mixed_precision``, its
    ``ACCELERATE_MIXED_PRECISION`` environment, the accelerate config), ``no`` when nothing says.

    Raises:
        ConfigError: a tracker's package is not installed, or this process already runs an Accelerator with
            another mixed precision (Accelerate's state is per process).
    """
    import importlib.util

    from accelerate.state import AcceleratorState

    missing = [name for name in report_to or [] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            [f"report_to={name!r}: the package {name!r} is not installed (pip install {name})" for name in missing]
        )
    current = AcceleratorState._shared_state.get("_mixed_precision") if AcceleratorState._shared_state else None
    if mixed_precision != "auto" and current is not None and str(current) != mixed_precision:
        raise ConfigError(
            f"mixed_precision={mixed_precision!r}: this process already runs Accelerate with "
            f"{current!r}; start a new process (a new `hf-llpf connect`) to change it"
        )
    with _without_accelerate_fsdp():
        return Accelerator(
            cpu=cpu_only(),
            mixed_precision=None if mixed_precision == "auto" else mixed_precision,
            log_with=list(report_to or []) or None,
            project_dir=project_dir,
        )


@contextlib.contextmanager
def _without_accelerate_fsdp() -> Iterator[None]:
    """Accelerate's own FSDP plugin kept out while the Accelerator is made: under ``accelerate launch --use_fsdp``
    it would wrap the models it prepares itself and refuses a CPU outright, while hf_llpf shards with its own FSDP2
    code (``sharding: fsdp``, :func:`launched_sharding`) over the process group the launch made."""
    asked = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        yield
    finally:
        if asked is not None:
            os.environ["ACCELERATE_USE_FSDP"] = asked


def launched_sharding(config: Any) -> Any:
    """``config`` with ``sharding: fsdp`` when the launch asked for FSDP and the settings did not say otherwise.

    ``accelerate launch --use_fsdp`` (or an accelerate config with ``distributed_type: FSDP``) sets
    ``ACCELERATE_USE_FSDP`` in every process; a connect whose settings leave ``devices.sharding`` unset then runs
    sharded, with hf_llpf's own FSDP2 sharding over the process group the launch made (whatever FSDP version the
    launch names: Accelerate's plugin is not used, docs/distributed.md). A ``sharding`` given in the settings or the
    recipe, ``none`` included, is kept.
    """
    asked = os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in ("1", "true", "yes")
    if not asked or "sharding" in config.model_fields_set or config.sharding != "none":
        return config
    return config.model_copy(update={"sharding": "fsdp"})


def describe_launch(accelerator: Accelerator, *, sharding: str = "none") -> dict[str, Any]:
    """What the run runs on, as recorded in ``summary.run.launch`` and stated in one line at its start.

    ``asked_processes`` is set when the environment names a process group (``MASTER_ADDR``, which
    ``accelerate launch --num_processes N`` sets) that this run did not join: Accelerate without a GPU and
    without ``--multi_cpu`` runs the script once, alone.
    """
    processes = accelerator.num_processes
    launch = {
        "processes": processes,
        # A CPU's index names no device of its own (torchrun reports cpu:0 on some machines).
        "device": "cpu" if accelerator.device.type == "cpu" else str(accelerator.device),
        # A repeat's ProcessLocal view is one process with no process group of its own.
        "distributed": str(getattr(accelerator, "distributed_type", "process-local")).rsplit(".", 1)[-1].lower(),
        "sharding": (
            "fsdp (each process holds 1/N of every parameter)"
            if sharding == "fsdp"
            else "none (every process holds the whole model)"
        ),
        "mixed_precision": str(accelerator.mixed_precision),
    }
    if processes == 1 and os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ:
        launch["note"] = (
            "the environment names a process group (MASTER_ADDR) but one process started: accelerate launch "
            "runs one process without a GPU unless --multi_cpu is given; torchrun --nproc_per_node N starts N"
        )
    return launch


def launch_line(launch: dict[str, Any]) -> str:
    """The start line of a command: processes, device, how the work is split, and the launch's note if any."""
    split = "data-parallel" if launch["processes"] > 1 else "one process"
    if launch["sharding"].startswith("fsdp"):
        split = "sharded"
    # Accelerate's "no" distributed type says only that there is no process group: one process says so already.
    how = split if launch["distributed"] in ("no", "process-local") else f"{split}, {launch['distributed']}"
    line = (
        f"{launch['processes']} process(es) on {launch['device']} ({how}), "
        f"sharding: {launch['sharding']}, mixed precision: {launch['mixed_precision']}"
    )
    return line + (f"; {launch['note']}" if launch.get("note") else "")
