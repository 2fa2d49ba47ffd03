"""LLPF_M2M with the working model sharded by PyTorch's FSDP2 (``sharding: fsdp``; docs/distributed.md, "Models
larger than one device").

Each process holds 1/N of every parameter of the working model (``fully_shard`` on its repeated blocks, then on the
root) and only its own rows of θ_B; the tick's per-tensor maths runs on those rows through :mod:`hf_llpf.sharding`
(only float64 scalars travel), the repair SGD runs on the sharded model (FSDP2 averages the gradients, the loss is
averaged over the processes as under data parallelism), the divergence guard keeps each process's own shards, and
the main process writes each point one tensor at a time, gathered only for its turn.

The certificate's probes run on the sharded model, every process making the same passes (they are averaged over the
processes). The cross-sphere path (M2O, then this) is :mod:`hf_llpf.algorithms.sharded_m2o`. What is not supported
yet is refused up front by :func:`check_sharding`, never run another way.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_llpf.algorithms.base import Context, RunRecorder, RunSetup
from hf_llpf.algorithms.guard import check_in_sync
from hf_llpf.algorithms.m2m import M2M
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError
from hf_llpf.models.endpoints import Endpoint
from hf_llpf.models.weights import usual_permissions
from hf_llpf.run import point_name, sharded_state
from hf_llpf.run.layout import CHECKPOINT_DIR
from hf_llpf.run.rundir import atomic_write_text
from hf_llpf.sharding import local_parts, row_range, stored_names, write_weights_from_shards
from hf_llpf.sharding.rows import repeated_blocks, shard_model

__all__ = ["SHARDED_METHODS", "ShardedM2M", "ShardedRecorder", "ShardedState", "check_sharding", "repeated_blocks",
           "shard_model"]  # fmt: skip

# The methods a sharded connect runs (``auto`` chooses m2m or cross-sphere by the sphere check under sharding: fsdp;
# the straight line, the walk to the origin alone and the curves run unsharded).
SHARDED_METHODS = ("auto", "m2m", "cross-sphere")


def check_sharding(config: ConnectConfig, accelerator: Any, *, exist: str = "error") -> None:
    """Refuse ``sharding: fsdp`` where it does not run, and the settings it does not support yet (``exist``: kept for
    the callers; a ``--resume`` is checked against the checkpoint's number of processes when it is read).

    Raises:
        ConfigError: every problem at once, each naming the setting, its value and what is allowed.
    """
    if config.sharding != "fsdp":
        return
    problems = []
    dist = torch.distributed
    grouped = dist.is_available() and dist.is_initialized()
    if not grouped:  # one process in a group (torchrun --nproc_per_node 1) runs the sharded code path: allowed
        problems.append(
            f"devices.sharding='fsdp': this run has {accelerator.num_processes} process(es) and no process group; "
            "allowed: processes started by torchrun (torchrun --standalone --nproc_per_node 2 -m hf_llpf.cli "
            "connect ...; --nproc_per_node 1 runs the sharded code path in one process), or devices.sharding='none'"
        )
    if config.method not in SHARDED_METHODS:
        allowed = ", ".join(repr(m) for m in SHARDED_METHODS)
        problems.append(f"method={config.method!r} under sharding='fsdp': allowed: {allowed}")
    if config.mixed_precision not in ("auto", "no"):
        problems.append(f"mixed_precision={config.mixed_precision!r} under sharding='fsdp': allowed: 'no'")
    if config.point_dtype != "auto":
        problems.append(f"point_dtype={config.point_dtype!r} under sharding='fsdp': allowed: 'auto'")
    if problems:
        raise ConfigError(problems)


def stored_tensors(model: nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """The state dict a point stores: a transformers model's tied weights once (the first name, as
    ``save_pretrained`` keeps ``transformer.wte.weight`` of GPT-2; ``from_pretrained`` re-ties), every name for the
    other kinds (as :func:`hf_llpf.models.endpoints.save_model` writes them)."""
    state = model.state_dict(keep_vars=True)
    if kind != "transformers":
        return dict(state)
    seen: set[int] = set()
    out = {}
    for name, t in state.items():
        if id(t) not in seen:
            out[name] = t
            seen.add(id(t))
    return out


def _write_companions(directory: Path, endpoint: Endpoint, *, keep_auto_map: bool) -> None:
    """The files besides the weights that the unsharded writer puts in a point of ``endpoint``'s kind."""
    model = endpoint.model
    if endpoint.kind == "transformers":
        config = copy.deepcopy(model.config)
        config.architectures = [type(model).__name__]
        config.save_pretrained(directory)
        generation = getattr(model, "generation_config", None)
        if generation is not None and model.can_generate():
            generation.save_pretrained(directory)
        if not keep_auto_map:
            from hf_llpf.models.remote_code import strip_file

            strip_file(directory / "config.json")
    elif endpoint.kind == "timm":
        from hf_llpf.models.timm_config import write_timm_config

        write_timm_config(model, directory, endpoint.arch)


