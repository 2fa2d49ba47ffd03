"""Git Re-Basin weight matching (Ainsworth, Hayase & Srinivasa 2023, Algorithm 1): permute θ_B's hidden
units to match θ_A's, then interpolate linearly (docs/baselines.md).

For each permutation space P (from the model's graph, :mod:`hf_llpf.baselines.permutation`) in turn, the
permutation maximising Σ_ℓ ⟨W_A^ℓ, P W_B^ℓ (other permutations applied)⟩ over the tensors that P touches is
a linear assignment problem (``scipy.optimize.linear_sum_assignment``); spaces are visited in a seeded random
order until no permutation improves. Every tensor of θ_B (parameters and BatchNorm running statistics) is
permuted, so π(θ_B) computes exactly what θ_B computes — up to float rounding — but is a different point in
weight space: the path ends at π(θ_B), and :func:`ends_check` measures how far its outputs are from θ_B's.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hf_llpf.algorithms.linear import lerp_state
from hf_llpf.algorithms.registry import CurveMethod, register
from hf_llpf.baselines.pathdir import PreparedEnds, State
from hf_llpf.baselines.permutation import PermutationSpec, permutation_spec
from hf_llpf.run.inputs import example_batch

Perms = dict[str, torch.Tensor]


def _flat(t: torch.Tensor, axis: int) -> torch.Tensor:
    return t.movedim(axis, 0).reshape(t.shape[axis], -1).double()


def permute_tensor(name: str, t: torch.Tensor, spec: PermutationSpec, perms: Perms, *, skip: str | None = None):
    """``t`` with every axis of a space in ``perms`` permuted (``skip``: leave that space's axis as it is)."""
    for axis, space in spec.axes.get(name, {}).items():
        if space != skip:
            t = t.index_select(axis, perms[space])
    return t


def apply_permutation(state: State, spec: PermutationSpec, perms: Perms) -> State:
    """π(θ): every tensor of ``state`` with its spaces' axes permuted (new unit i is old unit ``perm[i]``)."""
    return {k: permute_tensor(k, v, spec, perms) if k in spec.axes else v.clone() for k, v in state.items()}


def match_weights(
    state_a: State, state_b: State, spec: PermutationSpec, *, max_iter: int = 100, seed: int = 0
) -> tuple[Perms, int]:
    """The permutations of θ_B's hidden units that match θ_A's (weight matching); returns them and the sweeps.

    Only parameters enter the objective (the BatchNorm running statistics follow their channels).
    """
    from scipy.optimize import linear_sum_assignment

    perms = {s: torch.arange(v["size"]) for s, v in spec.spaces.items()}
    names = list(spec.spaces)
    gen = torch.Generator().manual_seed(seed)
    sweeps = 0
    for sweeps in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        improved = False
        for k in torch.randperm(len(names), generator=gen).tolist():
            space = names[k]
            n = spec.spaces[space]["size"]
            cost = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in spec.spaces[space]["tensors"]:
                if "running_" in name:
                    continue
                wb = permute_tensor(name, state_b[name], spec, perms, skip=space)
                cost += _flat(state_a[name], axis) @ _flat(wb, axis).T
            _, cols = linear_sum_assignment(cost.numpy(), maximize=True)
            new = torch.as_tensor(cols, dtype=torch.long)
            old_score = float(cost[torch.arange(n), perms[space]].sum())
            new_score = float(cost[torch.arange(n), new].sum())
            if new_score > old_score + 1e-12 * max(1.0, abs(old_score)):
                perms[space], improved = new, True
        if not improved:
            break
    return perms, sweeps


@torch.no_grad()
def ends_check(model: nn.Module, state_b: State, state_pb: State, inputs: Any) -> dict[str, float]:
    """How far π(θ_B)'s outputs are from θ_B's on ``inputs`` (eval mode): max |Δ logit| and its scale."""
    m = copy.deepcopy(model).eval()
    m.load_state_dict(state_b)
    ref = m(inputs)
    m.load_state_dict(state_pb)
    out = m(inputs)
    ref, out = getattr(ref, "logits", ref), getattr(out, "logits", out)
    return {
        "max_abs_output_diff": float((ref - out).abs().max()),
        "max_abs_output": float(ref.abs().max()),
        "same_predictions": bool((ref.argmax(-1) == out.argmax(-1)).all()),
    }


@register("weight-matching")
class WeightMatching(CurveMethod):
    """θ_B's hidden units matched to θ_A's, then ``t -> (1−t)·θ_A + t·π(θ_B)``; records the permutation and the
    ends check in the run's summary."""

    rank = 50

    def build(self, prepared: PreparedEnds):
        e = prepared
        example = example_batch(e.loader)
        inputs = example[0] if isinstance(example, (tuple, list)) else example
        spec = permutation_spec(e.ea.model, inputs)
        perms, sweeps = match_weights(e.sa, e.sb, spec, seed=e.config.seed)
        spb = apply_permutation(e.sb, spec, perms)
        check = ends_check(e.ea.model, e.sb, spb, inputs)
        moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
        total = sum(len(p) for p in perms.values())
        e.record.end_b = "π(θ_B): θ_B with its hidden units permuted (same function, different weights)"
        e.record.summary["weight_matching"] = {
            "spaces": {k: v["size"] for k, v in spec.spaces.items()},
            "sweeps": sweeps,
            "units_moved": moved,
            "units": total,
            "ends_check": check,
        }
        return lambda t: lerp_state(t, e.sa, spb)


__all__ = ["Perms", "WeightMatching", "apply_permutation", "ends_check", "match_weights", "permute_tensor"]
