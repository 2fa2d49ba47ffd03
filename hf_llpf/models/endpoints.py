"""Endpoints: load a model from a local folder, a Hub id or a timm name + safetensors; save it back.

Formats (both loadable by plain timm / transformers, and by :func:`load_endpoint`):
- **timm**: ``config.json`` with ``architecture`` (+ ``model_args``) and ``model.safetensors``
  (``timm.create_model("local-dir:DIR", pretrained=True)`` or ``"hf-hub:org/name"``);
- **transformers**: a ``save_pretrained`` folder (``AutoModelFor...`` named by ``config.architectures``);
- **module**: any other ``nn.Module``; only ``model.safetensors`` is written and loading needs the module.

Weights above the shard size are written as shards and an index (:mod:`hf_llpf.models.weights`), possibly in a narrower
floating dtype than the model's (a run's ``point_dtype``); the loaders read both and cast to the model's dtype.

Security: weights are only ever read from safetensors files (never ``torch.load``/pickle), and
transformers' ``trust_remote_code`` stays off unless the caller passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn

import hf_llpf.zoo  # noqa: F401  (registers the built-in architectures with timm)
from hf_llpf.errors import (
    ConfigError,
    CorruptCheckpointError,
    EndpointMismatchError,
    OfflineError,
    UnknownNameError,
)
from hf_llpf.files.hashing import local_revision, state_hash
from hf_llpf.files.textfiles import read_json
from hf_llpf.models.weights import (
    DEFAULT_MAX_SHARD_SIZE,
    WEIGHTS_NAME,
    cast_floating,
    download_weights,
    read_weights,
    usual_permissions,
    weight_files,
    write_weights,
)

Kind = Literal["timm", "transformers", "module"]


@dataclass
class Endpoint:
    """A loaded endpoint and where it came from.

    Attributes:
        model: the module, in eval mode, on the CPU.
        kind: ``"timm"``, ``"transformers"`` or ``"module"`` (decides how points are saved).
        source: the spec as given (Hub id, folder, file or ``"<module>"``).
        revision: the Hub commit sha, or ``"local:<sha256 prefix>"`` of the weights for local files.
        arch: what is needed to rebuild the model: timm ``{"architecture", "model_args", ...}`` or the
            transformers config as a dict.
    """

    model: nn.Module
    kind: Kind
    source: str
    revision: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    _sha256: str | None = field(default=None, repr=False, compare=False)

    def describe(self) -> dict[str, Any]:
        """The entry written to ``endpoints.json`` (``sha256``: of the weights in memory, see :func:`state_hash`)."""
        if self._sha256 is None:
            self._sha256 = state_hash(self.model)
        return {
            "id": self.source,
            "revision": self.revision,
            "kind": self.kind,
            "architecture": self.arch.get("architecture") or (self.arch.get("architectures") or [None])[0],
            "sha256": self._sha256,
        }


def check_finite(endpoint: Endpoint, *, label: str) -> None:
    """Refuse an endpoint with NaN or infinite weights, naming the first such tensor.

    Raises:
        CorruptCheckpointError: naming the endpoint, the tensor and how many values are not finite.
    """
    for name, tensor in endpoint.model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CorruptCheckpointError(
                f"endpoint {label} ({endpoint.source}): tensor {name!r} has {bad} non-finite value(s) (NaN or inf) "
                f"of {tensor.numel()}; an endpoint must hold finite weights"
            )


def create_model(name: str, **model_args: Any) -> nn.Module:
    """Create a randomly initialised built-in or timm model by name.

    Raises:
        UnknownNameError: the name is neither built in nor known to timm (close names are suggested).
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8)
        allowed = [*hf_llpf.zoo.BUILTIN_MODELS, *close, "... (timm.list_models() has the rest)"]
        raise UnknownNameError("model", name, allowed)
    from hf_llpf.models.timm_config import check_model_args

    check_model_args(model_args, source="model_args")  # before timm sees them: checkpoint_path is a torch.load
    allowed = _builtin_args(name)
    unknown = sorted(set(model_args) - set(allowed)) if allowed is not None else []
    if unknown:
        raise UnknownNameError(f"model_args key of {name}", unknown[0], allowed)
    try:
        model = timm.create_model(name, pretrained=False, **model_args)
    except TypeError as err:  # a timm model refusing an unknown constructor argument
        raise UnknownNameError(
            "model_args key", sorted(model_args), ["the model's constructor arguments"], hint=str(err)
        ) from None
    model.hf_llpf_model_args = dict(model_args)  # remembered so the model is saved with the same arguments
    return model


