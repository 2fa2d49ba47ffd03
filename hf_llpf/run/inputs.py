"""Input resolution for a run: settings, endpoints, the training batches, one example batch, the stage plan.

Everything a user may pass (spec strings, folders, modules, datasets, DataLoaders, dicts of settings) becomes
the typed objects the engine works on, and anything that does not fit is a clear error before any work.
"""

from __future__ import annotations

import os
from pathlib import Path as FsPath
from typing import Any

import datasets
import torch

from hf_llpf.config import ConnectConfig, DataConfig, build
from hf_llpf.data import bundle as data_lib
from hf_llpf.data.bundle import DataBundle, SeededLoader, build_bundle, check_labels_fit
from hf_llpf.data.images import model_channels
from hf_llpf.data.intake import read_data
from hf_llpf.data.sources import read_splits, string_columns
from hf_llpf.data.task import check_task, data_task, endpoint_task
from hf_llpf.data.text import TextBundle, text_bundle
from hf_llpf.data.tokenizer import endpoint_tokenizers, load_tokenizer
from hf_llpf.errors import ConfigError, DataMismatchError, LLPFError
from hf_llpf.models.endpoints import Endpoint, create_model, load_endpoint
from hf_llpf.stages import build_stages, load_overrides


def resolve_config(config: ConnectConfig | dict | None) -> ConnectConfig:
    """The run's settings from a :class:`ConnectConfig`, a dict of its fields, or None (the defaults)."""
    if config is None:
        return ConnectConfig()
    if isinstance(config, ConnectConfig):
        return config
    if isinstance(config, dict):
        return build(ConnectConfig, config)
    raise ConfigError(f"config={type(config).__name__}: expected a ConnectConfig, a dict or None")


def resolve_endpoint(spec: Any) -> Endpoint:
    """An :class:`Endpoint` from a spec, a module or an Endpoint."""
    return spec if isinstance(spec, Endpoint) else load_endpoint(spec)


def prepare_data(train_data: Any, config: ConnectConfig, ea: Endpoint, eb: Endpoint | None = None) -> tuple:
    """The batch source of the minimal training, the bundle (when the data came from a spec or a bundle), and
    ``config`` whose ``data`` records what was read: the resolved spec, or what the Python object was.

    ``train_data`` is any form of :mod:`hf_llpf.data.intake` (a dict of splits: the run trains on its ``"train"``).

    Raises:
        DataMismatchError: the data do not fit endpoint A (task, labels, columns), or are none of those forms.
    """
    given = read_data(train_data, field="train_data")
    if given.form in ("default", "spec"):
        spec = config.data if given.form == "default" else given.spec
        if isinstance(spec, str):  # the run's data options, with this source
            spec = build(DataConfig, {**config.data.model_dump(exclude={"source", "recorded"}), "source": spec})
        bundle = load_for_endpoints(spec, ea, eb)
    elif given.form == "bundle":
        bundle = given.bundle
        check_task(endpoint_task(ea.model), bundle.task, endpoint=ea.source, data=bundle.config.source)
        if bundle.task == "image":
            check_labels_fit(ea.model, bundle)
    else:
        loader = _python_batches(given.train, config)
        return loader, None, config.model_copy(update={"data": _described(given.train)})
    loader = bundle.loader("train", batch_size=config.batch_size, seed=config.seed)
    return loader, bundle, config.model_copy(update={"data": bundle.config})


def _python_batches(train_data: Any, config: ConnectConfig) -> Any:
    """The training batches of a dataset (shuffled by the run's seed) or of the caller's own batches (as given)."""
    if isinstance(train_data, datasets.Dataset):
        generator = torch.Generator().manual_seed(config.seed)
        ds = train_data.with_format("torch")
        return torch.utils.data.DataLoader(ds, batch_size=config.batch_size, shuffle=True, generator=generator)
    return train_data


def _described(train_data: Any) -> DataConfig:
    """What a run records of data passed as a Python object: never a data spec it did not read."""
    record: dict[str, Any] = {"given_as": type(train_data).__name__}
    if isinstance(train_data, datasets.Dataset):
        record |= {"train_examples": len(train_data), "train_fingerprint": train_data._fingerprint}
        record["columns"] = list(train_data.column_names)
    elif hasattr(train_data, "dataset") and hasattr(train_data.dataset, "__len__"):
        record["train_examples"] = len(train_data.dataset)
    return DataConfig(source=f"<{type(train_data).__name__}>", recorded=record)


def load_for_endpoints(spec: DataConfig, ea: Endpoint, eb: Endpoint | None = None) -> DataBundle | TextBundle:
    """The data of ``spec`` for endpoint A's task (checked against the data's), text tokenized with the endpoints'
    tokenizer (endpoint A's, which must agree with B's; or ``spec.tokenizer``)."""
    train, test = read_splits(spec)
    kind = endpoint_task(ea.model)
    task = data_task(train, spec, hint=kind) if spec.task == "auto" else spec.task
    check_task(kind, task, endpoint=ea.source, data=spec.source, train=train)
    spec = spec.model_copy(update={"task": task})
    if task == "image":
        bundle = build_bundle(spec, train, test, channels=model_channels(ea.model))
        check_labels_fit(ea.model, bundle)
        return bundle
    if spec.tokenizer is not None:
        tokenizer = load_tokenizer(spec.tokenizer)
    else:
        tokenizer, where = endpoint_tokenizers(ea, eb, texts=_sample_texts(train, spec))
        spec = spec.model_copy(update={"tokenizer": where})
    return text_bundle(spec, train, test, tokenizer=tokenizer, model=ea.model)


