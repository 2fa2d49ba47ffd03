"""Endpoint training (``hf-llpf train``): a recipe's model trained on its data and saved as a model folder.

The engine's repair training of each tick is :mod:`hf_llpf.algorithms.repair`; the Accelerator of a run is made by
:mod:`hf_llpf.devices.accelerator`. Device placement comes from the Accelerator alone, never from ``.cuda()``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from hf_llpf.batches import move_batch
from hf_llpf.config import TrainRecipe
from hf_llpf.data.bundle import DataBundle, SeededLoader
from hf_llpf.devices.accelerator import make_accelerator
from hf_llpf.errors import RunDirectoryError
from hf_llpf.evaluation.scoring import score
from hf_llpf.files.partial import cleaned_on_failure
from hf_llpf.files.textfiles import read_json
from hf_llpf.models.endpoints import WEIGHTS_NAME, Endpoint, as_endpoint, check_finite, save_model
from hf_llpf.models.timm_config import run_data_config, with_data_config
from hf_llpf.progress import progress_enabled
from hf_llpf.run import check_out_dir
from hf_llpf.run.seeding import seed_everything
from hf_llpf.training.recipe_model import model_and_data, training_loss

# What save_pretrained writes for a tokenizer: a model folder of this tool may hold them.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json")
_TOKENIZER_FILES += ("merges.txt", "added_tokens.json", "chat_template.jinja")


def _split_metrics(model: nn.Module, loader: SeededLoader) -> dict[str, float]:
    """Eval-mode loss and accuracy of an endpoint on one split, as ``metrics.json`` records them."""
    m = score(model.eval(), loader)
    return {"loss": m["loss"], "accuracy": m["acc"]}


def _lr_lambda(recipe: TrainRecipe, total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = int(recipe.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if recipe.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if recipe.schedule == "onecycle":  # linear up for 30 %, then cosine down (the paper's ResNet18 schedule)
            return (
                step / (0.3 * total_steps)
                if step < 0.3 * total_steps
                else 0.5 * (1 + math.cos(math.pi * (step - 0.3 * total_steps) / (0.7 * total_steps)))
            )
        return 1.0

    return factor


def train_endpoint(
    recipe: TrainRecipe,
    *,
    out_dir: str | Path | None = None,
    data: DataBundle | None = None,
    accelerator: Accelerator | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> tuple[Endpoint, dict[str, Any]]:
    """Train one endpoint as ``recipe`` says, and optionally save it.

    ``recipe.model`` is a built-in or timm name (trained from scratch on image data), or an endpoint (a model
    folder or Hub id: fine-tuned from its weights, on text data tokenized with its own tokenizer, which is saved
    with the result; docs/data.md).

    ``out_dir`` is checked before any work: an existing non-empty folder is refused unless ``overwrite``
    (then only a model folder of this tool is replaced), and non-finite weights are never saved.

    Same recipe and seed on the same machine → the same weights, bit for bit.

    Returns:
        The trained :class:`~hf_llpf.models.endpoints.Endpoint` and its metrics (train/test loss and accuracy,
        iterations, seconds). With ``out_dir``, the model folder and ``metrics.json`` are written there.
    """
    if out_dir is not None:
        check_model_out_dir(Path(out_dir), overwrite=overwrite)
    accelerator = accelerator or make_accelerator()
    seed_everything(recipe.seed)
    model, data = model_and_data(recipe, data)
    seed_everything(recipe.seed)  # the same data order whether loading the data drew random numbers or not
    loader = data.loader("train", batch_size=recipe.batch_size, seed=recipe.seed)
    total_steps = recipe.epochs * len(loader)
    optimizer, scheduler = _optimizer(model, recipe, total_steps, len(loader))
    model, optimizer = accelerator.prepare(model, optimizer)
    start = time.perf_counter()
    _train_epochs(model, loader, optimizer, scheduler, recipe, accelerator, progress=progress)
    seconds = time.perf_counter() - start
    model = accelerator.unwrap_model(model).cpu().eval()
    metrics = {
        "train": _split_metrics(model, data.loader("train", batch_size=256, seed=0, shuffle=False, augment=False)),
        "test": _split_metrics(model, data.loader("test", batch_size=256, seed=0)),
        "iterations": total_steps,
        "seconds": round(seconds, 3),
        "recipe": recipe.model_dump(mode="json"),
    }
    endpoint = as_endpoint(model, source=str(out_dir) if out_dir else f"{recipe.model}@seed{recipe.seed}")
    # A trained timm endpoint's config.json says what it was trained on, as a path's points do
    # (hf_llpf.models.timm_config).
    endpoint = with_data_config(endpoint, run_data_config(data, None, data.config))
    check_finite(endpoint, label=f"trained {recipe.model} seed {recipe.seed}")
    if out_dir is not None:
        _save_model_folder(model, Path(out_dir), endpoint, metrics, tokenizer=getattr(data, "tokenizer", None))
    return endpoint, metrics


def _optimizer(model: nn.Module, recipe: TrainRecipe, total_steps: int, steps_per_epoch: int) -> tuple[Any, Any]:
    """The recipe's optimizer (weight decay on weights only, not on biases and norms) and its LR schedule."""
    params = [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": recipe.weight_decay},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if recipe.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(params, lr=recipe.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(recipe, total_steps, steps_per_epoch))
    return optimizer, scheduler


def _train_epochs(model, loader, optimizer, scheduler, recipe: TrainRecipe, accelerator, *, progress: bool) -> None:
    """``recipe.epochs`` epochs of plain supervised training (cross-entropy with the recipe's label smoothing)."""
    model.train()
    bar = tqdm(
        total=recipe.epochs * len(loader),
        desc=f"train {recipe.model} seed {recipe.seed}",
        disable=not progress_enabled(progress and accelerator.is_main_process),
        leave=False,
    )
    for _ in range(recipe.epochs):
        for batch in loader:
            loss = training_loss(model, move_batch(batch, accelerator.device), recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()


def train_or_reuse(out: Path, recipe: TrainRecipe, data: DataBundle, *, progress: bool = True) -> dict[str, Any]:
    """Train an endpoint into ``out``, or reuse the one there when it was trained with the same recipe.

    Returns the endpoint's metrics (with ``"reused": True`` when nothing was trained). A model folder of an
    older recipe is replaced.
    """
    metrics_file = Path(out) / "metrics.json"
    if metrics_file.is_file() and (Path(out) / WEIGHTS_NAME).is_file():
        metrics = read_json(metrics_file)
        if metrics.get("recipe") == recipe.model_dump(mode="json"):
            return {**metrics, "reused": True}
    _, metrics = train_endpoint(recipe, out_dir=out, data=data, progress=progress, overwrite=True)
    return metrics


def check_model_out_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse to train into a file, a folder under a file, or an existing non-empty folder (unless ``overwrite``
    and the folder holds only a model this tool wrote: ``config.json``, ``model.safetensors``, ``metrics.json``).

    Raises:
        RunDirectoryError: naming the folder and what to do.
    """
    check_out_dir(out, field="--out")
    if not out.is_dir() or not any(out.iterdir()):
        return
    names = sorted(p.name for p in out.iterdir())
    if not overwrite:
        raise RunDirectoryError(f"--out {str(out)!r} already exists ({names[:6]}); pass --overwrite or a new folder")
    if not set(names) <= {"config.json", WEIGHTS_NAME, "metrics.json", "generation_config.json", *_TOKENIZER_FILES}:
        raise RunDirectoryError(
            f"--out {str(out)!r} holds more than a model folder ({names[:8]}): refusing to overwrite it"
        )


def _save_model_folder(model: nn.Module, out: Path, endpoint: Endpoint, metrics: dict, *, tokenizer: Any) -> None:
    """Write the model folder whole (with its tokenizer): into a temporary sibling, then renamed over ``out``."""
    tmp = out.with_name(f".{out.name}.tmp_train")
    if tmp.exists():
        shutil.rmtree(tmp)
    with cleaned_on_failure(tmp):  # a failed write (a full disk) leaves no temporary folder behind
        save_model(model, tmp, kind=endpoint.kind, arch=endpoint.arch)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            _clear_call_state(tmp / "tokenizer.json")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _clear_call_state(tokenizer_json: Path) -> None:
    """Save the tokenizer as it was loaded, not as the training last called it: the truncation the data pipeline
    set would otherwise make one fine-tune's tokenizer.json differ from another's (and from its base model's)."""
    from hf_llpf.data.tokenizer import without_call_state

    if tokenizer_json.is_file():
        clean = without_call_state(tokenizer_json.read_text(encoding="utf-8"))
        if clean is not None:
            tokenizer_json.write_text(clean, encoding="utf-8")
