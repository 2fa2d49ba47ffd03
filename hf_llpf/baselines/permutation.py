"""Which hidden units of a model can be permuted together, read from its own graph (docs/baselines.md).

A hidden unit is an output channel of a Conv2d/Linear; permuting it permutes that layer's output axis, the
per-channel tensors of the norm layers it feeds, and the input axis of the layers that read it. A residual
addition joins the spaces of its two operands into one (every branch must use the same order); the network's
input and output are fixed. The data flow comes from ``torch.fx`` (one symbolic trace plus shapes from one
example batch): the forward hooks of :mod:`hf_llpf.stages.trace` see which layer feeds which, but not the
additions between them, which decide the spaces of a ResNet.

Only operations known to commute with a channel permutation are allowed on permuted channels (elementwise
activations, pooling, per-channel norms, global means, flattening a 1x1 map, additions, products of matching
shapes); anything else (concatenation, grouped convolutions, attention, flattening a spatial map, ...) makes
the model "not applicable" with the reason, never a guess.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from hf_llpf.errors import NotApplicableError

METHOD = "weight-matching"
FIXED = -1  # the space of the input and the output: never permuted

_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Hardswish, nn.Mish,
    nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_PASS_FUNCTIONS = {
    torch.relu, F.relu, torch.relu_, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.leaky_relu, F.elu,
    F.hardswish, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    torch.max_pool2d, operator.neg, operator.pos,
}  # fmt: skip
_PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "float", "to", "type_as", "detach"}
_BINARY = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, torch.add, torch.mul, torch.sub}
_BINARY_METHODS = {"add", "add_", "mul", "mul_", "sub", "sub_"}
_REDUCE_METHODS = {"mean", "sum", "amax"}
_RESHAPE = {"flatten", "view", "reshape", "squeeze"}


@dataclass
class PermutationSpec:
    """The permutation spaces of a model.

    Attributes:
        spaces: space name -> its size and the ``(tensor name, axis)`` pairs it permutes.
        axes: tensor name -> ``{axis: space name}`` (the inverse view).
    """

    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    axes: dict[str, dict[int, str]] = field(default_factory=dict)


class _Spaces:
    """Union-find over channel spaces; joining a space with FIXED fixes it."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {FIXED: FIXED}

    def new(self) -> int:
        k = len(self.parent)
        self.parent[k] = k
        return k

    def find(self, k: int) -> int:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def join(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb == FIXED:
            ra, rb = rb, ra
        self.parent[rb] = ra  # FIXED stays a root
        return ra


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Reader:
    """Walks the traced graph and assigns a channel space to every tensor-valued node."""

    def __init__(self, gm: fx.GraphModule):
        self.gm, self.uf = gm, _Spaces()
        self.label: dict[fx.Node, int | None] = {}
        self.members: dict[tuple[str, int], int] = {}  # (tensor name, axis) -> space
        self.modules = dict(gm.named_modules())

    def fail(self, node: fx.Node, why: str) -> NotApplicableError:
        return NotApplicableError(METHOD, f"{why} (at graph node {node.name!r}: {node.format_node()[:120]})")

    def member(self, name: str, axis: int, space: int) -> None:
        # A module called twice (shared weights) ties the spaces of its calls together.
        key = (name, axis)
        self.members[key] = self.uf.join(self.members[key], space) if key in self.members else space

    def inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if self.label.get(a) is not None]

    def permuted(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in self.inputs(node) if self.uf.find(self.label[a]) != FIXED]

    def read(self) -> None:
        for node in self.gm.graph.nodes:
            self.label[node] = self.visit(node)

    def visit(self, node: fx.Node) -> int | None:
        if node.op == "placeholder":
            return FIXED
        if node.op == "output":
            for a in self.inputs(node):
                self.uf.join(self.label[a], FIXED)
            return None
        if node.op == "get_attr":
            raise self.fail(node, "a parameter is used outside its module")
        if _shape(node) is None:  # not a tensor (a size, a tuple): carries no channels
            if self.permuted(node) and node.op != "call_method" and node.target not in (getattr, "size"):
                raise self.fail(node, "a non-tensor result computed from permuted channels")
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        return self.visit_op(node)

    def visit_module(self, node: fx.Node, mod: nn.Module) -> int:
        (x,) = node.args[:1] or (None,)
        label = self.label.get(x, FIXED) if isinstance(x, fx.Node) else FIXED
        shape_in = _shape(x)
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                raise self.fail(node, f"grouped convolution (groups={mod.groups})")
            if isinstance(mod, nn.Linear) and (shape_in is None or len(shape_in) != 2):
                raise self.fail(node, f"a Linear layer on a {len(shape_in or ())}-D input (only (batch, features))")
            out = self.uf.new()
            self.member(f"{node.target}.weight", 0, out)
            if mod.bias is not None:
                self.member(f"{node.target}.bias", 0, out)
            self.member(f"{node.target}.weight", 1, label)
            return out
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) or (
            isinstance(mod, nn.LayerNorm) and len(mod.normalized_shape) == 1 and len(shape_in or ()) == 2
        ):
            for name, _ in [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]:
                if name != "num_batches_tracked":
                    self.member(f"{node.target}.{name}", 0, label)
            return label
        if isinstance(mod, nn.Flatten):
            return self.visit_reshape(node, label)
        if isinstance(mod, _PASS_MODULES):
            return label
        if self.uf.find(label) == FIXED and not any(True for _ in mod.parameters()):
            return FIXED
        raise self.fail(node, f"module {type(mod).__name__} is not known to commute with a channel permutation")

    def visit_reshape(self, node: fx.Node, label: int) -> int:
        shape_in, shape_out = _shape(node.all_input_nodes[0]), _shape(node)
        keeps = shape_in is not None and len(shape_in) >= 2 and shape_out[:2] == shape_in[:2]
        if keeps and math.prod(shape_in[2:]) == 1:
            return label
        if self.uf.find(label) == FIXED:
            return FIXED
        raise self.fail(node, f"reshaping {shape_in} to {shape_out} mixes channels with positions")

    def visit_op(self, node: fx.Node) -> int:
        target = node.target
        ins = self.inputs(node)
        permuted = self.permuted(node)
        if not permuted:  # nothing permuted flows in: any operation is safe
            return FIXED
        label = self.label[permuted[0]]
        method = node.op == "call_method"
        if (not method and target in _PASS_FUNCTIONS) or (method and target in _PASS_METHODS):
            return label
        if (not method and target in _BINARY) or (method and target in _BINARY_METHODS):
            shapes = {(_shape(a) or ())[1:2] for a in ins}
            if len(shapes) != 1:
                raise self.fail(node, f"a broadcast across channels {sorted(shapes)}")
            for a in ins:
                label = self.uf.join(label, self.label[a])
            return label
        if method and target in _REDUCE_METHODS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = (dims,) if isinstance(dims, int) else dims
            ndim = len(_shape(permuted[0]))
            if dims is not None and all(isinstance(d, int) and d % ndim not in (0, 1) for d in dims):
                return label
            raise self.fail(node, f"a {target} over the channel axis")
        if method and target in _RESHAPE or (not method and target is torch.flatten):
            return self.visit_reshape(node, label)
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        raise self.fail(node, f"operation {name!r} on permuted channels is not known to commute with a permutation")


