"""Eval-mode BatchNorm folded into the convolution that feeds it, for the eval view's passes.

In eval mode a ``BatchNorm2d`` with running statistics is an affine map per channel, so a ``Conv2d`` whose only
consumer it is can absorb it: ``w' = w·γ/√(σ²+ε)``, ``b' = (b - μ)·γ/√(σ²+ε) + β`` (PyTorch's
:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`). The pass then skips the BatchNorm's read and write of the
whole activation, which is where a channels-last pass spends much of its time (``python -m benchmarks speed
layout``; docs/benchmarks.md); the loss changes by rounding only.

The pairs are found on the model's traced graph (:func:`torch.fx.symbolic_trace`), never guessed from module
order: only a convolution called once, with a weight of its own, whose output goes to a BatchNorm and nowhere else,
is folded (exactly ``nn.Conv2d`` and ``nn.BatchNorm2d``: subclasses may compute otherwise). A model
that does not trace keeps its BatchNorm layers. The folded weights are recomputed from the model's own tensors
before every pass (:meth:`Fold.load`), since the model moves between passes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights


@dataclass
class Fold:
    """One BatchNorm folded into its convolution: where the model keeps the two, where the view's fused
    weight and bias live."""

    conv: str  # qualified module names in the model
    bn: str
    eps: float
    weight: torch.Tensor = field(repr=False)  # the view's fused tensors (written by load)
    bias: torch.Tensor = field(repr=False)

    def owns(self, key: str) -> bool:
        """Whether the model's state entry ``key`` is read by this fold (not copied as it is)."""
        return key.startswith((f"{self.conv}.", f"{self.bn}."))

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Recompute the fused weight and bias from the model's state (``model.state_dict()``)."""
        c, b = f"{self.conv}.", f"{self.bn}."
        weight, bias = fuse_conv_bn_weights(
            state[c + "weight"], state.get(c + "bias"), state[b + "running_mean"], state[b + "running_var"],
            self.eps, state.get(b + "weight"), state.get(b + "bias"),
        )  # fmt: skip
        self.weight.copy_(weight)
        self.bias.copy_(bias)


def fold_batchnorm(view: nn.Module) -> tuple[nn.Module, list[Fold]]:
    """``view`` (an eval-mode copy the caller owns) as a traced module with its foldable BatchNorm layers
    removed, and the folds whose weights must be loaded before a pass; ``(view, [])`` when nothing folds.

    The view's folded convolutions are changed in place (they gain a bias when they had none).
    """
    try:
        traced = fx.symbolic_trace(view)
    except Exception:  # control flow on tensors, unsupported calls: the view keeps its BatchNorm layers
        return view, []
    modules = dict(traced.named_modules())
    calls = Counter(node.target for node in traced.graph.nodes if node.op == "call_module")
    # A weight another module shares would see the fused values too: count every reference.
    calls.update(f"param:{id(p)}" for _, p in traced.named_parameters(remove_duplicate=False))
    folds = []
    for node in list(traced.graph.nodes):
        source = _foldable_source(node, modules, calls)
        if source is None:
            continue
        conv, bn = modules[source.target], modules[node.target]
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros_like(conv.weight[:, 0, 0, 0]))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
        folds.append(Fold(source.target, node.target, bn.eps, conv.weight, conv.bias))
    if not folds:
        return view, []
    traced.graph.lint()
    traced.recompile()
    traced.delete_all_unused_submodules()
    return traced, folds


def _foldable_source(node: fx.Node, modules: dict[str, nn.Module], calls: Counter) -> fx.Node | None:
    """The convolution node that BatchNorm ``node`` can be folded into (``None``: not foldable)."""
    if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
        return None
    bn = modules[node.target]
    if not bn.track_running_stats or bn.running_mean is None or calls[node.target] != 1 or len(node.args) != 1:
        return None
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or type(modules[source.target]) is not nn.Conv2d:
        return None
    if len(source.users) != 1 or calls[source.target] != 1 or node.kwargs:
        return None
    if calls[f"param:{id(modules[source.target].weight)}"] != 1:  # tied to another module's weight
        return None
    return source


__all__ = ["Fold", "fold_batchnorm"]
