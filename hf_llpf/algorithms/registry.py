"""Every path method behind one interface, :class:`PathMethod`, in one registry (docs/baselines.md).

A method registers itself in its own module (``@register("name")``); the lookups import every module of
:mod:`hf_llpf.algorithms` and :mod:`hf_llpf.baselines` once, so a new method touches only its own file (and its
test). Two kinds of method stand behind the interface:

- an engine method (:class:`EngineMethod`: ``m2m``, ``m2o``, ``cross-sphere``, and ``llpf``, the method the
  settings choose) is a resumable loop of :mod:`hf_llpf.algorithms.base` that :func:`hf_llpf.connect` runs on its
  prepared run; registering the loop's class makes its adapter;
- a curve (:class:`CurveMethod`: ``linear``, ``slerp``, ``weight-matching``; :class:`TrainedMethod`: ``bezier``,
  ``autoneb``) gives the point at each t between the prepared ends; :func:`hf_llpf.build_baseline` and
  :func:`hf_llpf.connect` (``method: bezier``) write it as a run directory at fixed t
  (:mod:`hf_llpf.baselines.curve_run`).

``linear`` is both: ``connect --method linear`` runs its engine (the certified straight line), ``compare`` writes
its curve. The setting ``method: auto`` is resolved by the sphere check (:mod:`hf_llpf.algorithms.spheres`) before
a class is looked up.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

_METHODS: dict[str, type[PathMethod]] = {}
_PACKAGES = ("hf_llpf.algorithms", "hf_llpf.baselines")  # where the methods' own modules live
_NOT_METHODS = {"base", "registry"}  # modules of those packages that hold no method


class PathMethod(ABC):
    """One way to build a path between two endpoints, and what the tool needs to know to run and compare it.

    Attributes:
        name: the method's name (``connect --method``, ``compare --methods``); set by :func:`register`.
        settings: the class of the method's own typed settings (a dataclass with ``problems()``), or ``None``.
        trains: whether it trains by SGD (its BatchNorm statistics recomputed at each t; certified in rounds).
        engine: the resumable loop :func:`hf_llpf.connect` runs under this name (``None``: connect does not).
        compared: whether ``compare`` and ``evaluate --baselines`` accept it.
        rank: its place among the compared methods (lower first; equal ranks in registration order).
    """

    name: ClassVar[str] = ""
    settings: ClassVar[type | None] = None
    trains: ClassVar[bool] = False
    engine: ClassVar[type | None] = None
    compared: ClassVar[bool] = True
    rank: ClassVar[int] = 100

    @abstractmethod
    def build(self, prepared: Any) -> Any:
        """Build the path on ``prepared``.

        An engine method gets the :class:`~hf_llpf.algorithms.base.RunSetup` made from connect's
        :class:`~hf_llpf.preparation.PreparedRun` and returns its loop, which writes its points as it runs; a
        curve gets the :class:`~hf_llpf.baselines.pathdir.PreparedEnds` and returns its ``state_at(t)``.
        """

    @classmethod
    def runner(cls, setup: Any) -> Any:
        """The loop :func:`hf_llpf.connect` runs for this method on ``setup`` (its ``engine``, built for the run)."""
        return cls.engine.for_run(setup)


class EngineMethod(PathMethod):
    """An LLPF method: a resumable loop run by :func:`hf_llpf.connect`; ``compare`` runs it through connect."""

    trains = True
    compared = False

    def build(self, prepared: Any) -> Any:
        return self.runner(prepared)


class CurveMethod(PathMethod):
    """A path given in closed form between the prepared ends: :meth:`build` returns ``state_at(t)``."""

    @classmethod
    def round_problems(cls, rounds: Any, settings: Any) -> list[str]:
        """What is wrong with certification ``rounds`` for this method under ``settings``, one line each."""
        return []


class TrainedMethod(CurveMethod):
    """A curve trained by SGD: :meth:`build` returns a :class:`~hf_llpf.baselines.pathdir.TrainedCurve`, trained to
    its fixed budget without a ceiling, else in rounds until the certificate accepts it (docs/baselines.md)."""

    trains = True


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a method available as ``name``.

    Decorating a :class:`PathMethod` registers it; decorating an engine loop (a class with ``for_run``, e.g. a
    :class:`~hf_llpf.algorithms.base.Method`) registers an :class:`EngineMethod` adapter around it. The engine's
    ``name`` is set too: its checkpoints record it.
    """

    def add(cls: type) -> type:
        entry = cls if isinstance(cls, type) and issubclass(cls, PathMethod) else None
        if entry is None:
            entry = type(f"{cls.__name__}Method", (EngineMethod,), {"engine": cls, "__doc__": cls.__doc__})
        entry.name = name
        if entry.engine is not None:
            entry.engine.name = name
        _METHODS[name] = entry
        return cls

    return add


