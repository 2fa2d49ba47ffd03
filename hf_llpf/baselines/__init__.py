"""The paths a researcher compares LLPF with, in the run-directory format of an LLPF path (docs/baselines.md).

- :mod:`~hf_llpf.baselines.slerp`: linear and per-tensor spherical interpolation;
- :mod:`~hf_llpf.baselines.bezier`: the quadratic Bézier curve of Garipov et al. 2018, its control point trained;
- :mod:`~hf_llpf.baselines.autoneb`: AutoNEB of Draxler et al. 2018, a nudged elastic band with inserted pivots;
- :mod:`~hf_llpf.baselines.certify`: Bézier and AutoNEB trained in rounds until LLPF's certificate accepts them;
- :mod:`~hf_llpf.baselines.permutation` and :mod:`~hf_llpf.baselines.weight_matching`: Git Re-Basin weight
  matching (Ainsworth et al. 2023), the permutation spaces read from the model's graph;
- :mod:`~hf_llpf.baselines.pathdir`: writing points at fixed t as a run directory;
- :mod:`~hf_llpf.baselines.build`: :func:`build_baseline`, one method between two endpoints.
"""

from hf_llpf.baselines.build import BASELINES, build_baseline, with_iters

__all__ = ["BASELINES", "build_baseline", "with_iters"]
