"""Follow-Data-Flow stages of any ``nn.Module``: which layer groups move together, and in which order.

A model becomes an ordered list of **stages**; each stage holds one or more **layer groups**; a group is the
parameters one module owns directly (weight and bias together) with its normalisation kind.

- :mod:`~hf_llpf.stages.plan`: :class:`LayerGroup`, :class:`Stage`, :class:`StagePlan` and their JSON form;
- :mod:`~hf_llpf.stages.norms`: normalisation kind by module type, never by name (:func:`norm_kind`);
- :mod:`~hf_llpf.stages.trace`: one forward pass recorded as a :class:`~hf_llpf.stages.trace.ModelTrace`;
- :mod:`~hf_llpf.stages.rules`: the stage rules over a trace, and :func:`build_stages`;
- :mod:`~hf_llpf.stages.matching`: the regex -> layer-group matcher of overrides and hand-set schedules;
- :mod:`~hf_llpf.stages.overrides`: typed user overrides (:func:`load_overrides`, :func:`apply_overrides`);
- :mod:`~hf_llpf.stages.table`: the plan as a text table (:func:`format_stage_table`).

Tied parameters (the same ``Parameter`` under two names) appear once, under their first name.
"""

from hf_llpf.stages.norms import NORM_KINDS, norm_kind
from hf_llpf.stages.overrides import apply_overrides, load_overrides
from hf_llpf.stages.plan import LayerGroup, Stage, StagePlan
from hf_llpf.stages.rules import build_stages
from hf_llpf.stages.table import format_stage_table

__all__ = [
    "NORM_KINDS",
    "LayerGroup",
    "Stage",
    "StagePlan",
    "apply_overrides",
    "build_stages",
    "format_stage_table",
    "load_overrides",
    "norm_kind",
]
