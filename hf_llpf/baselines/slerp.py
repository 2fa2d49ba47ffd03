"""SLERP: per-tensor spherical linear interpolation, as model-merging toolkits define it (docs/baselines.md).

For each floating tensor, with v0, v1 the tensors of θ_A and θ_B flattened and n0, n1 their unit vectors,
Ω = arccos(n0·n1) and

    slerp(t) = sin((1−t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1,

the weights applied to the tensors themselves (not to their unit vectors), as mergekit does. When the two
tensors are nearly colinear (|n0·n1| > 0.9995) the formula is ill-conditioned and linear interpolation is used
instead; non-floating buffers (``num_batches_tracked``) come from the nearer end. t=0 and t=1 give θ_A and θ_B
bit for bit, and SLERP of identical endpoints is that endpoint at every t.
"""

from __future__ import annotations

import torch

from hf_llpf.algorithms.linear import lerp_state
from hf_llpf.algorithms.registry import CurveMethod, register
from hf_llpf.baselines.pathdir import PreparedEnds, State

DOT_THRESHOLD = 0.9995  # mergekit's: above it the tensors are treated as colinear and lerped
_EPS = 1e-8


@torch.no_grad()
def slerp_tensor(
    t: float, v0: torch.Tensor, v1: torch.Tensor, *, dot_threshold: float = DOT_THRESHOLD
) -> torch.Tensor:
    """Spherical interpolation of two tensors of the same shape at ``t`` (float64 inside, ``v0``'s dtype out)."""
    if t == 0.0:
        return v0.clone()
    if t == 1.0:
        return v1.clone()
    a, b = v0.double(), v1.double()
    na = a / a.norm().clamp_min(_EPS)
    nb = b / b.norm().clamp_min(_EPS)
    dot = float((na * nb).sum())
    if abs(dot) > dot_threshold:  # nearly colinear (or a zero tensor): sin Ω ≈ 0, lerp is the limit
        return torch.lerp(v0, v1.to(v0.dtype), t)
    omega = torch.tensor(dot, dtype=torch.float64).clamp(-1.0, 1.0).arccos()
    s0 = torch.sin((1.0 - t) * omega) / torch.sin(omega)
    s1 = torch.sin(t * omega) / torch.sin(omega)
    return (s0 * a + s1 * b).to(v0.dtype)


def slerp_state(t: float, state_a: State, state_b: State, *, dot_threshold: float = DOT_THRESHOLD) -> State:
    """SLERP of every floating tensor of two state dicts; other tensors from the nearer end."""
    out = {}
    for name, a in state_a.items():
        b = state_b[name]
        if a.is_floating_point():
            out[name] = slerp_tensor(t, a, b, dot_threshold=dot_threshold)
        else:
            out[name] = (b if t >= 0.5 else a).clone()
    return out


@register("slerp")
class Slerp(CurveMethod):
    """SLERP of θ_A and θ_B at each t (:func:`slerp_state`)."""

    rank = 20

    def build(self, prepared: PreparedEnds):
        return lambda t: slerp_state(t, prepared.sa, prepared.sb)


__all__ = ["DOT_THRESHOLD", "Slerp", "lerp_state", "slerp_state", "slerp_tensor"]
