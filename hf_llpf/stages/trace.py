"""Tracing a model: one forward pass of one example batch, recorded for the stage rules.

Forward hooks on every module that directly owns parameters and has no parameter-owning descendants
("leaf owners") record the order of first calls, the tensor each call reads and the tensor it returns.
Declaration order (``named_modules``) is wrong for ViT and BERT, so it is never used for leaves. Parameters
owned by a container module (ViT ``cls_token``, ``pos_embed``) are never seen by a hook: for them the first
use in a ``torch.export`` graph is recorded, or nothing when export fails.

The result is a :class:`ModelTrace`, plain data that :mod:`hf_llpf.stages.rules` turns into stages without
running the model again.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from hf_llpf.batches import move_batch
from hf_llpf.errors import ConfigError
from hf_llpf.stages.norms import norm_kind
from hf_llpf.stages.plan import CONTAINER_TYPE, ROOT_NAME, LayerGroup

__all__ = ["ModelTrace", "trace_model"]

TensorKey = tuple  # identity of a tensor's contents at one moment (see _key)


@dataclass
class ModelTrace:
    """What one forward pass tells the stage rules; plain data, so the rules can be tested without a model.

    Attributes:
        leaf_groups: leaf owner name -> its layer group, in declaration order. A leaf whose parameters are
            all tied aliases (GPT-2 ``lm_head``) has no group.
        order: leaf owner names in first-call order (leaves that never ran are absent).
        in_key: leaf owner name -> identity of the first tensor its first call read (``None``: no tensor).
        in_int: leaf owner name -> whether that tensor holds integers (token, position, type ids).
        out_owner: tensor identity -> the leaf owner whose call first returned that tensor.
        container_groups: one group per parameter owned by a container module, in declaration order.
        first_use: parameter name -> index of the first ``torch.export`` graph node reading it; ``None`` when
            there are no container groups or export failed.
        declared: canonical parameter names in declaration order (``model.named_parameters()``).
        tied: alias parameter name -> canonical name.
        buffers: buffer names.
    """

    leaf_groups: dict[str, LayerGroup]
    order: list[str]
    in_key: dict[str, TensorKey | None]
    in_int: dict[str, bool]
    out_owner: dict[TensorKey, str]
    container_groups: list[LayerGroup] = field(default_factory=list)
    first_use: dict[str, int] | None = None
    declared: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)
    buffers: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------- calling the model
def _is_label_tensor(x: Any, inputs: Any) -> bool:
    # Class labels: an integer tensor with one entry per sample. A 2-D integer tensor (attention mask,
    # token type ids) is an input, not a label.
    return (
        isinstance(x, Tensor)
        and not x.is_floating_point()
        and not x.is_complex()
        and x.dim() <= 1
        and (not isinstance(inputs, Tensor) or inputs.dim() == 0 or x.numel() == inputs.shape[0])
    )


def _call_spec(batch: Any) -> tuple[tuple, dict]:
    """How to call the model on ``batch``: ``(args, kwargs)`` for ``model(*args, **kwargs)``."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)):
        items = list(batch)
        if len(items) == 2 and _is_label_tensor(items[1], items[0]):
            return _call_spec(items[0])  # (inputs, labels): the labels are not a model input
        return tuple(items), {}
    raise ConfigError(
        f"example_batch: got {type(batch).__name__}; allowed: a Tensor, a tuple/list (inputs[, labels]), "
        "a dict of tensors, or any object together with forward_fn"
    )


def _caller(
    model: nn.Module, example_batch: Any, forward_fn: Callable[[nn.Module, Any], Any] | None
) -> tuple[Callable[..., Any], tuple, dict]:
    """``(call, args, kwargs)``: ``call(model, *args, **kwargs)`` runs the model on the batch, on its device."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    batch = move_batch(example_batch, device)
    if forward_fn is not None:

        def call_fn(m: nn.Module) -> Any:
            return forward_fn(m, batch)

        return call_fn, (), {}
    args, kwargs = _call_spec(batch)

    def call(m: nn.Module, *a: Any, **k: Any) -> Any:
        return m(*a, **k)

    return call, args, kwargs


class _Caller(nn.Module):
    """Wraps the model and the way to call it, so torch.export sees one module with plain inputs."""

    def __init__(self, model: nn.Module, call: Callable[..., Any]):
        super().__init__()
        self.model = model
        self._call = call

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.model, *args, **kwargs)


def _export_first_use(model: nn.Module, call: Callable[..., Any], args: tuple, kwargs: dict) -> dict[str, int]:
    """Parameter name -> index of the first graph node that reads it, from a ``torch.export`` graph."""
    wrapper = _Caller(model, call)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(wrapper, args, kwargs, strict=False)
    to_param = ep.graph_signature.inputs_to_parameters  # placeholder name -> "model.<fqn>"
    first: dict[str, int] = {}
    for i, node in enumerate(ep.graph.nodes):
        if node.op == "placeholder":
            continue
        for inp in node.all_input_nodes:
            fqn = to_param.get(inp.name)
            if fqn is not None:
                first.setdefault(fqn.removeprefix("model."), i)
    return first


# ------------------------------------------------------------------------------------ parameter owners
def _tied(model: nn.Module) -> dict[str, str]:
    """Tied parameters: the same Parameter object under several names; the first name is canonical."""
    canonical: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in canonical:
            tied[name] = canonical[id(p)]
        else:
            canonical[id(p)] = name
    return tied


def _direct_params(module: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    return [(f"{prefix}.{k}" if prefix else k, p) for k, p in module._parameters.items() if p is not None]


def _group(name: str, module_type: str, params: list[tuple[str, nn.Parameter]], norm: str | None) -> LayerGroup:
    return LayerGroup(
        name=name or ROOT_NAME,
        module_type=module_type,
        param_names=tuple(n for n, _ in params),
        norm=norm,
        numel=sum(p.numel() for _, p in params),
    )


def _owns_params(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


def _owners(
    model: nn.Module, tied: Mapping[str, str]
) -> tuple[dict[str, nn.Module], dict[str, LayerGroup], list[LayerGroup]]:
    """Leaf owners (module name -> module), their groups, and one group per container-owned parameter."""
    leaves: dict[str, nn.Module] = {}
    leaf_groups: dict[str, LayerGroup] = {}
    container_groups: list[LayerGroup] = []
    for mname, module in model.named_modules():
        if not _owns_params(module):
            continue
        own = [(n, p) for n, p in _direct_params(module, mname) if n not in tied]
        if any(_owns_params(m) for m in module.modules() if m is not module):
            container_groups.extend(_group(n, CONTAINER_TYPE, [(n, p)], None) for n, p in own)
            continue
        leaves[mname] = module
        if own:  # a module whose parameters are all tied aliases (GPT-2 lm_head) contributes no group
            leaf_groups[mname] = _group(mname, type(module).__name__, own, norm_kind(module))
    return leaves, leaf_groups, container_groups


# ------------------------------------------------------------------------------------------------ hooks
def _first_tensor(obj: Any, depth: int = 0) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if depth > 2:
        return None
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for v in obj:
            t = _first_tensor(v, depth + 1)
            if t is not None:
                return t
    return None


def _key(t: Tensor) -> TensorKey | None:
    """Identity of a tensor's contents at this moment: storage, view geometry and in-place version."""
    try:
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t._version)
    except Exception:  # tensors without storage (meta, some subclasses)
        return None