def _trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as err:  # any tracing failure: data-dependent control flow, unsupported Python
        raise NotApplicableError(
            METHOD, f"the model's graph cannot be traced ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
        ) from None
    # The GraphModule shares the model's submodules: put every module's mode back as it was afterwards.
    modes = {m: m.training for m in [*model.modules(), *gm.modules()]}
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        for m, mode in modes.items():
            m.training = mode
    return gm


def _inputs_of(example: Any) -> str:
    """What a model is called with, for the refusal of anything but one tensor: a dict's keys name its inputs."""
    if isinstance(example, Mapping):  # transformers models: input_ids, attention_mask, pixel_values, ...
        return f"a dict of inputs ({', '.join(map(str, example))})"
    return f"a {type(example).__name__}"


def permutation_spec(model: nn.Module, example: torch.Tensor) -> PermutationSpec:
    """The permutation spaces of ``model``, from its graph traced on ``example`` (one input batch).

    Raises:
        NotApplicableError: the graph cannot be traced, or holds an operation on permuted channels that is not
            known to commute with a permutation (the message names it and its graph node).
    """
    if not isinstance(example, torch.Tensor):
        raise NotApplicableError(METHOD, f"weight matching supports models called with one tensor (an MLP or a CNN); "
                                 f"this model is called with {_inputs_of(example)}")  # fmt: skip
    reader = _Reader(_trace(model, example))
    reader.read()
    spec = PermutationSpec()
    roots: dict[int, str] = {}
    sizes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for (name, axis), space in reader.members.items():
        root = reader.uf.find(space)
        if root == FIXED:
            continue
        key = roots.setdefault(root, f"P{len(roots)}")
        entry = spec.spaces.setdefault(key, {"size": sizes[name][axis], "tensors": []})
        if sizes[name][axis] != entry["size"]:
            raise NotApplicableError(METHOD, f"{name} axis {axis} has {sizes[name][axis]} units, its space {key} "
                                     f"{entry['size']}")  # fmt: skip
        entry["tensors"].append((name, axis))
        spec.axes.setdefault(name, {})[axis] = key
    if not spec.spaces:
        raise NotApplicableError(METHOD, "the model has no permutable hidden units")
    return spec


__all__ = ["FIXED", "PermutationSpec", "permutation_spec"]