def _dtensor_class() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without DTensors holds none
        return None
    return DTensor


def local_state(obj: Any) -> Any:
    """``obj`` (a nested state of dicts, lists, tuples and tensors) with every DTensor in it replaced by this
    process's part of it: what a process writes to a sharded checkpoint."""
    dtensor = _dtensor_class()
    if dtensor is not None and isinstance(obj, dtensor):
        return obj.to_local()
    if isinstance(obj, dict):
        return {k: local_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(local_state(v) for v in obj)
    return obj


def _as_like(local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``local`` (this process's part, as read from its checkpoint) as a DTensor laid out as ``like``; ``local``
    itself where ``like`` is held whole."""
    dtensor = _dtensor_class()
    if dtensor is None or not isinstance(like, dtensor):
        return local
    return dtensor.from_local(local.to(like.device), like.device_mesh, like.placements, run_check=False,
                              shape=like.shape, stride=like.stride())  # fmt: skip


class ShardedRecorder(RunRecorder):
    """Writes each point from the shards (:func:`hf_llpf.sharding.write_weights_from_shards`): every process takes
    part in each tensor's gather, the main process alone writes; each checkpoint is written by every process, its own
    shards (:meth:`checkpoint`)."""

    def point(self, tick: int, model: nn.Module) -> str:
        rel = point_name(tick)
        store, root = self.points_writer.storage, self.points_writer.root
        tensors = stored_tensors(model, self.endpoint.kind)
        if root is None:  # not the main process: its part in every gather, nothing written
            write_weights_from_shards(tensors, rel, dtype=store.dtype, max_shard_size=store.max_shard_size,
                                      writer=False)  # fmt: skip
            return rel

        def save(tmp: Path) -> None:
            write_weights_from_shards(tensors, tmp, dtype=store.dtype, max_shard_size=store.max_shard_size,
                                      writer=True)  # fmt: skip
            _write_companions(tmp, self.endpoint, keep_auto_map=store.keep_auto_map)
            usual_permissions(tmp)

        return self.points_writer.write_point_with(tick, save)

    def checkpoint(self) -> None:
        """Every process writes its own shards of the run's state, the main process the state file naming them
        (:mod:`hf_llpf.run.sharded_state`); no process gathers the model for it."""
        if self.state is None:
            return
        state = self.state()
        extra = getattr(self.writer, "checkpoint_extra", None)  # (set on every process's writer)
        if extra is not None:
            state = {**state, **extra()}
        root = self.writer.root
        sharded_state.save(None if root is None else root / CHECKPOINT_DIR, state, write_text=atomic_write_text)


class ShardedState:
    """What a method on a model sharded by FSDP2 checkpoints: its state with this process's parts of the sharded
    tensors (the working model's, the SGD momentum's), put back into the shards as they were laid out on a resume (the
    same number of processes: :func:`hf_llpf.run.sharded_state.load`). A mixin before the method's class."""

    def state_dict(self) -> dict[str, Any]:
        """As the method's, with this process's parts of the sharded tensors."""
        state = super().state_dict()
        return {**state, "model": local_state(state["model"]), "trainer": local_state(state["trainer"])}

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Continue from this process's :meth:`state_dict`: its parts go back into the model's and the momentum's
        shards (each optimizer parameter group's state by its parameter's layout)."""
        live = self.model.state_dict()
        model = {k: _as_like(v, live[k]) if k in live else v for k, v in ckpt["model"].items()}
        params = [p for group in self.trainer.optimizer.param_groups for p in group["params"]]
        saved = ckpt["trainer"]["optimizer"]
        opt_state = {
            i: {k: _as_like(v, params[i]) if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in s.items()}
            for i, s in saved["state"].items()
        }
        trainer = {**ckpt["trainer"], "optimizer": {**saved, "state": opt_state}}
        super().load_state_dict({**ckpt, "model": model, "trainer": trainer})


class ShardedM2M(ShardedState, M2M):
    """:class:`~hf_llpf.algorithms.m2m.M2M` on a model sharded by FSDP2; θ_B held as this process's rows only."""

    @classmethod
    def for_run(cls, run: RunSetup) -> ShardedM2M:
        """A copy of θ_A sharded over the processes, walking to θ_B; points in θ_A's format. Endpoints read by rows
        (:mod:`hf_llpf.sharding.rows`): the sharded model the preparation built, holding θ_A's rows."""
        model = getattr(run.ea, "work", None)
        if model is not None:
            run.ea.work, run.ea.rows = None, {}  # the run's now; its start is a copy of its shards (M2M)
        else:
            model = copy.deepcopy(run.ea.model).to(run.device)
            shard_model(model, run.device)
        ctx = Context(model, run.make_trainer(model, sharded=True), run.plan, run.config, progress=run.progress,
                      certifier=run.certifier)  # fmt: skip
        method = cls(ctx, run.eb)
        method.recorder = ShardedRecorder(run.writer, run.ea, state=method.run_state)
        return method

    def _targets(self, target: Endpoint, device: torch.device) -> tuple[dict, list[torch.Tensor]]:
        """θ_B's buffers whole (every process holds the model's buffers whole) and, per parameter, this process's
        rows of it (the rows FSDP2 gave the model's own parameter), sliced from the loaded endpoint, or as read from
        its files (:mod:`hf_llpf.sharding.rows`)."""
        if getattr(target, "rows", None):
            return self._targets_from_rows(target, device)
        b_state = target.model.state_dict()
        buffers = {n for n, _ in self.model.named_buffers()}
        final = {k: v.detach().clone() for k, v in b_state.items() if k in buffers}
        parts, sharded, _ = local_parts(self.params)
        rows = []
        for n, p, s in zip(self.names, self.params, sharded, strict=True):
            whole = b_state[n].detach()
            if s:
                start, stop = row_range(p.shape[0], rank=p.device_mesh.get_local_rank(), world=p.device_mesh.size())
                whole = whole[start:stop]
            rows.append(whole.clone().to(device))
        return final, rows

    def _targets_from_rows(self, target: Endpoint, device: torch.device) -> tuple[dict, list[torch.Tensor]]:
        """As :meth:`_targets`, from this process's rows of θ_B read in the preparation (then dropped there)."""
        rows, target.rows = target.rows, {}
        stored = stored_names(self.model, rows)
        buffers = {n for n, _ in self.model.named_buffers()}
        final = {k: v.to(device) for k, v in rows.items() if k in buffers}
        return final, [rows[stored[n]].to(device) for n in self.names]

    def release(self) -> None:
        """Also drop this process's copies of θ_B's rows and buffers and of the start's rows: the moves, the
        distances and the snap onto θ_B are over."""
        super().release()
        self.target, self.final_state, self.start = [], {}, []

    def _snap_to_b(self, device: torch.device) -> None:
        """Each process copies its rows of θ_B into its shards, and θ_B's buffers into the model's."""
        parts, _, _ = local_parts(self.params)
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            torch._foreach_copy_(parts, self.target)
            for k, v in self.final_state.items():
                buffers[k].copy_(v.to(device))

    def _verify_end(self) -> None:
        parts, _, _ = local_parts(self.params)
        buffers = dict(self.model.named_buffers())
        held = {**dict(zip(self.names, parts)), **{k: buffers[k] for k in self.final_state}}
        wanted = {**dict(zip(self.names, self.target)), **self.final_state}
        for k, v in wanted.items():
            if not torch.equal(held[k].cpu(), v.cpu()):
                raise RuntimeError(f"internal error: the last point differs from θ_B at {k!r}")

    def _check_in_sync(self, *, where: str) -> None:
        """What every process must hold alike: the tensors held whole (buffers, parameters outside every FSDP2
        unit) and the per-tensor distances; each process's shards are its own, so whole checksums would differ."""
        parts, sharded, _ = local_parts(self.params)
        whole = [p for p, s in zip(parts, sharded, strict=True) if not s]
        whole += [b for _, b in self.model.named_buffers() if b.is_floating_point()]
        check_in_sync(self.trainer.accelerator, [*whole, self.last_dist.to(torch.float64)], where=where)
