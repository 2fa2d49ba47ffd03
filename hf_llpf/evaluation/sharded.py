"""Evaluating a path with the model sharded over the processes (``sharding="fsdp"``; docs/distributed.md, "Models
larger than one device").

Each process holds 1/N of every parameter of one model of the path's architecture, built with its parameters on the
meta device and sharded by FSDP2 as a sharded connect builds its working model
(:func:`~hf_llpf.sharding.rows.sharded_copy`), and reads only its own rows of each point from the point's
safetensors files (:func:`~hf_llpf.sharding.rows.checked_point_rows`); a point between two points (the
continuity check's, the linear baseline's) is interpolated row by row, with the unsharded rule
(:func:`~hf_llpf.evaluation.interpolation.between`). No process holds a whole point.

Every process walks every point. Each scores its share of the batches (every N-th batch) and the sums (loss × batch
size, examples, correct predictions, predictions counted) are added over the processes in rank order, so every
process gets the same means, the unsharded ones up to the order of the additions. FSDP2 gathers each unit's
parameters for every forward pass, a collective: a process with fewer batches makes the passes it lacks on a batch
it holds, uncounted. BatchNorm recalibration runs every recalibration batch in every process (the statistics are
those of the unsharded recalibration; that part is not split).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from hf_llpf.batches import LossFn, default_loss
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.interpolation import PointModel, State, between, param_names
from hf_llpf.evaluation.scoring import Sums, score_sums
from hf_llpf.sharding import local_parts, shards_like, stored_names, total_distance
from hf_llpf.sharding.collectives import sum_scalars
from hf_llpf.sharding.rows import RowsEndpoint, checked_point_rows, load_rows, load_structure, reshard, sharded_copy

SHARDINGS = ("none", "fsdp")

__all__ = ["SHARDINGS", "ShardedPointModel", "check_sharded_evaluation", "sharded_point_model"]


def check_sharded_evaluation(sharding: Any, accelerator: Any) -> None:
    """Refuse a ``sharding`` that is not one of :data:`SHARDINGS`, and ``"fsdp"`` where it cannot run.

    Raises:
        ConfigError: naming the setting, its value and what is allowed.
    """
    if sharding not in SHARDINGS:
        raise ConfigError(
            f"sharding={sharding!r}: allowed: 'none' (every process holds the whole model) or 'fsdp' (each process "
            "holds 1/N of every parameter)"
        )
    dist = torch.distributed
    grouped = dist.is_available() and dist.is_initialized()
    if sharding == "fsdp" and not grouped:  # one process in a group (torchrun --nproc_per_node 1): allowed, as connect
        raise ConfigError(
            f"sharding='fsdp': this evaluation has {accelerator.num_processes} process(es) and no process group; "
            "allowed: processes started by torchrun (torchrun --standalone --nproc_per_node 2 -m hf_llpf.cli evaluate "
            "RUN --sharding fsdp; --nproc_per_node 1 runs the sharded code path in one process), or sharding='none'"
        )


def _structure(path: Any) -> nn.Module:
    """A model of ``path``'s architecture with its parameters on the meta device: the template's copy, or built from
    point 0's ``config.json`` as a sharded connect builds an endpoint's (:func:`load_structure`).

    Raises:
        ConfigError: point 0 is not a timm or transformers folder with a ``config.json`` and no template is given.
    """
    if path.template is not None:
        # The copy's parameters are empty ones on meta (the memo stands in for them; ties stay ties): no process
        # copies the template's weights.
        memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
                for p in path.template.parameters()}  # fmt: skip
        return copy.deepcopy(path.template, memo).eval()
    folder = path.checked_point_dir(0)
    endpoint = load_structure(folder) if (folder / "config.json").is_file() else None
    if not isinstance(endpoint, RowsEndpoint):
        raise ConfigError(
            f"sharding='fsdp': point 0 ({folder}) is not a timm or transformers model folder (config.json and "
            "safetensors weights) of a class this route builds without its weights; allowed: such points, a template "
            "(template=, for paths of plain modules), or sharding='none'"
        )
    model, dtype = endpoint.model, path.endpoint_dtype
    if dtype is not None and any(p.dtype != dtype for p in model.parameters() if p.is_floating_point()):
        model = model.to(dtype)  # judged in the endpoints' dtype, as the unsharded evaluation loads the points
    return model


def sharded_point_model(path: Any, device: torch.device) -> ShardedPointModel:
    """The sharded model ``path`` (a :class:`~hf_llpf.run.RunPath`) is evaluated in, on ``device``, in eval mode.

    Raises:
        ConfigError: as :func:`_structure`.
    """
    return ShardedPointModel(sharded_copy(_structure(path), device).eval(), device)


class _Share:
    """Every N-th batch of ``batches`` from the ``rank``-th: this process's share. Once iterated, ``missing`` is how
    many forward passes fewer than the process with the most it made, and ``spare`` a batch to make them with."""

    def __init__(self, batches: Iterable, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world
        self.missing, self.spare = 0, None

    def __iter__(self) -> Iterator[Any]:
        total = 0
        for j, batch in enumerate(self.batches):
            if j == 0:
                self.spare = batch
            total = j + 1
            if j % self.world == self.rank:
                yield batch
        self.missing = -(-total // self.world) - len(range(self.rank, total, self.world))


class ShardedPointModel(PointModel):
    """A :class:`~hf_llpf.evaluation.interpolation.PointModel` holding each process's rows of the points in a model
    sharded by FSDP2; every call is collective (every process makes it, in the same order).

    Args:
        work: the sharded model (:func:`sharded_point_model`).
        device: its device (where the merged sums travel).
    """

    def __init__(self, work: nn.Module, device: torch.device):
        super().__init__(work)
        self.device = device
        self.names = param_names(work)
        self.group = local_parts(list(work.parameters()))[2]

    def read(self, path: Any, i: int) -> State:
        """This process's rows of point ``i`` (buffers whole), checked finite over every process."""
        return checked_point_rows(path, i, self.model)

    def load(self, a: State, b: State | None = None, t: float = 0.0) -> None:
        """Load the rows of ``(1−t)·a + t·b`` (or ``a``) into this process's shards and the buffers."""
        load_rows(self.model, {n: between(v, None if b is None else b[n], t, v.dtype) for n, v in a.items()})

    @torch.no_grad()
    def score(self, batches: Iterable, *, loss_fn: LossFn | None = None) -> dict[str, float]:
        """Mean loss and accuracy over all of ``batches``, this process scoring its share (the sums merged)."""
        share = _Share(batches, self.group.rank, self.group.world)
        sums = score_sums(self.model, share, loss_fn=loss_fn)
        for _ in range(share.missing):  # the passes the other processes make: FSDP2's gathers are collective
            (loss_fn or default_loss)(self.model, share.spare)
        total = sum_scalars(torch.tensor(list(sums), dtype=torch.float64, device=self.device), self.group)
        return Sums(float(total[0]), int(total[1]), int(total[2]), int(total[3])).result()

    def tensors(self, rows: State) -> list[torch.Tensor]:
        """The rows of the floating parameters (:attr:`names`, in order) as DTensors laid out as the model's, for the
        functions of :mod:`hf_llpf.sharding` (collective over the processes)."""
        reshard(self.model)  # after a forward pass the root unit holds its parameters whole, not as DTensors
        params = dict(self.model.named_parameters())
        stored = stored_names(self.model, rows)
        return shards_like([params[n] for n in self.names], [rows[stored[n]] for n in self.names])

    def step(self, a: State, b: State) -> float:
        """The L2 distance between two points over the floating parameters: each process's rows' sums of squares
        added over the processes (:func:`hf_llpf.sharding.total_distance`)."""
        return total_distance(self.tensors(a), self.tensors(b), dtype=torch.float64)
