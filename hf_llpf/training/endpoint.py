"""Training loops: endpoint training (``hf-llpf train``) and the minimal repair training of each tick.

Only this module, :mod:`hf_llpf.run` and :mod:`hf_llpf.evaluation` touch the Accelerator: device
placement comes from it alone, never from ``.cuda()``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from hf_llpf.batches import LossFn, cpu_only, default_loss, move_batch
from hf_llpf.config import TrainRecipe
from hf_llpf.data import DataBundle, SeededLoader
from hf_llpf.errors import ConfigError, DataMismatchError, RunDirectoryError
from hf_llpf.evaluation.scoring import score
from hf_llpf.models import WEIGHTS_NAME, Endpoint, as_endpoint, check_finite, save_model
from hf_llpf.partial import cleaned_on_failure
from hf_llpf.progress import progress_enabled
from hf_llpf.recipe_model import model_and_data, training_loss
from hf_llpf.run import check_out_dir
from hf_llpf.seeding import seed_everything
from hf_llpf.textfiles import read_json
from hf_llpf.timm_config import run_data_config, with_data_config

# What save_pretrained writes for a tokenizer: a model folder of this tool may hold them.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json")
_TOKENIZER_FILES += ("merges.txt", "added_tokens.json", "chat_template.jinja")


def make_accelerator(
    *, mixed_precision: str = "auto", report_to: list[str] | None = None, project_dir: str | None = None
) -> Accelerator:
    """The Accelerator of a run: the device, processes, precision and trackers.

    Accelerate chooses the device (CUDA, MPS, XPU, ... or the CPU; ``ACCELERATE_USE_CPU`` forces the CPU), and
    ``mixed_precision="auto"`` leaves the precision to the launch (``accelerate launch --mixed_precision``, its
    ``ACCELERATE_MIXED_PRECISION`` environment, the accelerate config), ``no`` when nothing says.

    Raises:
        ConfigError: a tracker's package is not installed, or this process already runs an Accelerator with
            another mixed precision (Accelerate's state is per process).
    """
    import importlib.util

    from accelerate.state import AcceleratorState

    missing = [name for name in report_to or [] if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            [f"report_to={name!r}: the package {name!r} is not installed (pip install {name})" for name in missing]
        )
    current = AcceleratorState._shared_state.get("_mixed_precision") if AcceleratorState._shared_state else None
    if mixed_precision != "auto" and current is not None and str(current) != mixed_precision:
        raise ConfigError(
            f"mixed_precision={mixed_precision!r}: this process already runs Accelerate with "
            f"{current!r}; start a new process (a new `hf-llpf connect`) to change it"
        )
    return Accelerator(
        cpu=cpu_only(),
        mixed_precision=None if mixed_precision == "auto" else mixed_precision,
        log_with=list(report_to or []) or None,
        project_dir=project_dir,
    )


def describe_launch(accelerator: Accelerator, *, sharding: str = "none") -> dict[str, Any]:
    """What the run runs on, as recorded in ``summary.run.launch`` and stated in one line at its start.

    ``asked_processes`` is set when the environment names a process group (``MASTER_ADDR``, which
    ``accelerate launch --num_processes N`` sets) that this run did not join: Accelerate without a GPU and
    without ``--multi_cpu`` runs the script once, alone.
    """
    processes = accelerator.num_processes
    launch = {
        "processes": processes,
        # A CPU's index names no device of its own (torchrun reports cpu:0 on some machines).
        "device": "cpu" if accelerator.device.type == "cpu" else str(accelerator.device),
        # A repeat's ProcessLocal view is one process with no process group of its own.
        "distributed": str(getattr(accelerator, "distributed_type", "process-local")).rsplit(".", 1)[-1].lower(),
        "sharding": (
            "fsdp (each process holds 1/N of every parameter)"
            if sharding == "fsdp"
            else "none (every process holds the whole model)"
        ),
        "mixed_precision": str(accelerator.mixed_precision),
    }
    if processes == 1 and os.environ.get("MASTER_ADDR") and "WORLD_SIZE" not in os.environ:
        launch["note"] = (
            "the environment names a process group (MASTER_ADDR) but one process started: accelerate launch "
            "runs one process without a GPU unless --multi_cpu is given; torchrun --nproc_per_node N starts N"
        )
    return launch


def launch_line(launch: dict[str, Any]) -> str:
    """The start line of a command: processes, device, how the work is split, and the launch's note if any."""
    split = "data-parallel" if launch["processes"] > 1 else "one process"
    if launch["sharding"].startswith("fsdp"):
        split = "sharded"
    # Accelerate's "no" distributed type says only that there is no process group: one process says so already.
    how = split if launch["distributed"] in ("no", "process-local") else f"{split}, {launch['distributed']}"
    line = (
        f"{launch['processes']} process(es) on {launch['device']} ({how}), "
        f"sharding: {launch['sharding']}, mixed precision: {launch['mixed_precision']}"
    )
    return line + (f"; {launch['note']}" if launch.get("note") else "")


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
        The trained :class:`~hf_llpf.models.Endpoint` and its metrics (train/test loss and accuracy,
        iterations, seconds). With ``out_dir``, the model folder and ``metrics.json`` are written there.
    """
    if out_dir is not None:
        check_model_out_dir(Path(out_dir), overwrite=overwrite)
    accelerator = accelerator or Accelerator(cpu=cpu_only())
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
    # A trained timm endpoint's config.json says what it was trained on, as a path's points do (hf_llpf.timm_config).
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
    from hf_llpf.tokenizer import without_call_state

    if tokenizer_json.is_file():
        clean = without_call_state(tokenizer_json.read_text(encoding="utf-8"))
        if clean is not None:
            tokenizer_json.write_text(clean, encoding="utf-8")


def set_bn_momentum(model: nn.Module, momentum: float) -> int:
    """Set the running-statistics momentum of every BatchNorm layer of ``model``; returns how many.

    The momentum is a module attribute, not part of the state dict: points written from ``model`` load with
    their architecture's own momentum.
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.momentum = momentum
    return len(layers)


def batch_stream(train_data: Any) -> Iterator[Any]:
    """Endless batches from a SeededLoader (resumable), a DataLoader or any re-iterable of batches."""
    if isinstance(train_data, SeededLoader):
        yield from train_data.stream()
        return
    while True:
        empty = True
        for batch in train_data:
            empty = False
            yield batch
        if empty:
            raise DataMismatchError("the training data yielded no batch")


class RepairTrainer:
    """The minimal training of each tick (the paper's repair step; docs/algorithm.md).

    SGD on the training data with every parameter trainable, in train mode: at least ``min_iters`` and at
    most ``max_iters`` batches, stopping as soon as the mean of the last ``min_iters`` batch losses is at
    most ``loss_threshold``. The optimizer is built once, so its state (momentum) carries across ticks; the
    batch stream is one endless iterator, never re-created per tick (a fresh multi-worker DataLoader per
    tick made the reference implementation 9x slower).

    With ``bn_momentum`` every BatchNorm layer of ``model`` gets that running-statistics momentum, so the eval-mode
    statistics follow the weights a tick has just moved within a few batches (BatchNorm's usual 0.1 left them
    describing the weights before the move: measured max loss 0.077 instead of 0.045 on one small_cnn path).

    With ``sharded=True`` the model is already sharded by FSDP2 (``fully_shard``) over the processes: it is trained
    as it is, each process reading its own part of every batch as under data parallelism; after each repair every
    process takes the main process's buffers.

    With ``per_tensor_lr=True`` every parameter has its own optimizer group, so :meth:`set_lr_factors` can
    give each tensor its own learning rate (AngleConformal, docs/algorithm.md §6).

    Under several processes the model is wrapped for data parallelism by the Accelerator (gradients are
    averaged), each process reads its own shard of every batch, and the loss that drives the stopping rule is
    averaged across processes, so every process runs the same number of iterations and stays in step. The
    Accelerator's mixed precision (``bf16``/``fp16``) applies to these forward/backward passes only.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Any,
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        min_iters: int,
        max_iters: int,
        loss_threshold: float,
        bn_momentum: float | None = None,
        loss_fn: LossFn | None = None,
        accelerator: Accelerator | None = None,
        per_tensor_lr: bool = False,
        sharded: bool = False,
    ):
        self.accelerator = accelerator or Accelerator(cpu=True)
        self.module = model  # the bare model: moves and corrections act on its parameters
        self.distributed = self.accelerator.num_processes > 1
        self.train_data = train_data
        self.stream = batch_stream(train_data)
        self.loss_fn = loss_fn or default_loss
        self.min_iters, self.max_iters, self.loss_threshold = min_iters, max_iters, loss_threshold
        self.base_lr = lr
        self.lr_scale = 1.0  # the certifier lowers the repair's rate where its budget could not repair a point
        if bn_momentum is not None:
            set_bn_momentum(model, bn_momentum)
        params = list(model.parameters())
        groups = [{"params": [p]} for p in params] if per_tensor_lr else [{"params": params}]
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
        # prepare_* wraps for DDP (several processes) and mixed precision; on one plain process it changes nothing.
        # A model sharded with fully_shard is not wrapped again: FSDP2 reduce-scatters (averages) its gradients.
        self.sharded = sharded
        self.model = model if sharded else self.accelerator.prepare_model(model)
        self.optimizer = optimizer if sharded else self.accelerator.prepare_optimizer(optimizer)
        if isinstance(train_data, SeededLoader) and self.distributed:
            train_data.num_shards = self.accelerator.num_processes
            train_data.shard_index = self.accelerator.process_index
        self._group_of = {id(p): i for i, g in enumerate(self.optimizer.param_groups) for p in g["params"]}
        self.iterations = 0  # over the whole run

    def repair(self, iters: int | None = None) -> tuple[float, int]:
        """Run one tick's minimal training; returns (mean of the last ``min_iters`` losses, iterations).

        With ``iters`` (the certifier's extra rounds) exactly that many iterations are run, without the
        threshold stop (a non-finite loss still stops them).
        """
        self.model.train()
        window: list[float] = []
        device = self.accelerator.device
        limit, threshold = (self.max_iters, self.loss_threshold) if iters is None else (iters, -math.inf)
        for i in range(1, limit + 1):
            batch = move_batch(next(self.stream), device)
            loss = self.loss_fn(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            self.optimizer.step()
            value = self.accelerator.reduce(loss.detach(), "mean") if self.distributed else loss.detach()
            window.append(value.item())  # the stopping rule needs it; one sync per batch
            if len(window) > self.min_iters:
                window.pop(0)
            if i >= self.min_iters and not math.isfinite(window[-1]):
                break
            if i >= self.min_iters and sum(window) / len(window) <= threshold:
                break
        self.iterations += i
        if self.sharded:
            self._share_buffers()
        return sum(window) / len(window), i

    def _share_buffers(self) -> None:
        """Every process takes the main process's buffers (BatchNorm's running statistics, which each process's own
        batches updated), as DDP's broadcast of the buffers before each forward gives under data parallelism: what
        the main process writes is what every process holds."""
        for b in self.module.buffers():
            torch.distributed.broadcast(b.data, src=0)

    def param_index(self, param: torch.Tensor) -> int:
        """The optimizer parameter group that holds ``param``."""
        return self._group_of[id(param)]

    def set_lr_factors(self, groups: list[int], factors: list[float]) -> None:
        """Set ``lr = base lr × factor`` for each listed parameter group (needs ``per_tensor_lr=True``)."""
        if len(self.optimizer.param_groups) == 1 and len(groups) > 1:
            raise RuntimeError("per-tensor learning rates need RepairTrainer(per_tensor_lr=True)")
        for g, f in zip(groups, factors, strict=True):
            self.optimizer.param_groups[g]["lr"] = self.base_lr * self.lr_scale * f

    def scale_lr(self, scale: float) -> None:
        """Every group's learning rate to ``scale`` times its unscaled value (its own factor kept)."""
        for g in self.optimizer.param_groups:
            g["lr"] = g["lr"] * scale / self.lr_scale
        self.lr_scale = scale

    def state_dict(self) -> dict:
        """Optimizer state, iteration count and (for a SeededLoader) the data position."""
        state = {"optimizer": self.optimizer.state_dict(), "iterations": self.iterations}
        if isinstance(self.train_data, SeededLoader):
            state["data"] = self.train_data.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (the batch stream continues from the saved position)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.iterations = int(state["iterations"])
        if "data" in state and isinstance(self.train_data, SeededLoader):
            self.train_data.load_state_dict(state["data"])
            self.stream = batch_stream(self.train_data)
