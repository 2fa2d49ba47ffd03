"""Method names → the classes that run them (``method:`` in the settings; ``auto`` is resolved by the sphere
check in :mod:`hf_llpf.spheres` before a method is looked up)."""

from __future__ import annotations

from hf_llpf.algorithms.cross_sphere import CrossSphere
from hf_llpf.algorithms.m2m import M2M
from hf_llpf.algorithms.m2o import M2O

METHODS: dict[str, type] = {"m2m": M2M, "m2o": CrossSphere, "m2o-walk": M2O}


def method_class(name: str) -> type:
    """The class of method ``name``.

    Raises:
        UnknownNameError: naming the method and the known ones.
    """
    from hf_llpf.errors import UnknownNameError

    if name not in METHODS:
        raise UnknownNameError("method", name, sorted(METHODS))
    return METHODS[name]
