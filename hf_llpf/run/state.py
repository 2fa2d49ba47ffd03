"""Resume state on disk as safetensors + JSON: nothing in a run directory is ever unpickled.

A checkpoint is a nested structure of dicts, lists, tuples, tensors, NumPy arrays and plain scalars (model
and optimizer state, the loop's counters, the generators' states). :func:`encode` splits it into a JSON
skeleton and a flat dict of tensors; :func:`decode` rebuilds it from those two and nothing else, so a crafted
file can at worst be refused as damaged, never run code.

On disk (``checkpoint/`` of the run directory)::

    state.json                 {"format": 2, "tensors": "tensors-<n>.safetensors", "sha256": ..., "state": ...}
    tensors-<n>.safetensors    every tensor of the state

The tensor file is written under a new name first, then ``state.json`` atomically names it with its
hash; older tensor files are removed last. A run killed at any moment leaves a consistent pair.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from hf_llpf.errors import CorruptCheckpointError
from hf_llpf.files.hashing import file_sha256
from hf_llpf.files.partial import cleaned_on_failure
from hf_llpf.models.weights import usual_permissions
from hf_llpf.run.layout import STATE_FILE

FORMAT = 2
LEGACY_PICKLE = "state.pt"
_RESUME_ADVICE = "start the run again with --overwrite (or choose a new --out)"


def encode(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``state`` into a JSON-ready skeleton and the tensors it references by key."""
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()

    def enc(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = _own(obj.detach().cpu(), storages)
            return {"__tensor__": key}
        if isinstance(obj, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(
                np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "ui" else obj.dtype)
            )
            return {"__ndarray__": key, "dtype": obj.dtype.str}
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: enc(v) for k, v in obj.items()}
            return {"__items__": [[enc(k), enc(v)] for k, v in obj.items()]}
        if isinstance(obj, tuple):
            return {"__tuple__": [enc(v) for v in obj]}
        if isinstance(obj, list):
            return [enc(v) for v in obj]
        if obj is None or isinstance(obj, (bool, int, float, str)):
            return obj
        raise TypeError(f"resume state: {type(obj).__name__} values cannot be stored (tensors, arrays, scalars only)")

    return enc(state), tensors


def _own(t: torch.Tensor, storages: set[int]) -> torch.Tensor:
    """``t`` as safetensors writes it: itself when it alone fills its storage (written at once, never kept: no copy
    of the whole state beside the model), else a contiguous copy (a view, or a tensor sharing storage with one
    already taken: tied weights, which safetensors refuses twice)."""
    if type(t) is not torch.Tensor or not t.numel() or not t.is_contiguous():
        return t.contiguous().clone()
    storage = t.untyped_storage()
    whole = t.data_ptr() == storage.data_ptr() and t.nbytes == storage.nbytes()
    if whole and storage.data_ptr() not in storages:
        storages.add(storage.data_ptr())
        return t
    return t.contiguous().clone()


def decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`; raises ``KeyError``/``TypeError``/``ValueError`` on a malformed skeleton."""

    def dec(obj: Any) -> Any:
        if isinstance(obj, list):
            return [dec(v) for v in obj]
        if not isinstance(obj, dict):
            if obj is None or isinstance(obj, (bool, int, float, str)):
                return obj
            raise TypeError(f"unexpected {type(obj).__name__}")
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
        if "__tuple__" in obj:
            return tuple(dec(v) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {dec(k): dec(v) for k, v in obj["__items__"]}
        return {k: dec(v) for k, v in obj.items()}

    return dec(skeleton)


# A checkpoint's tensor file as this tool names it (a sharded run's: one per process).
TENSOR_FILE = re.compile(r"tensors-(\d+)(-rank-\d+-of-\d+)?\.safetensors")


def tensor_files(folder: Path) -> list[Path]:
    """The checkpoint tensor files in ``folder`` this tool wrote: plain files named as it names them (a link or
    another name is never one of them, so it is never removed)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TENSOR_FILE.fullmatch(p.name) and p.is_file() and not p.is_symlink())


def next_number(folder: Path) -> int:
    """The number of the next checkpoint's tensor file in ``folder``: above every name of that form, a link's too,
    so the new file is never written through something already there."""
    names = [TENSOR_FILE.fullmatch(p.name) for p in folder.iterdir()] if folder.is_dir() else []
    return 1 + max((int(m[1]) for m in names if m), default=0)


def save(folder: str | os.PathLike, state: Any, *, write_text) -> None:
    """Write ``state`` to ``folder`` (``write_text(path, text)`` must write atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    skeleton, tensors = encode(state)
    old = tensor_files(folder)
    name = f"tensors-{next_number(folder)}.safetensors"
    # Until the new state file names it, the new tensor file is unused: a failed write (a full disk) removes it,
    # and the previous checkpoint stays whole.
    with cleaned_on_failure(folder / name):
        safetensors.torch.save_file(tensors, str(folder / name))
        usual_permissions(folder / name)  # written -rw------- by safetensors: the user's umask, as every other file
        doc = {"format": FORMAT, "tensors": name, "sha256": file_sha256(folder / name), "state": skeleton}
        write_text(folder / STATE_FILE, json.dumps(doc) + "\n")
    for p in old:
        p.unlink(missing_ok=True)
    (folder / LEGACY_PICKLE).unlink(missing_ok=True)


def exists(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a checkpoint (or an older version's pickle, which :func:`load` refuses)."""
    folder = Path(folder)
    return (folder / STATE_FILE).is_file() or (folder / LEGACY_PICKLE).is_file()


def load(folder: str | os.PathLike) -> Any | None:
    """The state saved in ``folder``, or None when there is none.

    Raises:
        CorruptCheckpointError: the state is damaged, was written by an older version as a pickle (never
            loaded: unpickling can run code), or its tensor file does not match; the message names the file
            and says how to continue.
    """
    folder = Path(folder)
    doc_file = folder / STATE_FILE
    if not doc_file.is_file():
        if (folder / LEGACY_PICKLE).is_file():
            raise CorruptCheckpointError(
                f"{folder / LEGACY_PICKLE} is a pickled checkpoint of an older hf_llpf; it is not loaded "
                f"(unpickling can run code): {_RESUME_ADVICE}"
            )
        return None
    try:
        doc = json.loads(doc_file.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format') if isinstance(doc, dict) else doc!r}, expected {FORMAT}")
        name = doc["tensors"]
        if not isinstance(name, str) or "/" in name or not name.startswith("tensors-"):
            raise ValueError(f"tensors={name!r} is not a tensor file of this folder")
        tensor_file = folder / name
        if file_sha256(tensor_file) != doc["sha256"]:
            raise ValueError(f"{name} does not match the hash recorded in {STATE_FILE}")
        return decode(doc["state"], safetensors.torch.load_file(str(tensor_file)))
    except Exception as err:  # any malformed content: one clear error, never a traceback
        raise CorruptCheckpointError(
            f"the resume checkpoint in {folder} is damaged ({type(err).__name__}: {err}): {_RESUME_ADVICE}"
        ) from None