class _Recorder:
    """Forward hooks that record each leaf owner's first call: what it reads and what it returns."""

    def __init__(self, leaves: Mapping[str, nn.Module]):
        self.leaves = leaves
        self.names = {id(m): n for n, m in leaves.items()}
        self.order: list[str] = []
        self.in_key: dict[str, TensorKey | None] = {}
        self.in_int: dict[str, bool] = {}
        self.out_owner: dict[TensorKey, str] = {}
        # Strong references: a kept tensor's storage cannot be reused by another tensor, so keys stay unique.
        self.keep: list[Tensor] = []
        self.handles: list[Any] = []

    def pre_hook(self, mod: nn.Module, a: tuple, k: dict) -> None:
        name = self.names[id(mod)]
        if name in self.in_key:
            return
        t = _first_tensor((a, k))
        self.order.append(name)
        self.in_key[name] = _key(t) if t is not None else None
        self.in_int[name] = t is not None and not t.is_floating_point() and not t.is_complex()
        if t is not None:
            self.keep.append(t)

    def post_hook(self, mod: nn.Module, a: tuple, k: dict, out: Any) -> None:
        t = _first_tensor(out)
        if t is not None:
            key = _key(t)
            if key is not None:
                self.out_owner.setdefault(key, self.names[id(mod)])
                self.keep.append(t)

    def attach(self) -> None:
        for m in self.leaves.values():
            self.handles.append(m.register_forward_pre_hook(self.pre_hook, with_kwargs=True))
            self.handles.append(m.register_forward_hook(self.post_hook, with_kwargs=True))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.keep.clear()


# -------------------------------------------------------------------------------------------- the trace
def trace_model(
    model: nn.Module, example_batch: Any, *, forward_fn: Callable[[nn.Module, Any], Any] | None = None
) -> ModelTrace:
    """Run ``model`` once on ``example_batch`` and record what the stage rules need.

    The model runs in eval mode under ``torch.no_grad()``; every module's training flag is restored and
    every hook removed afterwards, also on error. ``torch.export`` runs only when some parameter is owned
    by a container module (export is slow); an export failure leaves ``first_use`` at ``None``.

    Args:
        model: any ``nn.Module``.
        example_batch: one batch (see :func:`hf_llpf.stages.build_stages` for how it is passed).
        forward_fn: ``forward_fn(model, batch)`` runs the model instead.

    Returns:
        The trace.

    Raises:
        ConfigError: the batch has an unsupported type.
    """
    tied = _tied(model)
    leaves, leaf_groups, container_groups = _owners(model, tied)
    call, args, kwargs = _caller(model, example_batch, forward_fn)
    recorder = _Recorder(leaves)
    modes = {m: m.training for m in model.modules()}
    first_use: dict[str, int] | None = None
    try:
        recorder.attach()
        model.eval()
        with torch.no_grad():
            call(model, *args, **kwargs)
        recorder.detach()
        if container_groups:  # export is slow: only when hooks cannot place some parameters
            try:
                with torch.no_grad():
                    first_use = _export_first_use(model, call, args, kwargs)
            except Exception:  # export is best effort: any failure falls back to declaration order
                first_use = None
    finally:
        recorder.detach()
        for m, mode in modes.items():
            m.training = mode
    return ModelTrace(
        leaf_groups=leaf_groups,
        order=recorder.order,
        in_key=recorder.in_key,
        in_int=recorder.in_int,
        out_owner=recorder.out_owner,
        container_groups=container_groups,
        first_use=first_use,
        declared=[n for n, _ in model.named_parameters()],
        tied=tied,
        buffers=[n for n, _ in model.named_buffers()],
    )
