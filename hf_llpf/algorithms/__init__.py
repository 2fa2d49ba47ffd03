"""The path methods, each behind the protocol of :mod:`hf_llpf.algorithms.base` (run on a context, resumable).

- ``m2m``: LLPF_M2M, model to model (:class:`~hf_llpf.algorithms.m2m.M2M`);
- ``m2o``: cross-sphere, M2O from the larger-sphere endpoint then M2M
  (:class:`~hf_llpf.algorithms.cross_sphere.CrossSphere`);
- :class:`~hf_llpf.algorithms.m2o.M2O` alone walks one endpoint toward the origin (``walk_to_origin``).
"""
