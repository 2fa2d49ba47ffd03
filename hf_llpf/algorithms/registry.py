"""Method names → the classes that run them.

A method registers itself in its own module (``@register("name")``); :func:`method_class` imports every
module of :mod:`hf_llpf.algorithms` once, so a new method touches only its own file (and its test). The
setting ``method: auto`` is resolved by the sphere check (:mod:`hf_llpf.spheres`) before a class is looked up.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

_METHODS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a method available as ``method: name``."""

    def add(cls: type) -> type:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return add


def _discover() -> None:
    import hf_llpf.algorithms as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("base", "registry"):
            importlib.import_module(f"{package.__name__}.{info.name}")


def method_names() -> list[str]:
    """Every registered method name."""
    _discover()
    return sorted(_METHODS)


def method_class(name: str) -> type:
    """The class of method ``name``.

    Raises:
        UnknownNameError: naming the method and the known ones.
    """
    from hf_llpf.errors import UnknownNameError

    _discover()
    if name not in _METHODS:
        raise UnknownNameError("method", name, ["auto", *sorted(_METHODS)])
    return _METHODS[name]
