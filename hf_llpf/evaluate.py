"""Judging a path honestly: metrics of every saved point, the linear baseline, continuity (llpf-spec.md §5).

The engine's recorded ``train_loss`` is a moving average of augmented mini-batch losses taken *during* the
repair training. Here every saved point is evaluated afterwards, in eval mode and without gradients, on a
fixed seeded subset of the training data and on the test set, and compared with straight linear interpolation
θ(t) = (1−t)·θ_A + t·θ_B on the same data, with the same definitions:

- **max train loss**: the largest eval-mode training loss over the points;
- **barrier**: max_i (loss_i − ((1−t_i)·loss_A + t_i·loss_B)), t_i the normalised position of point i (cumulative
  L2 length of the path up to point i divided by its total length; i/(N−1) on the linear baseline), loss_A
  and loss_B the losses of the first and last point;
- **min train accuracy**, **test loss range** and **test accuracy range** (test loss may rise: it is shown);
- **path length** (sum of the L2 steps between consecutive points over all parameters) vs the **straight
  distance** |θ_B − θ_A|;
- **continuity**: K interior points of each straight segment between consecutive points, on a fixed subset;
  the worst one and where it is. A path whose saved points are low but whose segments are not shows it.

θ_A and θ_B are the first and the last saved point. Points are streamed from disk: at most the previous and the
current point's tensors are held, besides the model being evaluated.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from hf_llpf.config import DataConfig, build
from hf_llpf.data import DataBundle, ImageData, SeededLoader, load_data
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.path import METRICS_CSV, METRICS_JSON, Path, atomic_write_text, points_to_csv, read_metrics
from hf_llpf.train import LossFn, default_loss, move_batch

EVAL_COLUMNS = ("eval_train_loss", "eval_train_acc", "test_loss", "test_acc")
RECAL = "_recal"
# Normalised batches of a split are kept (on the device) when they hold at most this many numbers (256 MB as
# float32); larger splits are normalised again for every point instead.
_CACHE_LIMIT = 1 << 26


# ------------------------------------------------------------------------------------------------ data
class EvalBatches:
    """Fixed batches of one split: unshuffled, unaugmented, the same for every point.

    Args:
        tensors: the split in memory.
        indices: which examples (sorted); ``None`` for all.
        config: the data's normalisation (mean, std).
        batch_size: examples per batch.
        device: where the batches are used.
    """

    def __init__(
        self,
        tensors: ImageData,
        *,
        indices: torch.Tensor | None,
        config: DataConfig,
        batch_size: int,
        device: torch.device,
    ):
        data = tensors if indices is None else ImageData(tensors.images[indices], tensors.labels[indices])
        self.loader = SeededLoader(
            data, batch_size=batch_size, seed=0, shuffle=False, augment=False, mean=config.mean, std=config.std
        )
        self.device = device
        self.num_examples = len(data)
        self._cached: list | None = None
        if data.images.numel() <= _CACHE_LIMIT:
            self._cached = [move_batch(b, device) for b in self.loader]

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self._cached is not None:
            yield from self._cached
        else:
            for batch in self.loader:
                yield move_batch(batch, self.device)


class BatchSource:
    """User-given batches (a re-iterable such as an unshuffled ``DataLoader`` or a list), optionally cut short.

    Args:
        batches: ``(inputs, labels)`` tuples or dicts; iterated once per evaluated point.
        device: where the batches are used.
        limit: stop after the batch that reaches this many examples (``None``: all).
    """

    def __init__(self, batches: Any, *, device: torch.device, limit: int | None = None):
        if iter(batches) is batches:
            raise ConfigError("evaluation data: a one-shot iterator was given; pass a list or a DataLoader")
        self.batches, self.device, self.limit = batches, device, limit
        self.num_examples = sum(_batch_size_of(b) for b in self)

    def __iter__(self) -> Iterator[Any]:
        seen = 0
        for batch in self.batches:
            if self.limit is not None and seen >= self.limit:
                return
            seen += _batch_size_of(batch)
            yield move_batch(batch, self.device)


@dataclass
class EvalSets:
    """The fixed data of one evaluation.

    Attributes:
        train: the seeded training subset (every point's train loss/accuracy and the BN recalibration).
        test: the whole test split.
        continuity: a smaller seeded training subset for the interior points of each segment.
    """

    train: EvalBatches | BatchSource
    test: EvalBatches | BatchSource
    continuity: EvalBatches | BatchSource


def make_eval_sets(
    data: DataBundle,
    *,
    train_subset: int | None = None,
    continuity_subset: int = 512,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | None = None,
) -> EvalSets:
    """Build the fixed evaluation batches.

    Both training subsets are prefixes of one seeded permutation, so the continuity subset is part of the
    training subset (or all of it).

    Args:
        data: the loaded data.
        train_subset: number of training examples (``None``: all).
        continuity_subset: number of training examples for continuity.
        batch_size: evaluation batch size.
        seed: seed of the subsets' permutation.
        device: where the batches are used (CPU by default).
    """
    device = device or torch.device("cpu")
    n = len(data.train_tensors)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = n if train_subset is None else min(train_subset, n)
    train_idx = None if k == n else perm[:k].sort().values
    cont_idx = perm[: min(continuity_subset, k)].sort().values
    common = {"config": data.config, "batch_size": batch_size, "device": device}
    return EvalSets(
        train=EvalBatches(data.train_tensors, indices=train_idx, **common),
        test=EvalBatches(data.test_tensors, indices=None, **common),
        continuity=EvalBatches(data.train_tensors, indices=cont_idx, **common),
    )


# ------------------------------------------------------------------------------------------------ scoring
def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, dict):
        first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        return int(first.shape[0])
    return int(batch[0].shape[0])


def _labels_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, dict):
        return batch.get("labels")
    return batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None


def _correct(model: nn.Module, output: Any, batch: Any) -> tuple[int, int]:
    """Correct predictions and how many were counted (0, 0 when the labels are not classes)."""
    logits = getattr(output, "logits", output)
    labels = _labels_of(batch)
    if not isinstance(logits, torch.Tensor) or labels is None or labels.dtype.is_floating_point:
        return 0, 0
    name = type(model).__name__
    if labels.ndim >= 2 and (name.endswith("ForCausalLM") or name.endswith("LMHeadModel")):
        # Causal language models predict token t+1 from position t (transformers shifts inside the loss too).
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    if logits.shape[:-1] != labels.shape:
        return 0, 0
    keep = labels != -100  # transformers' ignore index (padding, prompt tokens)
    hits = (logits.argmax(-1) == labels) & keep
    return int(hits.sum()), int(keep.sum())


@torch.no_grad()
def score(model: nn.Module, batches: Sequence | EvalBatches, *, loss_fn: LossFn | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (as it is: mode unchanged) over ``batches``.

    The loss is ``loss_fn(model, batch)`` (default: cross-entropy, or the model's own ``outputs.loss`` for
    dict batches), weighted by the batch size. Accuracy is read from the model's output (logits argmax vs
    integer labels; token accuracy for causal language models); ``nan`` when the labels are not classes.

    Returns:
        ``{"loss": float, "acc": float}``.
    """
    loss_fn = loss_fn or default_loss
    captured: list = []
    # The forward hook sees the output the loss function produced, so accuracy costs no second forward.
    handle = model.register_forward_hook(lambda _m, _a, out: captured.append(out))
    total, count, hits, counted = 0.0, 0, 0, 0
    try:
        for batch in batches:
            captured.clear()
            n = _batch_size_of(batch)
            total += float(loss_fn(model, batch)) * n
            count += n
            if captured:
                h, c = _correct(model, captured[-1], batch)
                hits, counted = hits + h, counted + c
    finally:
        handle.remove()
    if count == 0:
        raise ConfigError("evaluation data: no batch to evaluate on (the split or subset is empty)")
    return {"loss": total / count, "acc": hits / counted if counted else math.nan}


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Sequence | EvalBatches, *, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm layer's running statistics on ``batches``; nothing else changes.

    The running statistics are reset, then accumulated as a cumulative average (``momentum=None``) over the
    batches in train mode for the BatchNorm layers only (dropout and the rest stay in eval mode), with no
    gradients, so the parameters stay bit-identical. Momentum and modes are restored afterwards.

    Args:
        model: the model (changed in place).
        batches: training batches, as ``(inputs, labels)`` tuples or dicts.
        max_batches: use at most this many batches (``None``: all).

    Returns:
        The number of BatchNorm layers recalibrated (0: the model has none, nothing was done).
    """
    layers = _bn_modules(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        for b, batch in enumerate(batches):
            if max_batches is not None and b >= max_batches:
                break
            if isinstance(batch, dict):
                model(**{k: v for k, v in batch.items() if k != "labels"})
            else:
                model(batch[0])
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(layers)


def evaluate_point(
    model: nn.Module,
    sets: EvalSets,
    *,
    loss_fn: LossFn | None = None,
    recalibrate: bool = False,
    recal_batches: int | None = None,
) -> dict[str, float]:
    """The evaluation columns of the point currently loaded in ``model``.

    Returns:
        ``eval_train_loss``, ``eval_train_acc``, ``test_loss``, ``test_acc``, and with ``recalibrate`` the same
        four with ``_recal`` after BatchNorm recalibration on the training subset (which changes the model's
        running statistics: load the point again before reusing the model).
    """
    model.eval()
    train, test = score(model, sets.train, loss_fn=loss_fn), score(model, sets.test, loss_fn=loss_fn)
    row = {"eval_train_loss": train["loss"], "eval_train_acc": train["acc"]}
    row |= {"test_loss": test["loss"], "test_acc": test["acc"]}
    if recalibrate:
        recalibrate_bn(model, sets.train, max_batches=recal_batches)
        train, test = score(model, sets.train, loss_fn=loss_fn), score(model, sets.test, loss_fn=loss_fn)
        row |= {"eval_train_loss_recal": train["loss"], "eval_train_acc_recal": train["acc"]}
        row |= {"test_loss_recal": test["loss"], "test_acc_recal": test["acc"]}
    return row


# ------------------------------------------------------------------------------------------------ geometry
@torch.no_grad()
def load_point(
    model: nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor] | None = None, t: float = 0.0
) -> None:
    """Load ``(1−t)·a + t·b`` (or ``a`` alone) into ``model``'s tensors, in place.

    ``t == 0`` and ``t == 1`` copy ``a`` and ``b`` exactly, so the ends of an interpolation are the points
    themselves bit for bit. Integer buffers (``num_batches_tracked``) are taken from the nearer end.
    """
    own = model.state_dict()
    unexpected = sorted(set(a) - set(own))
    if unexpected:
        raise RunDirectoryError(f"a point holds tensors the model does not have: {unexpected[:5]}")
    for name, dst in own.items():
        if name not in a:
            continue  # a tied alias written once (transformers); it shares storage with its canonical tensor
        if b is None or t == 0.0:
            src = a[name]
        elif t == 1.0 or not dst.is_floating_point():
            src = b[name] if t >= 0.5 else a[name]
        else:
            src = torch.lerp(a[name].to(dst.dtype), b[name].to(dst.dtype), t)
        dst.copy_(src)


def param_names(model: nn.Module) -> list[str]:
    """Names of the model's floating parameters (tied ones once): what path length and distances cover."""
    return [n for n, p in model.named_parameters() if p.is_floating_point()]


def l2_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: Sequence[str]) -> float:
    """Euclidean distance between two points over the tensors ``names`` (float64 accumulation)."""
    total = 0.0
    for n in names:
        d = b[n].double() - a[n].double()
        total += float(torch.dot(d.reshape(-1), d.reshape(-1)))
    return math.sqrt(total)