def _builtin_args(name: str) -> list[str] | None:
    """The named constructor arguments of a built-in model (its ``**_`` swallows timm's own), else None."""
    import inspect

    cls = hf_llpf.zoo.MODEL_CLASSES.get(name)
    if cls is None:
        return None
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "_")]


def as_endpoint(model: nn.Module, *, source: str = "<module>") -> Endpoint:
    """Wrap an in-memory module, recognising timm and transformers models so points keep their format."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        PreTrainedModel = ()  # type: ignore[assignment]
    if isinstance(model, PreTrainedModel):
        return Endpoint(model, "transformers", source, None, model.config.to_dict())
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture") and timm.is_model(cfg["architecture"]):
        arch = {"architecture": cfg["architecture"], "model_args": getattr(model, "hf_llpf_model_args", {})}
        return Endpoint(model, "timm", source, None, arch)
    return Endpoint(model, "module", source, None, {})


def load_endpoint(
    spec: str | os.PathLike | nn.Module,
    *,
    arch: str | None = None,
    model_args: dict[str, Any] | None = None,
    trust_remote_code: bool = False,
    allowed_root: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
) -> Endpoint:
    """Load one endpoint.

    Args:
        spec: a local model folder (timm or transformers format); a ``.safetensors`` file (with ``arch``);
            a Hub id ``org/name`` or ``org/name@revision``; or an ``nn.Module`` (used as is).
        arch: timm/built-in model name, needed when ``spec`` is a bare safetensors file.
        model_args: constructor arguments for ``arch`` (e.g. ``{"num_classes": 10}``).
        trust_remote_code: passed to transformers; off unless asked.
        allowed_root: for a folder ``spec`` read from an untrusted place (a point of a run directory): every file
            in it must resolve inside this folder once links are followed, or nothing is read.
        dtype: for a transformers model folder, the floating dtype to build the model in (None: the dtype its
            ``config.json`` names); a run reads its points, stored in ``point_dtype``, back in the endpoints' dtype.

    Raises:
        UnknownNameError, CorruptCheckpointError, OfflineError: see the messages. UnsafeEndpointError: a timm
            config.json whose ``model_args`` or ``pretrained_cfg`` would load weights from a file or another
            source. RunDirectoryError: with ``allowed_root``, a file of the folder resolves outside it.
    """
    if isinstance(spec, nn.Module):
        return as_endpoint(spec)
    spec = str(spec)
    path = Path(spec)
    if path.is_dir():
        return _load_folder(
            path,
            source=spec,
            revision=None,
            trust_remote_code=trust_remote_code,
            allowed_root=allowed_root,
            dtype=dtype,
        )
    if spec.endswith(".safetensors"):
        return _load_file(path, source=spec, arch=arch, model_args=model_args)
    from hf_llpf.hub_client.repo_ids import parse_repo_spec  # the one parser of org/name[@revision]

    try:
        parse_repo_spec(spec, field="endpoint")
    except ConfigError as err:  # not a Hub id either: list every form, with the parser's reason
        raise UnknownNameError(
            "endpoint",
            spec,
            ["a local model folder", "a .safetensors file with --arch", "a Hub id org/name[@revision]"],
            hint=err.problems[0] if "/" in spec else "",  # a bare name is more likely a model name
        ) from None
    return _load_hub(spec, trust_remote_code=trust_remote_code)


def _load_file(path: Path, *, source: str, arch: str | None, model_args: dict[str, Any] | None) -> Endpoint:
    """Build ``arch`` with ``model_args`` and load a bare safetensors file into it (a timm-kind endpoint)."""
    if not path.is_file():
        raise UnknownNameError("endpoint file", source, ["an existing .safetensors file"])
    if arch is None:
        raise UnknownNameError(
            "arch",
            None,
            hf_llpf.zoo.BUILTIN_MODELS,
            hint="a bare safetensors file needs the model name (--arch NAME)",
        )
    model = create_model(arch, **(model_args or {}))
    _load_weights(model, path)
    return Endpoint(
        model.eval(),
        "timm",
        source,
        local_revision(path),
        {"architecture": arch, "model_args": dict(model_args or {})},
    )


def _load_folder(
    path: Path,
    *,
    source: str,
    revision: str | None,
    trust_remote_code: bool,
    allowed_root: str | os.PathLike | None,
    dtype: torch.dtype | None = None,
) -> Endpoint:
    if allowed_root is not None:  # an untrusted folder: no file of it may lead outside, whatever reads it
        from hf_llpf.files.safe_paths import walk_files

        for _ in walk_files(path, allowed_root=Path(allowed_root)):
            pass
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UnknownNameError(
            "model folder",
            str(path),
            ["a folder with config.json (timm or transformers)"],
            hint=f"files found: {sorted(p.name for p in path.iterdir())[:10]}",
        )
    config = read_json(config_file, error=CorruptCheckpointError)
    # model.safetensors, or the shards of model.safetensors.index.json (each resolved inside allowed_root)
    files = weight_files(path, allowed_root=allowed_root)
    if "architecture" in config:  # timm's Hub format
        from hf_llpf.models.timm_config import check_timm_config

        check_timm_config(config, source=str(config_file))
        if not files:
            raise CorruptCheckpointError(f"{path / WEIGHTS_NAME}: missing; only safetensors weights are read")
        model_args = dict(config.get("model_args") or {})
        model_args.setdefault("num_classes", config.get("num_classes", 1000))
        model = create_model(config["architecture"], **model_args)
        _load_weights(model, path, allowed_root=allowed_root)
        arch = {"architecture": config["architecture"], "model_args": model_args}
        return Endpoint(model.eval(), "timm", source, revision or local_revision(*files), arch)
    if "model_type" in config:  # transformers
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = _load_transformers(str(path), config, trust_remote_code=trust_remote_code, **kwargs)
        rev = revision or (local_revision(*files) if files else None)
        return Endpoint(model.eval(), "transformers", source, rev, model.config.to_dict())
    raise UnknownNameError(
        "config.json format", sorted(config)[:8], ["timm (has 'architecture')", "transformers (has 'model_type')"]
    )


def _load_transformers(location: str, config: dict, *, trust_remote_code: bool, **kwargs: Any) -> nn.Module:
    import transformers

    names = config.get("architectures") or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        if names and not trust_remote_code:
            raise UnknownNameError(
                "transformers architecture",
                names[0],
                ["classes in transformers"],
                hint="custom code is only run with trust_remote_code=True",
            )
        cls = transformers.AutoModel
    from hf_llpf.progress import library_bars

    try:
        with library_bars():
            return cls.from_pretrained(location, use_safetensors=True, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as err:
        if "safetensors" in str(err).lower() or "no file named" in str(err).lower():
            raise CorruptCheckpointError(f"{location}: no readable safetensors weights ({err})") from err
        raise


def _load_hub(spec: str, *, trust_remote_code: bool) -> Endpoint:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from hf_llpf.hub_client.access import hub_unreachable, offline_mode

    repo_id, _, revision = spec.partition("@")
    revision = revision or None
    # Offline, or the Hub's host not answering: the cache only, at once (a download would retry for tens of seconds).
    why = "offline mode is on" if offline_mode() else hub_unreachable()
    local = {"local_files_only": True} if why else {}
    try:
        config_path = hf_hub_download(repo_id, "config.json", revision=revision, **local)
        folder = Path(config_path).parent
        config = read_json(config_path, error=CorruptCheckpointError)
        if "architecture" in config:  # pinned to the commit config.json came from (its snapshot folder)
            download_weights(repo_id, folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision, **local)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as err:
        raise OfflineError(
            f"no local folder {spec!r}, and the Hub id {spec!r} is not in the local cache while the Hub cannot be "
            f"reached ({why or type(err).__name__}). Check the path, or "
            "download it elsewhere (e.g. `hf download` or save_pretrained) and pass the local folder."
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise UnknownNameError(
            "Hub endpoint",
            spec,
            ["an existing model repo with config.json + model.safetensors"],
            hint=str(err).splitlines()[0],
        ) from err
    # hf_hub_download returns .../snapshots/<commit sha>/config.json: the sha pins the revision.
    sha = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else revision
    if "architecture" in config:
        # The snapshot's files link into the repo's blob store: models--org--name/{snapshots/<sha>,blobs}.
        return _load_folder(folder, source=spec, revision=sha, trust_remote_code=False, allowed_root=folder.parents[1])
    model = _load_transformers(repo_id, config, trust_remote_code=trust_remote_code, revision=sha or revision, **local)
    return Endpoint(model.eval(), "transformers", spec, sha, model.config.to_dict())


def _load_weights(model: nn.Module, path: Path, *, allowed_root: str | os.PathLike | None = None) -> None:
    """Load a safetensors file, or a model folder's weights (one file or shards), cast to the model's dtypes."""
    state = read_weights(path, allowed_root=allowed_root)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if bad:
            k = bad[0]
            parts.append(f"shape of {k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}")
        raise EndpointMismatchError(f"{path} does not fit the model: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    kind: Kind,
    arch: dict[str, Any],
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    keep_auto_map: bool = False,
) -> Path:
    """Write ``model`` to ``directory`` in the format of its kind (see the module docstring).

    Tied parameters are written once (safetensors forbids shared storage); the loaders re-tie them.

    Args:
        model: the model.
        directory: the folder to write.
        kind: ``"timm"``, ``"transformers"`` or ``"module"``.
        arch: what rebuilds the model (see :class:`Endpoint`).
        dtype: the floating dtype to store the weights in (``None``: the model's own); integer buffers are kept.
        max_shard_size: weights larger than this are cut into shards with an index (``"5GB"``, or bytes).
        keep_auto_map: keep ``auto_map`` / ``custom_pipelines`` (pointers to code in other repos) in a transformers
            model's ``config.json``; by default they are removed (:mod:`hf_llpf.models.remote_code`).

    Raises:
        ConfigError: ``dtype`` cannot hold a value of the model (float16 above 65504), or a bad ``max_shard_size``.
    """
    from hf_llpf.models.weights import shard_bytes

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shard = shard_bytes(max_shard_size)
    if kind == "transformers":
        _save_transformers(model, directory, dtype=dtype, max_shard_size=shard, keep_auto_map=keep_auto_map)
        usual_permissions(directory)
        return directory
    state, seen = {}, set()
    for k, v in cast_floating(model.state_dict(), dtype).items():
        # safetensors refuses tensors that share storage (tied weights): write a copy of the second one.
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset())
        state[k] = v.detach().clone() if ptr in seen else v.detach().contiguous()
        seen.add(ptr)
    write_weights(state, directory, max_shard_size=shard)
    if kind == "timm":  # timm's own config writer, with the run's data config when arch carries one
        from hf_llpf.models.timm_config import write_timm_config

        write_timm_config(model, directory, arch)
    usual_permissions(directory)
    return directory


def _save_transformers(
    model: nn.Module, directory: Path, *, dtype: torch.dtype | None, max_shard_size: int, keep_auto_map: bool
) -> None:
    """Write a transformers model with ``save_pretrained`` (weights in ``dtype``, shards above ``max_shard_size``
    bytes), its ``config.json`` naming the stored dtype and, unless ``keep_auto_map``, without pointers to code."""
    from hf_llpf.progress import library_bars

    state = cast_floating(model.state_dict(), dtype) if dtype is not None else None
    with library_bars():
        model.save_pretrained(directory, safe_serialization=True, state_dict=state, max_shard_size=max_shard_size)
    if dtype is not None:
        # config.json names the stored dtype, so from_pretrained (dtype "auto" in transformers 5) builds the
        # model in it instead of upcasting; hf_llpf reads a run's points back in the endpoints' dtype.
        set_config_dtype(directory / "config.json", dtype)
    if not keep_auto_map:  # an endpoint's pointer to another repo's code is not republished with the point
        from hf_llpf.models.remote_code import strip_file

        strip_file(directory / "config.json")


def set_config_dtype(config_file: Path, dtype: torch.dtype) -> None:
    """Record ``dtype`` in a transformers ``config.json`` under the key the installed transformers writes
    (``dtype`` from version 5, ``torch_dtype`` before; both when the file has both)."""
    import json

    import transformers

    data = json.loads(config_file.read_text())
    keys = [k for k in ("dtype", "torch_dtype") if k in data]
    if not keys:
        keys = ["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"]
    for key in keys:
        data[key] = str(dtype).removeprefix("torch.")
    config_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_endpoints_match(a: nn.Module, b: nn.Module) -> None:
    """Raise :class:`EndpointMismatchError` naming the first tensor whose name or shape differs."""
    sa, sb = a.state_dict(), b.state_dict()
    for (ka, va), (kb, vb) in zip(sa.items(), sb.items(), strict=False):
        if ka != kb or va.shape != vb.shape:
            raise EndpointMismatchError(
                f"the endpoints have different architectures: first difference at A {ka!r} {tuple(va.shape)} "
                f"vs B {kb!r} {tuple(vb.shape)}"
            )
    if len(sa) != len(sb):
        longer, name = (sa, "A") if len(sa) > len(sb) else (sb, "B")
        extra = list(longer)[min(len(sa), len(sb))]
        raise EndpointMismatchError(
            f"the endpoints have different architectures: {name} has the extra tensor {extra!r} "
            f"{tuple(longer[extra].shape)}"
        )
