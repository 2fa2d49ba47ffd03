"""Each process reads only its own rows of θ_A and θ_B from the safetensors files, never a whole endpoint.

``safetensors.safe_open(...).get_slice(name)[start:stop]`` reads the bytes of rows ``[start, stop)`` only (the
file is memory-mapped), and the rows are FSDP2's: :func:`hf_llpf.sharding.layout.row_range`, the chunks that
``fully_shard`` gave the model's own parameter. A tensor the model holds whole (a plain tensor: a buffer, or a
parameter outside every sharded module) is read whole.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors
from torch import Tensor, nn

from hf_llpf.errors import CorruptCheckpointError, EndpointMismatchError
from hf_llpf.models.weights import INDEX_NAME, WEIGHTS_NAME, weight_files
from hf_llpf.sharding.layout import local_parts, row_range

__all__ = ["read_local_slices", "stored_names", "tensor_files"]


def tensor_files(location: str | os.PathLike, *, allowed_root: str | os.PathLike | None = None) -> dict[str, Path]:
    """The file that holds each tensor: of a safetensors file, or of a model folder (one file, or an index's shards).

    Only the headers are read.

    Raises:
        CorruptCheckpointError: no weights there, or a file that is not safetensors (naming it; only safetensors
            are read). RunDirectoryError: as :func:`hf_llpf.models.weights.weight_files`.
    """
    location = Path(location)
    files = weight_files(location, allowed_root=allowed_root) if location.is_dir() else [location]
    if not files:
        raise CorruptCheckpointError(f"{location}: no {WEIGHTS_NAME} or {INDEX_NAME}; only safetensors are read")
    where: dict[str, Path] = {}
    for f in files:
        try:
            with safetensors.safe_open(str(f), framework="pt") as handle:
                where.update(dict.fromkeys(handle.keys(), f))  # noqa: SIM118 - safe_open has keys(), not iteration
        except Exception as err:  # SafetensorError, or OSError for a truncated or missing file
            raise CorruptCheckpointError(
                f"{f}: not a readable safetensors file ({err}); only safetensors files are read, by rows"
            ) from err
    return where


def _rows_of(handle, name: str, file: Path, shape: tuple[int, ...], rows: tuple[int, int] | None) -> Tensor:
    """Rows ``rows`` of tensor ``name`` (all of it for ``None``), after checking its shape against the model's."""
    stored = tuple(handle.get_slice(name).get_shape())
    if stored != shape:
        held = "the whole tensor" if rows is None else f"rows {rows[0]}:{rows[1]} of it"
        raise EndpointMismatchError(
            f"{file}: tensor {name!r} has shape {stored}; the model's has shape {shape} (this process reads "
            f"{held}); allowed: a tensor of exactly the model's shape"
        )
    if rows is None or not shape:
        return handle.get_tensor(name)
    return handle.get_slice(name)[rows[0] : rows[1]]


def read_local_slices(
    location: str | os.PathLike,
    model_tensors: Mapping[str, Tensor],
    *,
    allowed_root: str | os.PathLike | None = None,
) -> dict[str, Tensor]:
    """This process's part of each named tensor of a safetensors file or model folder, laid out as the model's.

    Args:
        location: a ``.safetensors`` file, or a model folder (``model.safetensors``, or an index and its shards).
        model_tensors: the stored tensor's name → the model's tensor of that role (a DTensor placed ``Shard(0)``
            by ``fully_shard``: its rows are read; a plain tensor: read whole).
        allowed_root: as in :func:`hf_llpf.models.weights.weight_files`.

    Returns:
        name → this process's rows, in the model tensor's dtype and on its device (same shape as its local part).

    Raises:
        CorruptCheckpointError: not safetensors (naming the file). EndpointMismatchError: a name the files lack, or
            a tensor whose shape differs from the model's (naming the file, the tensor and both shapes).
    """
    names = list(model_tensors)
    parts, sharded, _ = local_parts([model_tensors[n] for n in names])
    where = tensor_files(location, allowed_root=allowed_root)
    missing = [n for n in names if n not in where]
    if missing:
        more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
        held = ", ".join(sorted(where)[:8]) + (", ..." if len(where) > 8 else "")
        raise EndpointMismatchError(
            f"{location}: has no tensor {missing[0]!r}{more}; allowed: the tensors it holds ({len(where)}: {held})"
        )
    out: dict[str, Tensor] = {}
    for file in dict.fromkeys(where[n] for n in names):  # each file opened once, in order
        with safetensors.safe_open(str(file), framework="pt") as handle:
            for k, n in enumerate(names):
                if where[n] != file:
                    continue
                t = model_tensors[n]
                rows = None
                if sharded[k]:
                    mesh = t.device_mesh
                    rows = row_range(t.shape[0], rank=mesh.get_local_rank(), world=mesh.size())
                got = _rows_of(handle, n, file, tuple(t.shape), rows)
                out[n] = got.to(dtype=parts[k].dtype, device=parts[k].device)
    return {n: out[n] for n in names}


def stored_names(model: nn.Module, stored: Any) -> dict[str, str]:
    """Each name of ``model.state_dict()`` → the name its tensor is stored under (a tied weight: the first of its
    names the files hold, as ``save_pretrained`` keeps GPT-2's ``transformer.wte.weight`` for ``lm_head.weight``)."""
    by_id: dict[int, list[str]] = {}
    state = model.state_dict(keep_vars=True)
    for name, t in state.items():
        by_id.setdefault(id(t), []).append(name)
    out = {}
    for name, t in state.items():
        held = [n for n in by_id[id(t)] if n in stored]
        out[name] = held[0] if held else name
    return out