def positions(steps: Sequence[float]) -> list[float]:
    """Normalised positions t_i in [0, 1] from the L2 steps between consecutive points.

    t_i = (sum of the first i steps) / (sum of all steps); a path that does not move (all steps 0) is spaced
    evenly, t_i = i/(N−1).
    """
    cumulative = [0.0]
    for s in steps:
        cumulative.append(cumulative[-1] + s)
    total, n = cumulative[-1], len(cumulative)
    if total <= 0.0:
        return [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    return [c / total for c in cumulative[:-1]] + [1.0]


# ------------------------------------------------------------------------------------------------ summaries
def _chord(loss_a: float, loss_b: float, t: float) -> float:
    # The straight line between the end losses, written so that t=0 and t=1 give loss_a and loss_b exactly
    # (and equal end losses give that loss exactly for every t), like torch.lerp.
    return loss_a + t * (loss_b - loss_a) if t < 0.5 else loss_b - (1.0 - t) * (loss_b - loss_a)


def _max(values: Sequence[float]) -> float:
    # NaN propagates: a point whose loss is NaN makes the figure NaN rather than silently skipped.
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def _min(values: Sequence[float]) -> float:
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def barrier(losses: Sequence[float], positions: Sequence[float]) -> float:
    """max_i (loss_i − ((1−t_i)·loss_A + t_i·loss_B)), loss_A = losses[0], loss_B = losses[-1].

    The same formula for an LLPF path (t_i = normalised length) and the linear baseline (t_i = i/(N−1)).
    It is 0 for a path whose loss is constant and never below 0 (the first point contributes 0).

    Raises:
        ConfigError: the two lists differ in length or are empty.
    """
    if len(losses) != len(positions) or not losses:
        raise ConfigError(f"barrier: {len(losses)} losses and {len(positions)} positions; need equal, non-zero")
    la, lb = losses[0], losses[-1]
    return _max([loss - _chord(la, lb, t) for loss, t in zip(losses, positions)])


def summarise(rows: Sequence[dict], positions: Sequence[float], *, suffix: str = "") -> dict[str, Any]:
    """Summary figures of one curve (the path or the linear baseline), one definition each.

    Args:
        rows: one dict per point with ``eval_train_loss{suffix}``, ``eval_train_acc{suffix}``,
            ``test_loss{suffix}``, ``test_acc{suffix}``.
        positions: the normalised position of each row.
        suffix: ``""`` or ``"_recal"``.

    Returns:
        ``max_train_loss``, ``barrier``, ``min_train_acc``, ``test_loss_range`` ([min, max]) and
        ``test_acc_range`` ([min, max]).
    """
    col = {c: [float(r[c + suffix]) for r in rows] for c in EVAL_COLUMNS}
    return {
        "max_train_loss": _max(col["eval_train_loss"]),
        "barrier": barrier(col["eval_train_loss"], positions),
        "min_train_acc": _min(col["eval_train_acc"]),
        "test_loss_range": [_min(col["test_loss"]), _max(col["test_loss"])],
        "test_acc_range": [_min(col["test_acc"]), _max(col["test_acc"])],
    }


# ------------------------------------------------------------------------------------------------ baselines
def linear_interpolation(
    model: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    sets: EvalSets,
    *,
    points: int = 21,
    loss_fn: LossFn | None = None,
    recalibrate: bool = False,
    recal_batches: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[dict]:
    """Evaluate θ(t) = (1−t)·θ_A + t·θ_B at ``points`` evenly spaced t (ends included, exactly θ_A and θ_B).

    BatchNorm running statistics are interpolated like every other tensor; with ``recalibrate`` they are
    also recomputed per point (the ``_recal`` columns).

    Returns:
        One dict per point: ``index``, ``t`` and the columns of :func:`evaluate_point`.
    """
    if points < 2:
        raise ConfigError(f"linear_points={points}: need at least 2 (the two endpoints)")
    rows = []
    rank, world = shard  # this process evaluates every world-th point, starting at rank
    for i in range(rank, points, world):
        t = i / (points - 1)
        load_point(model, state_a, state_b, t)
        rows.append(
            {
                "index": i,
                "t": t,
                **evaluate_point(model, sets, loss_fn=loss_fn, recalibrate=recalibrate, recal_batches=recal_batches),
            }
        )
    return rows


def continuity(
    model: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    batches: Sequence | EvalBatches,
    *,
    k: int = 4,
    loss_fn: LossFn | None = None,
    end_losses: tuple[float, float] | None = None,
) -> list[dict]:
    """Evaluate K interior points s = j/(K+1), j = 1..K, of the straight segment from ``state_a`` to ``state_b``.

    Args:
        model: a model of the architecture (its tensors are overwritten).
        state_a, state_b: the two consecutive points.
        batches: the fixed continuity subset.
        k: interior points per segment.
        loss_fn: the path's loss.
        end_losses: the two points' losses on the same batches; when given, each entry's ``excess`` is its
            loss minus the straight line between them (the segment's own barrier).

    Returns:
        One dict per interior point: ``s``, ``loss``, ``acc`` (and ``excess``).
    """
    model.eval()
    rows = []
    for j in range(1, k + 1):
        s = j / (k + 1)
        load_point(model, state_a, state_b, s)
        row = {"s": s, **score(model, batches, loss_fn=loss_fn)}
        if end_losses is not None:
            row["excess"] = row["loss"] - _chord(*end_losses, s)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ the path
def _resolve_data(path: Path, data: Any) -> DataBundle | dict:
    if isinstance(data, DataBundle) or (isinstance(data, dict) and set(data) == {"train", "test"}):
        return data
    if data is None:
        if not (path.root / "llpf_config.yaml").is_file():
            raise RunDirectoryError(
                f"{str(path.root)!r} has no llpf_config.yaml to say which data the path was built on; pass data="
            )
        data = path.config.get("data")
        if data is None:
            raise ConfigError("llpf_config.yaml has no 'data' section; pass data= (a data spec or DataBundle)")
    if isinstance(data, dict):
        data = build(DataConfig, data)
    return load_data(data)


def _as_path(path_or_run_dir: Path | str | os.PathLike, template: nn.Module | None) -> Path:
    if isinstance(path_or_run_dir, Path):
        if template is not None:
            path_or_run_dir.template = template
        return path_or_run_dir
    return Path(path_or_run_dir, template=template)


def _walk_path(
    path: Path, model: nn.Module, sets: EvalSets, opts: dict, shard: tuple[int, int] = (0, 1)
) -> tuple[list[dict], list[float], list[dict]]:
    """Evaluate saved points and the segments into them, streaming (at most two points' tensors in memory).

    With ``shard = (rank, world)`` this process takes points ``rank, rank + world, ...`` and the segment that
    ends at each; :func:`_gather_walk` puts the processes' parts back in order. Every number is computed the
    same way whichever process owns the point, so a sharded evaluation equals a one-process one.

    Returns:
        ``[(index, row, step into it or None, continuity rows of the segment into it)]`` for this process.
    """
    names = param_names(model)
    rank, world = shard
    items = []
    cont_loss_of: dict[int, float] = {}  # continuity-subset loss of each point, reused for the next segment
    last: tuple[int, dict[str, torch.Tensor]] | None = None
    for i in range(rank, len(path), world):
        cur = path.state_dict_at(i)
        load_point(model, cur)
        row = evaluate_point(
            model, sets, loss_fn=opts["loss_fn"], recalibrate=opts["recal"], recal_batches=opts["recal_batches"]
        )
        if opts["k"] > 0:
            load_point(model, cur)  # undo the recalibration: segments interpolate the saved tensors
            cont_loss_of[i] = score(model, sets.continuity, loss_fn=opts["loss_fn"])["loss"]
        step, seg_rows = None, []
        if i > 0:
            prev = last[1] if last is not None and last[0] == i - 1 else path.state_dict_at(i - 1)
            step = l2_distance(prev, cur, names)
            if opts["k"] > 0:
                if i - 1 not in cont_loss_of:
                    load_point(model, prev)
                    cont_loss_of[i - 1] = score(model, sets.continuity, loss_fn=opts["loss_fn"])["loss"]
                seg = continuity(
                    model,
                    prev,
                    cur,
                    sets.continuity,
                    k=opts["k"],
                    loss_fn=opts["loss_fn"],
                    end_losses=(cont_loss_of[i - 1], cont_loss_of[i]),
                )
                seg_rows = [{"segment": i - 1, "from_index": i - 1, "to_index": i, **r} for r in seg]
        items.append((i, row, step, seg_rows))
        last = (i, cur)
    return items


def _gather_walk(items: list, accelerator: Accelerator) -> tuple[list[dict], list[float], list[dict]]:
    """All processes' :func:`_walk_path` parts, in point order: rows, L2 steps and continuity rows."""
    if accelerator.num_processes > 1:
        # Each process holds whole points (no padded duplicates), so nothing is dropped.
        items = accelerator.gather_for_metrics(items, use_gather_object=True)
    items = sorted(items, key=lambda item: item[0])
    rows = [row for _, row, _, _ in items]
    steps = [step for _, _, step, _ in items if step is not None]
    cont = [r for _, _, _, seg in items for r in seg]
    return rows, steps, cont


def _locate_continuity(cont: list[dict], path: Path, pos: list[float]) -> None:
    ticks = path.ticks
    for r in cont:
        a, b = r["from_index"], r["to_index"]
        r["from_tick"], r["to_tick"] = ticks[a], ticks[b]
        r["position"] = pos[a] + r["s"] * (pos[b] - pos[a])


def _worst_continuity(cont: list[dict]) -> tuple[float | None, dict | None]:
    if not cont:
        return None, None
    nan = [r for r in cont if math.isnan(r["loss"])]
    worst = nan[0] if nan else max(cont, key=lambda r: r["loss"])
    at = {k: worst[k] for k in ("segment", "from_tick", "to_tick", "s", "position", "excess") if k in worst}
    return worst["loss"], at


def evaluate_path(
    path_or_run_dir: Path | str | os.PathLike,
    *,
    data: Any = None,
    train_subset: int | None = None,
    batch_size: int = 256,
    recalibrate_bn: bool = False,
    recal_batches: int | None = None,
    linear_points: int = 21,
    continuity_k: int = 4,
    continuity_subset: int = 512,
    loss_fn: LossFn | None = None,
    seed: int = 0,
    write: bool = True,
    report: bool = True,
    template: nn.Module | None = None,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Evaluate a path's saved points, its segments and the linear baseline; write the results back.

    Args:
        path_or_run_dir: a run directory or a :class:`~hf_llpf.path.Path`.
        data: a :class:`~hf_llpf.data.DataBundle`, a data spec, a ``DataConfig`` (default: the run's
            ``llpf_config.yaml`` ``data``), or ``{"train": batches, "test": batches}`` of your own re-iterable
            batches (a path built from a ``DataLoader`` records no data spec: pass its data this way).
        train_subset: number of training examples, a fixed seeded subset (``None``: the whole training set).
        batch_size: evaluation batch size.
        recalibrate_bn: also report every figure after BatchNorm recalibration (``*_recal`` columns).
        recal_batches: batches of the training subset used per recalibration (``None``: all of them).
        linear_points: points of the linear baseline, ends included.
        continuity_k: interior points per segment between consecutive points (0: no continuity check).
        continuity_subset: training examples used by the continuity check (part of the training subset).
        loss_fn: the path's loss ``loss_fn(model, batch) -> scalar`` (default: cross-entropy, or the model's
            ``outputs.loss`` for dict batches).
        seed: seed of the fixed subsets.
        write: write the columns, ``linear``, ``continuity`` and ``summary`` into ``path_metrics.json``/``.csv``.
        report: with ``write``, also draw ``plots/*.png`` and update the report section of ``README.md``.
        template: a module of the path's architecture, for paths of plain ``nn.Module`` s.
        accelerator: decides the device (default: a new ``Accelerator``; the GPU when there is one).

    Returns:
        ``{"points": [...], "linear": [...], "continuity": [...], "summary": {...}}``: the rows written (each
        point's row holds its metrics and the evaluation columns, plus ``position``).

    Raises:
        RunDirectoryError: not a run directory, or no data recorded and none given.
        ConfigError: invalid settings (empty subset, fewer than 2 linear points, negative K, ...).
    """
    problems = _check_options(train_subset, batch_size, linear_points, continuity_k, continuity_subset)
    if problems:
        raise ConfigError(problems)
    start = time.perf_counter()
    path = _as_path(path_or_run_dir, template)
    path.validate()  # a damaged metadata file is refused before anything is computed or written
    if len(path) == 0:
        raise RunDirectoryError(f"{str(path.root)!r} holds no saved point to evaluate")
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    bundle = _resolve_data(path, data)
    if isinstance(bundle, DataBundle):
        sets = make_eval_sets(
            bundle,
            train_subset=train_subset,
            continuity_subset=continuity_subset,
            batch_size=batch_size,
            seed=seed,
            device=accelerator.device,
        )
    else:  # the caller's own batches: used as given (train_subset and seed do not apply)
        dev = accelerator.device
        sets = EvalSets(
            BatchSource(bundle["train"], device=dev),
            BatchSource(bundle["test"], device=dev),
            BatchSource(bundle["train"], device=dev, limit=continuity_subset),
        )
    model = path.model_at(0).to(accelerator.device).eval()
    opts = {"loss_fn": loss_fn, "recal": recalibrate_bn, "recal_batches": recal_batches, "k": continuity_k}

    shard = (accelerator.process_index, accelerator.num_processes)
    rows, steps, cont = _gather_walk(_walk_path(path, model, sets, opts, shard), accelerator)
    pos = positions(steps)
    _locate_continuity(cont, path, pos)
    state_a, state_b = path.state_dict_at(0), path.state_dict_at(-1)
    straight = l2_distance(state_a, state_b, param_names(model))
    linear = linear_interpolation(
        model,
        state_a,
        state_b,
        sets,
        points=linear_points,
        loss_fn=loss_fn,
        recalibrate=recalibrate_bn,
        recal_batches=recal_batches,
        shard=shard,
    )
    if accelerator.num_processes > 1:
        linear = sorted(accelerator.gather_for_metrics(linear, use_gather_object=True), key=lambda r: r["index"])
    del state_a, state_b

    points = [{**m, **r, "position": t} for m, r, t in zip(path.metrics, rows, pos)]
    summary = _summary(points, linear, cont, pos, recalibrate_bn, path_length=sum(steps), straight=straight)
    summary["evaluation"] = {
        "train_examples": sets.train.num_examples,
        "test_examples": sets.test.num_examples,
        "continuity_examples": sets.continuity.num_examples,
        "train_subset": train_subset,
        "batch_size": batch_size,
        "recalibrate_bn": recalibrate_bn,
        "recal_batches": recal_batches,
        "linear_points": linear_points,
        "continuity_k": continuity_k,
        "seed": seed,
        "loss": "custom loss_fn" if loss_fn is not None else "default (cross-entropy / outputs.loss)",
        "seconds": round(time.perf_counter() - start, 3),
    }
    result = {"points": points, "linear": linear, "continuity": cont, "summary": summary}
    if write and accelerator.is_main_process:
        write_results(path.root, result)
        if report:
            from hf_llpf.plots import plot_path
            from hf_llpf.report import write_report

            plot_path(path.root, template=template)
            write_report(path.root)
    return result


def _check_options(train_subset, batch_size, linear_points, continuity_k, continuity_subset) -> list[str]:
    problems = []
    if train_subset is not None and train_subset < 1:
        problems.append(f"train_subset={train_subset!r}: must be a positive number of examples or None (all)")
    if batch_size < 1:
        problems.append(f"batch_size={batch_size!r}: must be a positive integer")
    if linear_points < 2:
        problems.append(f"linear_points={linear_points!r}: must be at least 2 (the two endpoints)")
    if continuity_k < 0:
        problems.append(f"continuity_k={continuity_k!r}: must be 0 (no check) or a positive integer")
    if continuity_subset < 1:
        problems.append(f"continuity_subset={continuity_subset!r}: must be a positive number of examples")
    return problems


def _summary(points, linear, cont, pos, recal: bool, *, path_length: float, straight: float) -> dict[str, Any]:
    lin_pos = [r["t"] for r in linear]
    worst, at = _worst_continuity(cont)
    summary = {
        "llpf": {
            **summarise(points, pos),
            "path_length": path_length,
            "straight_distance": straight,
            "worst_continuity_loss": worst,
            "worst_continuity_at": at,
        },
        "linear": summarise(linear, lin_pos),
    }
    if recal:
        summary["llpf_recal"] = summarise(points, pos, suffix=RECAL)
        summary["linear_recal"] = summarise(linear, lin_pos, suffix=RECAL)
    return summary


def write_results(root: str | os.PathLike, result: dict[str, Any]) -> None:
    """Merge ``result`` into ``root/path_metrics.json`` (other keys kept; summary merged) and rewrite the CSV."""
    root = FsPath(root)
    existing = read_metrics(root) if (root / METRICS_JSON).is_file() else {}
    merged = {
        **existing,
        "points": result["points"],
        "linear": result["linear"],
        "continuity": result["continuity"],
        "summary": {**existing.get("summary", {}), **result["summary"]},
    }
    atomic_write_text(root / METRICS_JSON, json.dumps(merged, indent=2) + "\n")
    atomic_write_text(root / METRICS_CSV, points_to_csv(result["points"]))


__all__ = [
    "EVAL_COLUMNS",
    "BatchSource",
    "EvalBatches",
    "EvalSets",
    "barrier",
    "continuity",
    "evaluate_path",
    "evaluate_point",
    "l2_distance",
    "linear_interpolation",
    "load_point",
    "make_eval_sets",
    "param_names",
    "positions",
    "recalibrate_bn",
    "score",
    "summarise",
    "write_results",
]
