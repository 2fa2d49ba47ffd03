"""A sharded run's resume state (``sharding: fsdp``) on disk as safetensors + JSON: each process writes its own
shards, no process ever holds the whole model for it, nothing is unpickled.

Each process encodes its whole resumable state with :func:`hf_llpf.run.state.encode`, its sharded tensors (the
working model's DTensors, the SGD momentum's) as its local parts; on disk (``checkpoint/`` of the run directory)::

    state.json                                 {"format": "sharded-1", "world": W, "ranks": [
                                                    {"tensors": ..., "sha256": ..., "state": ...}, ...]}
    tensors-<n>-rank-<r>-of-<W>.safetensors    every tensor of process r's state

Every process writes its tensor file under a new name first; once all are in, the main process atomically writes
``state.json`` naming them with their hashes (and each process's JSON skeleton: its own generators' states), then
removes the older tensor files. A run killed at any moment leaves a consistent checkpoint: the previous one until the
new ``state.json`` is in. The processes must share the run directory's file system.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from hf_llpf.errors import CorruptCheckpointError, RunDirectoryError
from hf_llpf.files.hashing import file_sha256
from hf_llpf.models.weights import usual_permissions
from hf_llpf.run.layout import STATE_FILE
from hf_llpf.run.state import decode, encode, next_number, tensor_files

FORMAT = "sharded-1"
_RESUME_ADVICE = "start the run again with --overwrite (or choose a new --out)"


def tensor_file(n: int, rank: int, world: int) -> str:
    """The name of process ``rank``'s tensor file in the ``n``-th checkpoint of a run of ``world`` processes."""
    return f"tensors-{n}-rank-{rank}-of-{world}.safetensors"


def _group() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def save(folder: str | os.PathLike | None, state: Any, *, write_text) -> None:
    """Every process of the group calls this with its own ``state`` (local tensors only); ``folder`` is the
    checkpoint folder on the main process (``None`` elsewhere), ``write_text(path, text)`` writes atomically.

    Raises:
        RunDirectoryError: a process could not write its tensor file (every process raises; the previous
            checkpoint is kept whole).
    """
    dist = torch.distributed
    rank, world = _group()
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    where = [None if folder is None else (str(folder), next_number(Path(folder)))]
    dist.broadcast_object_list(where, src=0)
    root, n = Path(where[0][0]), where[0][1]
    skeleton, tensors = encode(state)
    name = tensor_file(n, rank, world)
    try:
        safetensors.torch.save_file(tensors, str(root / name))
        usual_permissions(root / name)
        entry: dict[str, Any] = {"tensors": name, "sha256": file_sha256(root / name), "state": skeleton}
    except OSError as err:
        entry = {"error": f"{root / name}: {err}"}
    entries: list[Any] = [None] * world
    dist.all_gather_object(entries, entry)
    failed = [e["error"] for e in entries if "error" in e]
    if failed:
        (root / name).unlink(missing_ok=True)  # unused: the previous state file names the previous files
        raise RunDirectoryError(f"the sharded checkpoint could not be written ({'; '.join(failed)})")
    if rank == 0:
        doc = {"format": FORMAT, "world": world, "ranks": entries}
        write_text(root / STATE_FILE, json.dumps(doc) + "\n")
        for p in tensor_files(root):
            if p.name not in {e["tensors"] for e in entries}:
                p.unlink(missing_ok=True)
    dist.barrier()  # the checkpoint is complete for every process before any goes on


def is_sharded(folder: str | os.PathLike) -> bool:
    """Whether ``folder``'s state file is a sharded run's (anything else is left to :mod:`hf_llpf.run.state`)."""
    try:
        doc = json.loads((Path(folder) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and doc.get("format") == FORMAT


def load(folder: str | os.PathLike) -> Any:
    """This process's state from the sharded checkpoint in ``folder`` (its own skeleton and tensor file).

    Raises:
        RunDirectoryError: the checkpoint was written by another number of processes (both named).
        CorruptCheckpointError: the state file or this process's tensor file is damaged or does not match.
    """
    folder = Path(folder)
    rank, world = _group()
    try:
        doc = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
        saved = int(doc["world"])
    except Exception as err:  # any malformed content: one clear error, never a traceback
        raise CorruptCheckpointError(
            f"the resume checkpoint in {folder} is damaged ({type(err).__name__}: {err}): {_RESUME_ADVICE}"
        ) from None
    if saved != world:
        raise RunDirectoryError(
            f"--resume: the checkpoint in {folder} is a sharded run's of {saved} processes; this run has {world} "
            f"process(es): a sharded run resumes only with the same number of processes (torchrun "
            f"--nproc_per_node {saved} ... sharding=fsdp --resume), or {_RESUME_ADVICE}"
        )
    try:
        entry = doc["ranks"][rank]
        name = entry["tensors"]
        if not isinstance(name, str) or name != tensor_file(int(name.split("-")[1]), rank, world):
            raise ValueError(f"tensors={name!r} is not process {rank}'s tensor file")
        if file_sha256(folder / name) != entry["sha256"]:
            raise ValueError(f"{name} does not match the hash recorded in {STATE_FILE}")
        return decode(entry["state"], safetensors.torch.load_file(str(folder / name)))
    except Exception as err:
        raise CorruptCheckpointError(
            f"the resume checkpoint in {folder} is damaged for process {rank} ({type(err).__name__}: {err}): "
            f"{_RESUME_ADVICE}"
        ) from None
