"""The model and data a training recipe names (``hf-llpf train``), and the loss it trains with.

A built-in or timm name is built for the data (its stem fitted to the images' channels, its head to the
classes) and trained from scratch; an endpoint (model folder or Hub id) is fine-tuned from its weights on the
data of its own task (text: tokenized with its tokenizer). docs/data.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_llpf.config import TrainRecipe
from hf_llpf.data.bundle import build_bundle, check_labels_fit
from hf_llpf.data.sources import read_splits
from hf_llpf.data.task import check_task, data_task
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import create_model, load_endpoint
from hf_llpf.run.inputs import load_for_endpoints, looks_like_endpoint


def model_and_data(recipe: TrainRecipe, data: Any) -> tuple[nn.Module, Any]:
    """The model to train and its data: a built-in/timm model built for the data, or an endpoint to fine-tune."""
    if looks_like_endpoint(recipe.model):
        if recipe.model_args:
            raise ConfigError(
                f"model_args={recipe.model_args!r}: constructor arguments of built-in/timm names; the endpoint "
                f"{recipe.model!r} is loaded as saved"
            )
        endpoint = load_endpoint(recipe.model)
        return endpoint.model.train(), data or load_for_endpoints(recipe.data, endpoint)
    if data is None:
        train, test = read_splits(recipe.data)
        task = data_task(train, recipe.data) if recipe.data.task == "auto" else recipe.data.task
        # A name is built as an image classifier: text data need an endpoint (its folder or Hub id) to fine-tune.
        check_task("image", task, endpoint=recipe.model, data=recipe.data.source, train=train, who="the model")
        data = build_bundle(recipe.data.model_copy(update={"task": task}), train, test)
    model_args = {"num_classes": data.num_classes, "in_chans": data.input_shape[0], **recipe.model_args}
    model = create_model(recipe.model, **model_args)
    check_labels_fit(model, data)
    return model, data


def training_loss(model: nn.Module, batch: Any, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy with label smoothing for ``(inputs, labels)`` and classification dicts; a causal LM's (or any
    dict batch's) own ``outputs.loss`` otherwise."""
    if not isinstance(batch, dict):
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels, label_smoothing=label_smoothing)
    out = model(**batch)
    if label_smoothing and out.logits.ndim == 2:
        return F.cross_entropy(out.logits, batch["labels"], label_smoothing=label_smoothing)
    return out.loss


__all__ = ["model_and_data", "training_loss"]
