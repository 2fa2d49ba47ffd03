"""A model sharded over the processes and loaded by rows: sharded endpoints read by rows (``sharding: fsdp`` with
endpoints that are safetensors folders, local or Hub), and the points of a path read the same way by the sharded
evaluation (:mod:`hf_llpf.evaluation.sharded`).

Each process builds the endpoint's model with its parameters on the meta device (buffers built as the constructor
makes them), shards it with ``fully_shard`` (:func:`shard_model`) and reads only its own rows of θ_A and θ_B
(:func:`hf_llpf.sharding.read_local_slices`, ``safe_open(...).get_slice``); no process holds a whole endpoint. The
preparation's checks run on what is read: the shapes from the safetensors headers against the model's, the two
architectures against each other, finite values on each process's rows with one scalar all-reduce.
docs/distributed.md, "Models larger than one device".
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import torch
from torch import nn

from hf_llpf.errors import CorruptCheckpointError, EndpointMismatchError, UnknownNameError
from hf_llpf.files.hashing import local_revision
from hf_llpf.files.textfiles import read_json
from hf_llpf.models.endpoints import Endpoint, create_model
from hf_llpf.models.weights import weight_files
from hf_llpf.sharding import local_parts, read_local_slices, stored_names, tensor_files

__all__ = [
    "RowsEndpoint",
    "repeated_blocks",
    "shard_model",
    "check_finite",
    "checked_point_rows",
    "load_rows",
    "load_structure",
    "measure_in",
    "point_rows",
    "reads_by_rows",
    "reshard",
    "sharded_copy",
    "sharded_start",
]


@dataclass
class RowsEndpoint(Endpoint):
    """An endpoint whose parameters are on the meta device; its weights stay in its safetensors files.

    Attributes:
        location: the folder of its weights (``model.safetensors``, or an index and its shards).
        allowed_root: every weight file must resolve inside it (a Hub snapshot's repo folder), or ``None``.
        rows: this process's part of each stored tensor (rows of a sharded parameter, buffers whole), once read.
        work: the sharded model holding θ_A's rows, built in the preparation and taken by the run (θ_A only).
    """

    location: Path = Path()
    allowed_root: Path | None = None
    rows: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    work: nn.Module | None = field(default=None, repr=False)

    def describe(self) -> dict[str, Any]:
        """As :meth:`Endpoint.describe`, the hash streamed from the files one tensor at a time (the same bytes the
        whole-loaded model's state dict hashes to)."""
        if self._sha256 is None:
            self._sha256 = _file_state_hash(self)
        return super().describe()


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The elements of the outermost ``nn.ModuleList``s whose elements are all of one class (a transformer's
    layers), in order: each becomes one FSDP2 unit."""
    blocks: list[nn.Module] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
            blocks.extend(module)
            taken.append(name)
    return blocks


def shard_model(model: nn.Module, device: torch.device) -> None:
    """``fully_shard`` the repeated blocks of ``model``, then the root (the rest: embeddings, final norms, heads),
    over every process of the default group, on ``device``'s type (gloo on the CPU, NCCL on GPUs)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in repeated_blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def reads_by_rows(specs: list[Any]) -> bool:
    """Whether every spec is a model folder or a Hub id (what this route reads by rows), not a module or a file."""
    for spec in specs:
        if not isinstance(spec, (str, os.PathLike)):
            return False
        path = Path(spec)
        if not path.is_dir() and (path.exists() or str(spec).endswith(".safetensors") or "/" not in str(spec)):
            return False
    return True


def _file_state_hash(endpoint: RowsEndpoint) -> str:
    """:func:`hf_llpf.files.hashing.state_hash` of the model the files load into, one tensor read at a time."""
    model = endpoint.model
    where = tensor_files(endpoint.location, allowed_root=endpoint.allowed_root)
    names = stored_names(model, where)
    digest = hashlib.sha256()
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    for name, t in model.state_dict().items():
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        with safetensors.safe_open(str(where[names[name]]), framework="pt") as handle:
            if t.ndim == 0:
                digest.update(handle.get_tensor(names[name]).to(t.dtype).view(-1).view(torch.uint8).numpy().tobytes())
                continue
            # A process's share of rows at a time (the bytes of a contiguous tensor are its rows' in order): no
            # tensor of more than one row is held whole, and no more of it than a shard.
            step = max(1, -(-t.shape[0] // world))
            part = handle.get_slice(names[name])
            for start in range(0, t.shape[0], step):
                v = part[start : min(start + step, t.shape[0])].to(t.dtype).contiguous()
                digest.update(v.view(-1).view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return digest.hexdigest()


def _empty_params():
    from accelerate import init_empty_weights

    return init_empty_weights(include_buffers=False)


def _transformers_structure(path: Path, config: dict, source: str, revision: str | None, name: str) -> RowsEndpoint:
    """A transformers model built from ``config.json`` (its dtype, its generation config), parameters on meta;
    ``name``: what from_pretrained was given (the folder, or a Hub repo id), which the config records."""
    import transformers

    names = config.get("architectures") or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:  # custom code, or no class named: the whole-load route's errors apply
        raise UnknownNameError("transformers architecture", names[0] if names else None, ["classes in transformers"],
                               hint="sharding: fsdp reads by rows only models of a transformers class")  # fmt: skip
    cfg = transformers.AutoConfig.from_pretrained(path)
    dtype = getattr(cfg, "dtype", None)
    with _empty_params():
        model = cls._from_config(cfg, **({"dtype": dtype} if isinstance(dtype, torch.dtype) else {}))
    model.tie_weights()  # as from_pretrained ends (GPT-2's lm_head is wte); outside: the context re-makes ties
    cfg.name_or_path = name  # as from_pretrained records it
    if model.can_generate() and (path / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(path)
    return RowsEndpoint(model.eval(), "transformers", source, revision, model.config.to_dict(), location=path)


def _folder_structure(
    path: Path, *, source: str, revision: str | None, allowed_root: Path | None, name: str
) -> RowsEndpoint:
    """The structure of a model folder (timm or transformers format), its weights left in their files."""
    config = read_json(path / "config.json", error=CorruptCheckpointError)
    files = weight_files(path, allowed_root=allowed_root)
    if not files:
        raise CorruptCheckpointError(f"{path}: no safetensors weights; sharding: fsdp reads safetensors by rows")
    revision = revision or local_revision(*files)
    if "architecture" in config:
        from hf_llpf.models.timm_config import check_timm_config

        check_timm_config(config, source=str(path / "config.json"))
        model_args = dict(config.get("model_args") or {})
        model_args.setdefault("num_classes", config.get("num_classes", 1000))
        with _empty_params():
            model = create_model(config["architecture"], **model_args)
        arch = {"architecture": config["architecture"], "model_args": model_args}
        ep = RowsEndpoint(model.eval(), "timm", source, revision, arch, location=path)
    else:
        ep = _transformers_structure(path, config, source, revision, name)
    ep.allowed_root = allowed_root
    return ep


def load_structure(spec: str | os.PathLike) -> Endpoint:
    """The endpoint ``spec`` (a model folder or a Hub id) with its parameters on the meta device, or, where it is
    not one this route reads (no config.json, custom code), as :func:`~hf_llpf.models.endpoints.load_endpoint`
    says why (its errors)."""
    from hf_llpf.models.endpoints import load_endpoint

    path = Path(spec)
    # Offline, an unknown repo or revision, a class outside transformers: the whole-load route decides (and names the
    # problem); the preparation then loads both endpoints whole.
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                return load_endpoint(spec)  # its error
            return _folder_structure(path, source=str(spec), revision=None, allowed_root=None, name=str(spec))
        try:
            folder, sha = _hub_snapshot(str(spec))
        except Exception:  # whatever huggingface_hub raises
            return load_endpoint(spec)
        return _folder_structure(folder, source=str(spec), revision=sha, allowed_root=folder.parents[1],
                                 name=str(spec).partition("@")[0])  # fmt: skip
    except UnknownNameError:
        return load_endpoint(spec)


def _hub_snapshot(spec: str) -> tuple[Path, str | None]:
    """The snapshot folder of a Hub endpoint with its config and weights downloaded, and its commit sha."""
    from huggingface_hub import hf_hub_download

    from hf_llpf.hub_client.access import hub_unreachable, offline_mode
    from hf_llpf.models.weights import download_weights

    repo_id, _, revision = spec.partition("@")
    local = {"local_files_only": True} if (offline_mode() or hub_unreachable()) else {}
    folder = Path(hf_hub_download(repo_id, "config.json", revision=revision or None, **local)).parent
    sha = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else (revision or None)
    download_weights(repo_id, sha, **local)
    return folder, sha


def check_headers(endpoint: RowsEndpoint, *, label: str) -> None:
    """The shapes in the safetensors headers against the model's: every tensor of its state dict stored (a tied
    weight once), none other, each of the model's shape.

    Raises:
        EndpointMismatchError: naming the endpoint, the tensor and both shapes (or what is missing or extra).
    """
    where = tensor_files(endpoint.location, allowed_root=endpoint.allowed_root)
    state = endpoint.model.state_dict()
    names = stored_names(endpoint.model, where)
    missing = [n for n in state if names[n] not in where]
    extra = sorted(set(where) - set(names.values()))
    if missing or extra:
        raise EndpointMismatchError(
            f"endpoint {label} ({endpoint.source}) does not fit its model: missing {missing[:5]}, unexpected "
            f"{extra[:5]}; allowed: exactly the tensors of the model its config.json builds"
        )
    for name, t in state.items():
        with safetensors.safe_open(str(where[names[name]]), framework="pt") as handle:
            shape = tuple(handle.get_slice(names[name]).get_shape())
        if shape != tuple(t.shape):
            raise EndpointMismatchError(
                f"endpoint {label} ({endpoint.source}): tensor {name!r} has shape {shape} in its file; the model "
                f"has {tuple(t.shape)}; allowed: the model's shape"
            )


def _rows_of_folder(location: Path, work: nn.Module, *, allowed_root: Path | None) -> tuple[dict, dict]:
    """The stored tensors of ``work`` (name → its tensor; a tied weight under the name the files hold) and this
    process's part of each, read from the safetensors files at ``location``."""
    state = work.state_dict(keep_vars=True)
    names = stored_names(work, tensor_files(location, allowed_root=allowed_root))
    wanted = {names[n]: t for n, t in state.items() if names[n] == n}
    return wanted, read_local_slices(location, wanted, allowed_root=allowed_root)


def point_rows(path: Any, i: int, work: nn.Module) -> dict[str, torch.Tensor]:
    """This process's rows of point ``i`` of ``path`` (a :class:`~hf_llpf.run.RunPath`), laid out as ``work``'s;
    its files must resolve inside the run directory."""
    return _rows_of_folder(path.point_dir(i), work, allowed_root=path.root)[1]


def check_finite(wanted: dict[str, torch.Tensor], rows: dict[str, torch.Tensor], *, what: str, allowed: str) -> None:
    """Every process's ``rows`` (of the model tensors ``wanted``, :func:`_rows_of_folder`) finite: one scalar
    all-reduce; a tensor held whole is counted once.

    Raises:
        CorruptCheckpointError: a non-finite value in any process's rows, naming ``what`` and the count, and saying
            what is ``allowed``.
    """
    _, sharded, _ = local_parts(list(wanted.values()))
    first = torch.distributed.get_rank() == 0  # a tensor held whole is read by every process: counted once
    held = [v for v, s in zip(rows.values(), sharded, strict=True) if v.is_floating_point() and (s or first)]
    bad = sum(int((~torch.isfinite(v)).sum()) for v in held)
    count = torch.tensor([bad], dtype=torch.int64, device=next(iter(rows.values())).device if rows else None)
    torch.distributed.all_reduce(count)
    if int(count.item()):
        raise CorruptCheckpointError(f"{what}: {int(count.item())} non-finite value(s) (NaN or inf); {allowed}")


def _read_rows(endpoint: RowsEndpoint, work: nn.Module, *, label: str) -> dict[str, torch.Tensor]:
    """This process's part of each stored tensor of ``endpoint`` (laid out as ``work``'s), checked finite over every
    process (one scalar all-reduce).

    Raises:
        CorruptCheckpointError: a non-finite value in any process's rows, naming the endpoint and the count.
    """
    wanted, rows = _rows_of_folder(endpoint.location, work, allowed_root=endpoint.allowed_root)
    what = f"endpoint {label} ({endpoint.source})"
    check_finite(wanted, rows, what=what, allowed="an endpoint must hold finite weights")
    return rows


def checked_point_rows(path: Any, i: int, work: nn.Module) -> dict[str, torch.Tensor]:
    """This process's rows of point ``i`` of ``path`` as the evaluation reads a point: every file within the point's
    folder (:meth:`~hf_llpf.run.RunPath.checked_point_dir`), every process's rows checked finite.

    Raises:
        CorruptCheckpointError: a non-finite value, naming the point. RunDirectoryError: a file leading outside.
    """
    folder = path.checked_point_dir(i)
    wanted, rows = _rows_of_folder(folder, work, allowed_root=path.point_fence(folder))
    what = f"points[{i % len(path)}] ({folder})"
    check_finite(wanted, rows, what=what, allowed="a point must hold finite weights")
    return rows


def reshard(work: nn.Module) -> None:
    """Put every FSDP2 unit of ``work`` back to its shards: after a forward pass without a backward (a trace, a
    probe) the root unit keeps its parameters gathered whole, which would then be taken for tensors held whole."""
    from torch.distributed.fsdp import FSDPModule

    for module in work.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@torch.no_grad()
def load_rows(work: nn.Module, rows: dict[str, torch.Tensor]) -> None:
    """Copy an endpoint's rows (:func:`_read_rows`) into the sharded model's local parts and its buffers."""
    reshard(work)
    state = work.state_dict(keep_vars=True)
    names = stored_names(work, rows)
    targets = [n for n in state if names[n] == n]
    parts, _, _ = local_parts([state[n] for n in targets])
    torch._foreach_copy_(parts, [rows[n] for n in targets])


def sharded_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` (parameters on the meta device) sharded over the processes on ``device`` by
    :func:`shard_model`, its buffers as ``model`` holds them; its parameters' local parts
    hold nothing meaningful until rows are loaded (:func:`load_rows`)."""
    work = copy.deepcopy(model)  # parameters on meta: a copy of the buffers only
    shard_model(work, device)
    buffers = {n: b.clone() for n, b in work.named_buffers()}  # to_empty empties buffers too
    work.to_empty(device=device)
    with torch.no_grad():
        for n, b in work.named_buffers():
            b.copy_(buffers[n])
    return work


def sharded_start(ea: RowsEndpoint, eb: RowsEndpoint, device: torch.device) -> nn.Module:
    """θ_A's model sharded over the processes on ``device`` holding θ_A's rows; both endpoints' rows read and
    checked (``ea.rows``, ``eb.rows``)."""
    work = sharded_copy(ea.model, device)
    for ep, label in ((ea, "A"), (eb, "B")):
        ep.rows = _read_rows(ep, work, label=label)
    load_rows(work, ea.rows)
    return work


def measure_in(endpoints: list[RowsEndpoint]) -> Any:
    """For :func:`~hf_llpf.algorithms.certify.make_certifier`: endpoint ``k`` measured in θ_A's sharded model
    (``endpoints[0].work``) holding that endpoint's rows, θ_A's put back after."""
    from contextlib import contextmanager

    @contextmanager
    def held(k: int):
        work = endpoints[0].work
        load_rows(work, endpoints[k].rows)
        try:
            yield work
        finally:
            load_rows(work, endpoints[0].rows)  # (resharded first)

    return held