def unregister(name: str) -> None:
    """Remove method ``name`` (a method a test registered for itself)."""
    _METHODS.pop(name, None)


def _discover() -> None:
    for package_name in _PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in _NOT_METHODS:
                importlib.import_module(f"{package_name}.{info.name}")


def path_method(name: str, *, kind: str = "method", among: list[str] | None = None) -> type[PathMethod]:
    """The registered method ``name``.

    Args:
        kind: what the caller calls it, for the error (``"method"``, ``"baseline method"``).
        among: the names the caller accepts, as the error lists them (default: every registered name, sorted).

    Raises:
        UnknownNameError: naming the method and the known ones.
    """
    from hf_llpf.errors import UnknownNameError

    _discover()
    known = sorted(_METHODS) if among is None else among
    if name not in known:
        raise UnknownNameError(kind, name, known)
    return _METHODS[name]


def method_names() -> list[str]:
    """Every registered method name, sorted."""
    _discover()
    return sorted(_METHODS)


def engine_names() -> list[str]:
    """The methods :func:`hf_llpf.connect` runs (``method:``), sorted; ``auto`` is the sphere check's choice."""
    _discover()
    return sorted(n for n, m in _METHODS.items() if m.engine is not None)


def comparison_methods() -> tuple[str, ...]:
    """The methods ``compare`` and ``evaluate --baselines`` accept, in the order of their table."""
    _discover()
    entries = sorted(((m.rank, i, n) for i, (n, m) in enumerate(_METHODS.items()) if m.compared))
    return tuple(n for _, _, n in entries)


def baseline_names() -> tuple[str, ...]:
    """The compared methods :func:`hf_llpf.build_baseline` builds (the curves), in the table's order."""
    return tuple(n for n in comparison_methods() if issubclass(_METHODS[n], CurveMethod))


def curve_method(name: str) -> type[CurveMethod] | None:
    """The curve :func:`hf_llpf.connect` writes as ``method: name`` (``None``: not a curve, or one with an engine,
    which connect runs instead: ``linear``'s certified straight line)."""
    _discover()
    entry = _METHODS.get(name)
    return entry if entry is not None and issubclass(entry, CurveMethod) and entry.engine is None else None


def method_class(name: str) -> type:
    """The engine loop :func:`hf_llpf.connect` runs as ``method: name``.

    Raises:
        UnknownNameError: naming the method and the methods connect runs.
    """
    from hf_llpf.errors import UnknownNameError

    names = engine_names()
    if name not in names:
        hint = ""
        if name in _METHODS and issubclass(_METHODS[name], CurveMethod):  # built at fixed t, not run by connect
            hint = f"{name!r} is a baseline: hf-llpf compare --methods {name}, or hf_llpf.build_baseline({name!r})"
        raise UnknownNameError("method", name, ["auto", *names], hint)
    return _METHODS[name].engine


@register("llpf")
class LLPF(EngineMethod):
    """LLPF as the settings choose it (``method:``, ``auto`` by default): compare's ``llpf`` row."""

    compared = True
    rank = 0

    def build(self, prepared: Any) -> Any:
        """Not built by name: :func:`hf_llpf.connect` resolves the settings' method first (``auto`` by the sphere
        check, :mod:`hf_llpf.algorithms.spheres`) and builds that one.

        Raises:
            ConfigError: always, naming the methods connect runs.
        """
        from hf_llpf.errors import ConfigError

        raise ConfigError(
            f"method 'llpf' names the settings' method; connect runs one of: auto, {', '.join(engine_names())}"
        )


__all__ = [
    "CurveMethod",
    "EngineMethod",
    "PathMethod",
    "TrainedMethod",
    "baseline_names",
    "comparison_methods",
    "curve_method",
    "engine_names",
    "method_class",
    "method_names",
    "path_method",
    "register",
    "unregister",
]
