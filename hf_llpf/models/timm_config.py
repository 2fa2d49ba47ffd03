"""The ``config.json`` of a timm point: timm's own writer, with the data the run trained on.

timm models carry the ``pretrained_cfg`` of their architecture's default weights (ImageNet mean/std, 224 px,
another model's ``hf_hub_id``). A point was trained on the run's data, so its ``pretrained_cfg`` must say so:
``timm.data.resolve_data_config(model=timm.create_model("hf-hub:org/path"))`` then gives the run's input size
and normalisation, and nothing points at foreign weights. timm's own ``save_config_for_hf`` (what
``timm.models.save_for_hf`` calls) writes the file from a ``data_config``; the reconstruction arguments
(``model_args``) stay the ones the endpoint was loaded with, so :func:`hf_llpf.models.endpoints.load_endpoint` and
``timm.create_model`` rebuild the same model.

The run's data config (:func:`run_data_config`) is the images' ``(C, H, W)`` as batched, the data's mean/std
(``data.mean``/``data.std``: batches are ``(x / 255 - mean) / std``), bilinear resizing and no crop (images are
resized whole, never cropped). Batches given from Python carry no normalisation the run knows: only their input
size is recorded, the architecture's mean/std stay.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

# Keys of a default pretrained_cfg that describe the architecture's own pretrained weights, not a point of a path.
_FOREIGN = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "tag", "origin_url", "paper_ids", "paper_name",
            "notes", "license", "description", "label_names", "label_descriptions", "test_input_size",
            "test_crop_pct")  # fmt: skip
DATA_CONFIG = "data_config"  # the key of Endpoint.arch that carries the run's data config to save_model
# timm.create_model arguments that load weights from a file or fetch them (checkpoint_path is read with torch.load,
# a pickle; the pretrained_cfg* entries name a file, a URL or a repo to read weights from). A point is built from
# safetensors alone, so an endpoint's config.json naming one of them is refused.
LOAD_ARGS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")
# The keys of a pretrained_cfg that name where weights come from (timm's _PRETRAINED_SOURCE_KEYS).
_SOURCE_KEYS = ("file", "url", "hf_hub_id", "hf_hub_filename")


def check_model_args(model_args: Any, *, source: str) -> None:
    """Refuse ``model_args`` that would make timm load a file (or fetch weights) while building the model.

    Args:
        model_args: the constructor arguments (a config.json's ``model_args``, or given by the user).
        source: how to name where they came from in the message (the config file, or ``model_args``).

    Raises:
        UnsafeEndpointError: naming the source, the key and its value, and why it is refused.
    """
    from hf_llpf.errors import UnsafeEndpointError

    if not isinstance(model_args, dict):
        raise UnsafeEndpointError(f"{source}: model_args={model_args!r} must be an object of constructor arguments")
    for key in LOAD_ARGS:
        if model_args.get(key) not in (None, False, {}, ""):
            raise UnsafeEndpointError(
                f"{source}: model_args.{key}={model_args[key]!r} is refused: it makes timm load weights from a "
                "file or another source while building the model (checkpoint_path is read with torch.load, a "
                "pickle). hf_llpf reads weights only from the folder's safetensors files; remove the key"
            )


def check_timm_config(config: dict[str, Any], *, source: str) -> None:
    """Refuse a timm ``config.json`` whose ``model_args`` or ``pretrained_cfg`` name a file or source of weights.

    Raises:
        UnsafeEndpointError: see :func:`check_model_args`; or ``pretrained_cfg`` naming a ``file``/``url``/hub id
            (timm's ``hf-hub:`` loader would read weights from there).
    """
    from hf_llpf.errors import UnsafeEndpointError

    check_model_args(config.get("model_args") or {}, source=source)
    cfg = config.get("pretrained_cfg")
    if cfg is not None and not isinstance(cfg, dict):
        raise UnsafeEndpointError(f"{source}: pretrained_cfg={cfg!r} must be an object (timm's pretrained config)")
    for key in _SOURCE_KEYS:
        if (cfg or {}).get(key):
            raise UnsafeEndpointError(
                f"{source}: pretrained_cfg.{key}={cfg[key]!r} is refused: it names a source timm would load "
                "weights from instead of the folder's model.safetensors; remove the key (timm's own "
                "save_for_hf never writes it)"
            )


def run_data_config(bundle: Any, example: Any, data: Any) -> dict[str, Any] | None:
    """The data config of a run's images, in timm's terms (``input_size``, ``mean``, ``std``, ...), or None.

    Args:
        bundle: the run's data bundle (None when batches came from Python).
        example: one batch of the training data (its images give the input size when there is no bundle).
        data: the run's :class:`~hf_llpf.config.DataConfig`.
    """
    if bundle is not None and getattr(bundle, "task", None) == "image":
        cfg = {"input_size": tuple(int(d) for d in bundle.input_shape)}
        cfg |= {"mean": tuple(float(v) for v in data.mean), "std": tuple(float(v) for v in data.std)}
    else:
        images = example[0] if isinstance(example, (tuple, list)) and example else None
        if bundle is not None or getattr(images, "ndim", 0) != 4:
            return None
        cfg = {"input_size": tuple(int(d) for d in images.shape[1:])}
    return {**cfg, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


def with_data_config(endpoint: Any, data_config: dict[str, Any] | None) -> Any:
    """``endpoint`` (a copy) whose timm points are saved with ``data_config``; other kinds are returned as they are."""
    if endpoint is None or data_config is None or getattr(endpoint, "kind", None) != "timm":
        return endpoint
    return dataclasses.replace(endpoint, arch={**endpoint.arch, DATA_CONFIG: dict(data_config)})


def timm_config(model: Any, arch: dict[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a timm model saved in ``arch``'s format (see the module docstring)."""
    from timm.models._hub import save_config_for_hf  # what timm.models.save_for_hf writes config.json with

    model_args = dict(arch.get("model_args") or {})
    data_config = arch.get(DATA_CONFIG)
    if not isinstance(getattr(model, "pretrained_cfg", None), dict) or "architecture" not in model.pretrained_cfg:
        return {"architecture": arch["architecture"], "num_classes": getattr(model, "num_classes", None),
                "model_args": model_args, "pretrained_cfg": dict(data_config or {})}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        save_config_for_hf(model, str(path), data_config=_jsonable(data_config) if data_config else None)
        config = json.loads(path.read_text())
    cfg = {k: v for k, v in config.get("pretrained_cfg", {}).items() if k not in _FOREIGN}
    return {
        **config,
        "architecture": arch["architecture"],
        "num_classes": getattr(model, "num_classes", model_args.get("num_classes")),
        "model_args": model_args,  # what the endpoint was created with: the loaders rebuild the same model
        "pretrained_cfg": cfg,
    }


def _jsonable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}


def write_timm_config(model: Any, directory: str | Path, arch: dict[str, Any]) -> None:
    """Write ``directory/config.json`` for a timm model (:func:`timm_config`)."""
    (Path(directory) / "config.json").write_text(json.dumps(timm_config(model, arch), indent=2))


__all__ = [
    "DATA_CONFIG",
    "LOAD_ARGS",
    "check_model_args",
    "check_timm_config",
    "run_data_config",
    "timm_config",
    "with_data_config",
    "write_timm_config",
]
