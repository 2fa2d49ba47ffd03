"""The safetensors weights of one model folder: written in a chosen dtype, cut into shards above a size, read whole.

A folder holds either one ``model.safetensors`` or, when the weights are larger than the shard size,
``model-00001-of-0000N.safetensors`` files and a ``model.safetensors.index.json`` naming the file of each
tensor: the layout of ``save_pretrained`` and of huggingface_hub's ``save_torch_state_dict`` (which writes it
here), so transformers' ``from_pretrained`` reads either. timm's own loaders (``hf-hub:``, ``local-dir:``) read
only ``model.safetensors``: a sharded timm-format folder loads with :func:`hf_llpf.models.endpoints.load_endpoint`
only.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import safetensors.torch
import torch

from hf_llpf.errors import ConfigError, CorruptCheckpointError
from hf_llpf.files.safe_paths import check_relative_name, resolve_inside

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
# huggingface_hub's default (transformers 5's save_pretrained defaults to 50GB): one size for every format.
DEFAULT_MAX_SHARD_SIZE = "5GB"
STORAGE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # decimal, as huggingface_hub counts them


def shard_bytes(size: int | str, *, field: str = "max_shard_size") -> int:
    """``size`` in bytes: an integer, or digits with a unit ``KB``/``MB``/``GB``/``TB`` (``"5GB"``, ``"500MB"``).

    Raises:
        ConfigError: naming the field, the value and the accepted forms.
    """
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]B)\s*", size, re.IGNORECASE) if isinstance(size, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{field}={size!r}: expected a positive number of bytes or digits with a unit KB, MB, GB or TB "
            f"(e.g. '{DEFAULT_MAX_SHARD_SIZE}')"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def cast_floating(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """``state`` with its floating tensors in ``dtype`` (integer buffers untouched; ``None``: as they are).

    Tensors that share storage (tied weights) still share it after the cast, so the writers still see them tied.

    Raises:
        ConfigError: a finite value that ``dtype`` cannot hold (float16 overflows above 65504), naming the tensor.
    """
    if dtype is None:
        return dict(state)
    out, done = {}, {}
    for name, t in state.items():
        if not t.is_floating_point() or t.dtype == dtype:
            out[name] = t
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key not in done:
            done[key] = t.detach().to(dtype)
            if not bool(torch.isfinite(done[key]).all()) and bool(torch.isfinite(t).all()):
                top = float(t.detach().abs().max())
                raise ConfigError(
                    f"point_dtype: tensor {name!r} holds values up to {top:.4g}, which {dtype} cannot hold "
                    "(float16's largest is 65504); use point_dtype=bf16 or auto"
                )
        out[name] = done[key]
    return out


@functools.cache
def _umask() -> int:
    # Read once: os.umask can only be read by setting it, which would race with other threads creating files.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def usual_permissions(*paths: str | os.PathLike) -> None:
    """Give ``paths`` (files, or every file under a folder) the permissions a new file gets under the user's umask
    (0644 under umask 022): safetensors and huggingface_hub write weights through temporary files created
    -rw-------, which readers of the folder (another account, a web server) could not open."""
    mode = 0o666 & ~_umask()
    for path in map(Path, paths):
        files = [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()] if path.is_dir() else [path]
        for f in files:
            if f.stat().st_mode & 0o777 != mode:
                os.chmod(f, mode)


def write_weights(state: dict[str, torch.Tensor], directory: str | os.PathLike, *, max_shard_size: int | str) -> None:
    """Write ``state`` (no two tensors sharing storage) as ``model.safetensors``, or as shards and an index when
    it is larger than ``max_shard_size`` (huggingface_hub's ``save_torch_state_dict``)."""
    from huggingface_hub import save_torch_state_dict  # serialisation only: nothing here talks to the Hub

    save_torch_state_dict(
        state, directory, max_shard_size=shard_bytes(max_shard_size), metadata={"format": "pt"}, force_contiguous=True
    )


def weight_files(directory: str | os.PathLike, *, allowed_root: str | os.PathLike | None = None) -> list[Path]:
    """The safetensors files of a model folder: the shards its index names, else ``model.safetensors``.

    Args:
        directory: the model folder.
        allowed_root: where the files may lie once links are followed (a point's own folder; a Hub snapshot's
            repo cache folder). None: only the names are checked (a model folder the user gave).

    Raises:
        CorruptCheckpointError: the index is not valid, or a shard it names is missing.
        RunDirectoryError: the index names a file that could leave the folder (``..``, an absolute path), or,
            with ``allowed_root``, a file that resolves (through a link) outside it.
    """
    directory = Path(directory)

    def named(name: object, field: str) -> Path:
        if allowed_root is None:  # names only (a Hub snapshot's files are links into its blob store)
            return directory / check_relative_name(name, field=field)
        return resolve_inside(directory, name, field=field, allowed_root=Path(allowed_root))

    index = named(INDEX_NAME, INDEX_NAME)
    if not index.is_file():
        single = named(WEIGHTS_NAME, WEIGHTS_NAME)
        return [single] if single.is_file() else []
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as err:
        raise CorruptCheckpointError(f"{index}: not a safetensors index ({type(err).__name__}: {err})") from None
    files = [named(name, f"{directory / INDEX_NAME} shard") for name in names]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CorruptCheckpointError(f"{index}: names shard(s) {missing[:3]} that are not in {directory}")
    return files


def read_weights(
    location: str | os.PathLike, *, allowed_root: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, or of a model folder (one file or all the shards of its index).

    ``allowed_root``: as in :func:`weight_files`.

    Raises:
        CorruptCheckpointError: no weights, or a file that is not readable safetensors. RunDirectoryError: see
            :func:`weight_files`.
    """
    location = Path(location)
    files = weight_files(location, allowed_root=allowed_root) if location.is_dir() else [location]
    if not files:
        raise CorruptCheckpointError(f"{location}: no {WEIGHTS_NAME} or {INDEX_NAME}; only safetensors are read")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            state.update(safetensors.torch.load_file(str(f)))
        except Exception as err:  # SafetensorError, or OSError for a truncated header
            raise CorruptCheckpointError(f"{f}: not a readable safetensors file ({err})") from err
    return state


def stored_dtype(directory: str | os.PathLike, *, allowed_root: str | os.PathLike | None = None) -> str | None:
    """The floating dtype the folder's weights are stored in (``"bfloat16"``, ``"float32"``, …; the most common
    one by tensor count when mixed), read from the safetensors headers only; ``None`` without floating tensors.
    ``allowed_root``: as in :func:`weight_files`."""
    counts: dict[str, int] = {}
    for f in weight_files(directory, allowed_root=allowed_root):
        with safetensors.safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                dtype = handle.get_slice(name).get_dtype()
                counts[dtype] = counts.get(dtype, 0) + 1
    floating = {k: v for k, v in counts.items() if k.startswith(("F", "BF"))}
    if not floating:
        return None
    names = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    top = max(floating, key=floating.get)
    return names.get(top, top.lower())


def download_weights(repo_id: str, revision: str | None, *, local_files_only: bool = False) -> None:
    """Download a Hub model's ``model.safetensors``, or its index and shards, into the snapshot of ``revision``.

    One ``snapshot_download`` with an allow-list of the two layouts' names: nothing else is fetched, and a repo
    without the file of the other layout is not asked for it (some mirrors answer a missing file with 401).
    """
    from huggingface_hub import snapshot_download

    shards = WEIGHTS_NAME.replace(".safetensors", "-*-of-*.safetensors")
    patterns = [WEIGHTS_NAME, INDEX_NAME, shards]
    snapshot_download(repo_id, revision=revision, allow_patterns=patterns, local_files_only=local_files_only)