def _sample_texts(train: datasets.Dataset, spec: DataConfig, n: int = 32) -> list[str]:
    """The first texts of the data, on which both endpoints' tokenizers must agree."""
    names = [spec.text_column] if spec.text_column in train.column_names else string_columns(train)
    return [str(t) for t in train.select(range(min(n, len(train))))[names[0]]] if names else []


def example_batch(loader: Any) -> Any:
    """One batch for tracing the data flow, drawn without moving the training stream."""
    if isinstance(loader, SeededLoader):
        return loader.first_batch(8)
    batch = next(iter(loader))
    if isinstance(batch, dict):
        return {k: v[:8] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


def stage_plan(endpoint: Endpoint, example: Any, config: ConnectConfig) -> Any:
    """The stage plan, or a clear error when the data's example batch does not fit the endpoint (channels, size)."""
    try:
        return build_stages(endpoint.model, example, overrides=config.stages)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, LLPFError):
            raise
        shape = tuple(example[0].shape) if isinstance(example, (tuple, list)) else type(example).__name__
        raise DataMismatchError(
            f"the data's batches ({shape}, data={config.data.source!r}) do not fit endpoint A ({endpoint.source}): "
            f"{str(err).splitlines()[0][:300]}. Choose data for this model (--data, data.image_size)"
        ) from None


def read_paths(*endpoints: Endpoint, config: ConnectConfig) -> list[FsPath]:
    """The local files and folders a run reads (endpoints, data): a run directory must never delete them."""
    specs = [e.source for e in endpoints] + [config.data.source]
    return [FsPath(s) for s in specs if isinstance(s, str) and FsPath(s).exists()]


def local_specs(*specs: Any) -> list[FsPath]:
    """The local files and folders named by endpoint or data specs before they are loaded (an Endpoint: its
    source); what is not a local path (a Hub id, a module, a built-in name) is left out."""
    names = [s.source if isinstance(s, Endpoint) else s for s in specs]
    return [FsPath(s) for s in names if isinstance(s, (str, os.PathLike)) and FsPath(s).exists()]


def looks_like_endpoint(spec: str) -> bool:
    """A folder, a file or a Hub id ``org/name[@rev]``; anything else is a built-in/timm model name."""
    return FsPath(spec).exists() or "/" in spec or spec.endswith(".safetensors")


def check_example_options(model: str, *, data: str | None = None, image_size: int | None = None) -> None:
    """The options of :func:`example_for` that cannot work together, as an error before anything loads."""
    if image_size and not data and looks_like_endpoint(model):
        raise ConfigError(
            f"--image-size {image_size}: resizes the images of --data, and none was given for the endpoint "
            f"{model!r}; pass --data (e.g. --data digits) or drop --image-size"
        )


def _first_test_batch(bundle: DataBundle | TextBundle) -> Any:
    return bundle.eval_loader("test", indices=None, batch_size=8).first_batch(8)


def example_for(
    model: str, *, data: str | None = None, image_size: int | None = None, model_args: dict | None = None
) -> tuple[torch.nn.Module, Any]:
    """A model and one example batch that fits it, for inspecting its stages (``hf-llpf groups``).

    ``model`` is an endpoint (folder, file, Hub id) or a built-in/timm name, built at random init with its stem
    fitted to the example images and, when ``data`` is given, its head to the data's classes. The batch is 8 test
    examples of ``data`` (default digits; text tokenized with the endpoint's tokenizer), or a transformers
    endpoint's own dummy inputs when no data is given.
    """
    check_example_options(model, data=data, image_size=image_size)
    model_args = dict(model_args or {})
    if looks_like_endpoint(model):
        endpoint = load_endpoint(model, model_args=model_args or None)
        if data:
            spec = build(DataConfig, {"source": data, **({"image_size": image_size} if image_size else {})})
            return endpoint.model, _first_test_batch(load_for_endpoints(spec, endpoint))
        if isinstance(getattr(endpoint.model, "dummy_inputs", None), dict):
            return endpoint.model, endpoint.model.dummy_inputs  # a transformers endpoint: its own dummy inputs
        return endpoint.model, _first_test_batch(data_lib.load_data("digits"))
    if data:
        spec = build(DataConfig, {"source": data})
        train, _ = read_splits(spec)
        check_task("image", data_task(train, spec), endpoint=model, data=data, train=train, who="the model")
    # The module's load_data, looked up now (tests replace it).
    bundle = data_lib.load_data(data or "digits", **({"image_size": image_size} if image_size else {}))
    model_args.setdefault("in_chans", bundle.input_shape[0])  # else the stem's forward fails
    if data:
        model_args.setdefault("num_classes", bundle.num_classes)
    return create_model(model, **model_args), _first_test_batch(bundle)


def example_plan(module: torch.nn.Module, batch: Any, *, label: str, overrides: str | None = None) -> Any:
    """The stage plan of ``module`` traced on ``batch`` (and a YAML file of stage overrides), or a clear error."""
    rules = load_overrides(overrides) if overrides else None
    try:
        with torch.no_grad():
            return build_stages(module, batch, overrides=rules)
    except (RuntimeError, AssertionError, ValueError) as e:  # the batch does not fit the model (channels, size)
        if isinstance(e, LLPFError):
            raise
        shape = tuple(batch[0].shape) if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise ConfigError(
            f"the example batch {shape} does not fit {label}: {str(e).splitlines()[0]} "
            "(choose --data / --image-size, or --model-args)"
        ) from e
