"""The Follow-Data-Flow stage rules, as pure functions of a :class:`~hf_llpf.stages.trace.ModelTrace`.

Follow Data Flow (the paper's FDF) makes layer groups active in the order the data reach them. The rules,
applied to leaf owners in first-call order:

1. **parallel readers**: a module reading the same tensor (same storage, shape, stride and in-place
   version) as an earlier module joins that module's stage: attention q/k/v, a ResNet block's conv1 and
   its downsample shortcut, parallel branches;
2. **norm after producer**: a normalisation layer whose input is exactly the output of an earlier module
   joins that module's stage, so conv+bn (or linear+norm) move together, as in the paper's hand-set
   schedules ("stem (conv1, bn1)"); a norm reading anything else (a pre-norm transformer's residual
   stream) gets its own stage;
3. **index inputs**: consecutive modules that read integer tensors (token, position, type embeddings)
   share a stage: they read ids, not each other's features;
4. otherwise a new stage. Modules that run more than once are placed at their first call; modules that
   never run form the last stage and are listed in ``StagePlan.never_run``.

Parameters owned by a container (ViT ``cls_token``, ``pos_embed``) get one group each, in a new stage just
before the stage of the first leaf module used after them in the ``torch.export`` graph; without a graph,
before the stage of the next declared leaf parameter. ``StagePlan.order_source`` says which.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from hf_llpf.stages.overrides import apply_overrides
from hf_llpf.stages.plan import LayerGroup, Stage, StagePlan
from hf_llpf.stages.trace import ModelTrace, trace_model

__all__ = ["assign_leaf_stages", "build_stages", "container_anchors", "plan_from_trace"]

NEVER_USED = -1  # anchor of a container parameter the export graph never reads: it goes to the last stage
AFTER_ALL = None  # anchor of a container parameter used after every leaf: a new stage at the end


def assign_leaf_stages(trace: ModelTrace) -> tuple[list[list[LayerGroup]], dict[str, int]]:
    """Rules 1-4 over the leaf owners in first-call order.

    Returns:
        The stages as lists of groups, and leaf owner name -> stage index (leaves that ran and own a group).
    """
    stage_lists: list[list[LayerGroup]] = []
    stage_of_leaf: dict[str, int] = {}
    reader_stage: dict[tuple, int] = {}
    prev_int_stage: int | None = None
    for name in trace.order:
        group = trace.leaf_groups.get(name)
        if group is None:
            continue
        key = trace.in_key[name]
        s = None
        if key is not None and key in reader_stage:
            s = reader_stage[key]  # rule 1: parallel readers
        elif group.norm is not None and key is not None and trace.out_owner.get(key) in stage_of_leaf:
            s = stage_of_leaf[trace.out_owner[key]]  # rule 2: norm after its producer
        elif trace.in_int[name] and prev_int_stage is not None:
            s = prev_int_stage  # rule 3: consecutive index inputs
        if s is None:
            stage_lists.append([])  # rule 4: a new stage
            s = len(stage_lists) - 1
        stage_lists[s].append(group)
        stage_of_leaf[name] = s
        if key is not None:
            reader_stage.setdefault(key, s)
        prev_int_stage = s if trace.in_int[name] else None
    return stage_lists, stage_of_leaf


def _param_leaf(trace: ModelTrace, stage_of_leaf: dict[str, int]) -> dict[str, str]:
    """Parameter name -> its leaf owner, for leaves that ran."""
    return {p: n for n, g in trace.leaf_groups.items() if n in stage_of_leaf for p in g.param_names}


def _anchors_from_graph(trace: ModelTrace, stage_of_leaf: dict[str, int]) -> dict[str, int | None]:
    """Each container parameter precedes the stage of the first leaf the export graph uses after it."""
    assert trace.first_use is not None
    param_leaf = _param_leaf(trace, stage_of_leaf)
    leaf_first = sorted((i, param_leaf[p]) for p, i in trace.first_use.items() if p in param_leaf)
    anchor: dict[str, int | None] = {}
    for g in trace.container_groups:
        i = trace.first_use.get(g.name)
        if i is None:
            anchor[g.name] = NEVER_USED
            continue
        nxt = next((n for j, n in leaf_first if j > i), None)
        anchor[g.name] = stage_of_leaf[nxt] if nxt is not None else AFTER_ALL
    return anchor


def _anchors_from_declaration(trace: ModelTrace, stage_of_leaf: dict[str, int]) -> dict[str, int | None]:
    """Each container parameter precedes the stage of the next declared parameter of a leaf that ran."""
    param_leaf = _param_leaf(trace, stage_of_leaf)
    pos = {n: i for i, n in enumerate(trace.declared)}
    anchor: dict[str, int | None] = {}
    for g in trace.container_groups:
        after = trace.declared[pos[g.name] + 1 :]
        nxt = next((param_leaf[n] for n in after if n in param_leaf), None)
        anchor[g.name] = stage_of_leaf[nxt] if nxt is not None else AFTER_ALL
    return anchor


def container_anchors(trace: ModelTrace, stage_of_leaf: dict[str, int]) -> tuple[dict[str, int | None], str]:
    """Where each container-owned parameter goes, and the resulting ``order_source``.

    Returns:
        Parameter name -> the index of the stage it is put just before (``None``: after every stage;
        ``-1``: never used, so the last stage), and ``"hooks"``, ``"hooks+export graph"`` or
        ``"hooks+declared"``.
    """
    if not trace.container_groups:
        return {}, "hooks"
    if trace.first_use is not None:
        return _anchors_from_graph(trace, stage_of_leaf), "hooks+export graph"
    return _anchors_from_declaration(trace, stage_of_leaf), "hooks+declared"


def _insert_containers(
    stage_lists: list[list[LayerGroup]], containers: list[LayerGroup], anchor: dict[str, int | None]
) -> tuple[list[list[LayerGroup]], list[LayerGroup]]:
    """The stages with each anchored container group in a new stage before its anchor; and the never-used ones."""
    inserts: dict[int | None, list[LayerGroup]] = {}
    unused: list[LayerGroup] = []
    for g in containers:
        a = anchor[g.name]
        if a == NEVER_USED:
            unused.append(g)
        else:
            inserts.setdefault(a, []).append(g)
    merged: list[list[LayerGroup]] = []
    for i, groups in enumerate(stage_lists):
        if i in inserts:
            merged.append(inserts[i])
        merged.append(groups)
    if AFTER_ALL in inserts:
        merged.append(inserts[AFTER_ALL])
    return merged, unused


def plan_from_trace(trace: ModelTrace) -> StagePlan:
    """The automatic plan of a traced model: all rules, no overrides.

    Args:
        trace: what one forward pass recorded (:func:`~hf_llpf.stages.trace.trace_model`), or a synthetic one.

    Returns:
        The plan; groups that never ran (leaves, and container parameters the graph never reads) form the
        last stage.
    """
    stage_lists, stage_of_leaf = assign_leaf_stages(trace)
    last_stage = [g for n, g in trace.leaf_groups.items() if n not in stage_of_leaf]
    anchor, order_source = container_anchors(trace, stage_of_leaf)
    if trace.container_groups:
        stage_lists, unused = _insert_containers(stage_lists, trace.container_groups, anchor)
        last_stage += unused
    if last_stage:
        stage_lists.append(last_stage)
    return StagePlan(
        stages=[Stage(index=i, groups=tuple(gs)) for i, gs in enumerate(stage_lists)],
        buffers=list(trace.buffers),
        tied=dict(trace.tied),
        never_run=[g.name for g in last_stage],
        order_source=order_source,
    )


def build_stages(
    model: nn.Module,
    example_batch: Any,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    overrides: Any = None,
) -> StagePlan:
    """Derive the Follow-Data-Flow stages of ``model`` from one forward pass: trace, rules, overrides.

    The rules are in this module's docstring. The model runs once in eval mode under ``torch.no_grad()``;
    every module's training flag is restored and every hook removed afterwards, also on error.

    Args:
        model: any ``nn.Module``.
        example_batch: one batch, called as follows (unless ``forward_fn`` is given): a Tensor ->
            ``model(x)``; a dict (or other Mapping) -> ``model(**batch)``; a tuple/list -> ``model(*batch)``,
            except that a pair ``(inputs, labels)`` whose second item is an integer tensor with at most one
            dimension and one entry per sample is treated as inputs and class labels, and only ``inputs`` is
            passed (by the same rules). Tensors are moved to the model's device.
        forward_fn: ``forward_fn(model, batch)`` runs the model instead of the rules above.
        overrides: optional user overrides, applied with :func:`~hf_llpf.stages.overrides.apply_overrides`.

    Returns:
        The plan.

    Raises:
        ConfigError: the batch has an unsupported type, or the overrides are invalid.
    """
    plan = plan_from_trace(trace_model(model, example_batch, forward_fn=forward_fn))
    if overrides is not None:
        plan = apply_overrides(plan, overrides, model)
    return plan
