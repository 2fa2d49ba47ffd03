"""The paths a researcher compares LLPF with, in the run-directory format of an LLPF path (docs/baselines.md).

Each method registers itself in its own file (``@register``, :mod:`hf_llpf.algorithms.registry`):

- :mod:`~hf_llpf.baselines.slerp`: per-tensor spherical interpolation (linear: :mod:`hf_llpf.algorithms.linear`);
- :mod:`~hf_llpf.baselines.bezier`: the quadratic Bézier curve of Garipov et al. 2018, its control point trained;
- :mod:`~hf_llpf.baselines.autoneb`: AutoNEB of Draxler et al. 2018, a nudged elastic band with inserted pivots;
- :mod:`~hf_llpf.baselines.certify`: Bézier and AutoNEB trained in rounds until LLPF's certificate accepts them;
- :mod:`~hf_llpf.baselines.permutation` and :mod:`~hf_llpf.baselines.weight_matching`: Git Re-Basin weight
  matching (Ainsworth et al. 2023), the permutation spaces read from the model's graph;
- :mod:`~hf_llpf.baselines.pathdir`: writing points at fixed t as a run directory;
- :mod:`~hf_llpf.baselines.curve_run`: one curve's run directory through the one run preparation, trained curves
  checkpointed and resumed;
- :mod:`~hf_llpf.baselines.build`: :func:`build_baseline` and ``connect --method bezier``, one registered curve
  between two endpoints.
"""

from hf_llpf.baselines.build import build_baseline, with_iters


def __getattr__(name: str) -> tuple[str, ...]:
    """``BASELINES``: the registered curves (:func:`hf_llpf.algorithms.registry.baseline_names`), read when asked."""
    if name == "BASELINES":
        from hf_llpf.algorithms.registry import baseline_names

        return baseline_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["build_baseline", "with_iters"]
