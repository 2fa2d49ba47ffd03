"""The stage plan: ordered stages of layer groups, and its JSON form (the content of ``layer_groups.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hf_llpf.errors import ConfigError, UnknownNameError

__all__ = ["CONTAINER_TYPE", "ROOT_NAME", "LayerGroup", "Stage", "StagePlan"]

ROOT_NAME = "<root>"
CONTAINER_TYPE = "Parameter"
_JSON_FORMAT = 1


@dataclass(frozen=True)
class LayerGroup:
    """The parameters one module owns directly, moved together.

    Attributes:
        name: module path (``"layer1.0.conv1"``), ``"<root>"`` for the root module; for a parameter owned by
            a container module, the parameter's full name (``"cls_token"``).
        module_type: class name of the module (``"Conv2d"``), ``"Parameter"`` for container-owned parameters.
        param_names: full parameter names as in ``model.named_parameters()`` (canonical name for tied ones).
        norm: ``"batchnorm"``, ``"layernorm"``, ``"rmsnorm"``, ``"groupnorm"`` or ``None`` (by module type).
        numel: number of elements over all its parameters.
    """

    name: str
    module_type: str
    param_names: tuple[str, ...]
    norm: str | None
    numel: int


@dataclass(frozen=True)
class Stage:
    """Layer groups that become active together (FDF: parallel groups share a stage).

    Attributes:
        index: position of the stage, 0 = shallowest.
        groups: the groups, in execution order.
    """

    index: int
    groups: tuple[LayerGroup, ...]


@dataclass
class StagePlan:
    """Ordered stages of a model, plus what is not moved.

    Attributes:
        stages: the stages, shallow to deep.
        buffers: buffer names (BatchNorm running statistics, ...): never moved or corrected.
        tied: alias parameter name -> canonical name; aliases appear in no group.
        never_run: names of groups whose module never ran for the example batch (they form the last stage).
        order_source: how the order was found: ``"hooks"`` (no container-owned parameters),
            ``"hooks+export graph"`` or ``"hooks+declared"`` (how container-owned parameters were placed),
            with ``"+overrides"`` appended when a user override was applied.
    """

    stages: list[Stage]
    buffers: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)
    never_run: list[str] = field(default_factory=list)
    order_source: str = "hooks"

    def groups(self) -> list[LayerGroup]:
        """All layer groups, in stage order."""
        return [g for s in self.stages for g in s.groups]

    def param_names(self) -> list[str]:
        """All canonical parameter names, in stage order (each exactly once)."""
        return [p for g in self.groups() for p in g.param_names]

    def stage_of(self, param_name: str) -> int:
        """Index of the stage holding ``param_name`` (a tied alias resolves to its canonical name).

        Raises:
            UnknownNameError: no group holds that parameter.
        """
        name = self.tied.get(param_name, param_name)
        for s in self.stages:
            for g in s.groups:
                if name in g.param_names:
                    return s.index
        raise UnknownNameError("parameter", param_name, self.param_names())

    def to_json(self) -> dict:
        """A JSON-serialisable dict (the content of ``layer_groups.json``); :meth:`from_json` inverts it."""
        return {
            "format": _JSON_FORMAT,
            "order_source": self.order_source,
            "stages": [
                {
                    "index": s.index,
                    "groups": [
                        {
                            "name": g.name,
                            "module_type": g.module_type,
                            "param_names": list(g.param_names),
                            "norm": g.norm,
                            "numel": g.numel,
                        }
                        for g in s.groups
                    ],
                }
                for s in self.stages
            ],
            "buffers": list(self.buffers),
            "tied": dict(self.tied),
            "never_run": list(self.never_run),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StagePlan:
        """Rebuild a plan from :meth:`to_json` output.

        Raises:
            ConfigError: a required key is missing.
        """
        missing = [k for k in ("stages", "buffers", "tied", "never_run", "order_source") if k not in d]
        if missing:
            raise ConfigError([f"layer_groups.json: missing key {k!r}" for k in missing])
        stages = [
            Stage(
                index=int(s["index"]),
                groups=tuple(
                    LayerGroup(
                        name=g["name"],
                        module_type=g["module_type"],
                        param_names=tuple(g["param_names"]),
                        norm=g["norm"],
                        numel=int(g["numel"]),
                    )
                    for g in s["groups"]
                ),
            )
            for s in d["stages"]
        ]
        return cls(
            stages=stages,
            buffers=list(d["buffers"]),
            tied=dict(d["tied"]),
            never_run=list(d["never_run"]),
            order_source=str(d["order_source"]),
        )
