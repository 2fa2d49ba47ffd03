"""A point written from the shards, tensor by tensor: the same files, byte for byte, as the unsharded writer.

:func:`hf_llpf.models.weights.write_weights` (the writer of a point of a timm or plain-module model) needs the whole
state dict in one process. Here each tensor is gathered from the processes (``full_tensor()``) only when its
turn comes, cast to the storage dtype, appended to the file by the writing process and dropped, so no process
ever holds more than one whole tensor beyond its shards. The layout is decided beforehand from names, shapes and
dtypes alone: the split into files by huggingface_hub's ``split_torch_state_dict_into_shards`` (as the unsharded
writer splits) on stand-ins without data, the order of the tensors in a file and their dtype codes by safetensors
itself (on one-element stand-ins), so the header and the bytes are those ``safetensors.torch.save_file`` writes.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor

from hf_llpf.models.weights import INDEX_NAME, cast_floating, shard_bytes, usual_permissions
from hf_llpf.sharding.layout import local_parts

__all__ = ["write_weights_from_shards"]

_FILE_METADATA = {"format": "pt"}  # what the unsharded writer puts in every file's header


def _stored_dtype(t: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    return dtype if dtype is not None and t.is_floating_point() else t.dtype


def _layout(shapes: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype], max_shard_size: int) -> dict:
    """File name → tensor names, as huggingface_hub splits a state dict of these shapes and dtypes (no data)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    meta = {n: torch.empty(shapes[n], dtype=dtypes[n], device="meta") for n in shapes}
    return split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)


def _header(names: list[str], shapes: dict, dtypes: dict) -> tuple[bytes, list[str]]:
    """The safetensors header of one file and the order of its tensors' data, as safetensors itself lays them out."""
    stand_ins = {n: torch.zeros(1, dtype=dtypes[n]) for n in names}  # order and dtype codes depend on names, dtypes
    raw = safetensors.torch.save(stand_ins, metadata=_FILE_METADATA)
    (length,) = struct.unpack("<Q", raw[:8])
    entries = json.loads(raw[8 : 8 + length])
    order = [n for n in entries if n != "__metadata__"]
    header: dict = {"__metadata__": entries["__metadata__"]}
    start = 0
    for n in order:
        size = torch.empty(shapes[n], dtype=dtypes[n], device="meta").nbytes
        header[n] = {"dtype": entries[n]["dtype"], "shape": list(shapes[n]), "data_offsets": [start, start + size]}
        start += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header with spaces to a multiple of 8 bytes
    return struct.pack("<Q", len(text)) + text, order


def _whole(t: Tensor, name: str, dtype: torch.dtype | None) -> Tensor:
    """The whole tensor (gathered from every process when sharded: collective), cast as the unsharded writer casts."""
    full = t.full_tensor() if hasattr(t, "full_tensor") else t
    return cast_floating({name: full.detach()}, dtype)[name]


def _write_file(path: Path, names: list[str], tensors: Mapping[str, Tensor], dtype, shapes, dtypes, writer: bool):
    head, order = _header(names, shapes, dtypes)
    tmp = path.with_name(f".{path.name}.partial")
    handle = open(tmp, "wb") if writer else None  # noqa: SIM115 - closed below, after every tensor's turn
    try:
        if handle is not None:
            handle.write(head)
        for n in order:  # every process gathers in this order; only the writer keeps the bytes
            data = _whole(tensors[n], n, dtype).contiguous().reshape(-1).view(torch.uint8).cpu()
            if handle is not None:
                handle.write(data.numpy().tobytes())
            del data
    finally:
        if handle is not None:
            handle.close()
    if writer:
        os.replace(tmp, path)
        usual_permissions(path)


def write_weights_from_shards(
    tensors: Mapping[str, Tensor],
    directory: str | os.PathLike,
    *,
    max_shard_size: int | str,
    dtype: torch.dtype | None = None,
    writer: bool | None = None,
) -> list[Path]:
    """Write ``tensors`` to ``directory`` as :func:`hf_llpf.models.weights.write_weights` writes the whole state dict.

    ``model.safetensors``, or ``model-0000k-of-0000N.safetensors`` files and ``model.safetensors.index.json`` when
    larger than ``max_shard_size``: the same bytes as ``write_weights(cast_floating(whole, dtype), directory,
    max_shard_size=...)``. Every process must call it (each sharded tensor is gathered, one at a time).

    Args:
        tensors: name → DTensor placed ``Shard(0)`` (FSDP2's parameters) or plain tensor (buffers), in the state
            dict's order (which decides the split into files); a tied weight under two names is written under both,
            gathered twice, as the unsharded writer writes a copy of it.
        directory: the point's folder (created); earlier weight files in it are not removed.
        max_shard_size: as in :func:`hf_llpf.models.weights.write_weights`.
        dtype: the floating storage dtype (``None``: each tensor's own); integer buffers are kept.
        writer: whether this process writes (``None``: rank 0 of the default group, or the only process).

    Returns:
        The files written (empty on the processes that do not write).

    Raises:
        ConfigError: a bad ``max_shard_size``, or a value ``dtype`` cannot hold (naming the tensor).
        ShardingError: a DTensor placed otherwise than ``Shard(0)`` on one mesh.
    """
    names = list(tensors)
    local_parts([tensors[n] for n in names])  # refuses placements other than FSDP2's before any collective
    if writer is None:
        dist = torch.distributed
        writer = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    shapes = {n: tuple(tensors[n].shape) for n in names}
    dtypes = {n: _stored_dtype(tensors[n], dtype) for n in names}
    split = _layout(shapes, dtypes, shard_bytes(max_shard_size))
    directory = Path(directory)
    if writer:
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for file, members in split.filename_to_tensors.items():
        _write_file(directory / file, list(members), tensors, dtype, shapes, dtypes, writer)
        written.append(directory / file)
    if split.is_sharded and writer:  # the index as huggingface_hub writes it
        index = {"metadata": {**split.metadata, **_FILE_METADATA}, "weight_map": split.tensor_to_filename}
        with open(directory / INDEX_NAME, "w") as f:
            json.dump(index, f, indent=2)
        usual_permissions(directory / INDEX_NAME)
        written.append(directory / INDEX_NAME)
    return written if writer else []
