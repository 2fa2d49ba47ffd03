"""The stage plan as a text table (``hf-llpf groups``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from hf_llpf.stages.plan import StagePlan

__all__ = ["format_stage_table"]


def format_stage_table(plan: StagePlan, model: nn.Module) -> str:
    """The plan as a text table: stage, group, module type, parameter, numel, variance (one row per parameter).

    Args:
        plan: the plan.
        model: the model whose current parameter values give the variance column.

    Returns:
        The table, followed by lines on the order source, tied parameters, never-run groups and buffers.
    """
    from hf_llpf.geometry import variances

    params = dict(model.named_parameters())
    names = plan.param_names()
    var = variances([params[n] for n in names]).tolist() if names else []
    var_of = dict(zip(names, var))
    header = ("stage", "group", "module type", "parameter", "numel", "variance")
    rows = []
    for s in plan.stages:
        for gi, g in enumerate(s.groups):
            for pi, p in enumerate(g.param_names):
                prefix = g.name + "."
                short = p[len(prefix) :] if p.startswith(prefix) else p
                rows.append(
                    (
                        str(s.index) if gi == 0 and pi == 0 else "",
                        g.name if pi == 0 else "",
                        (g.module_type + (f" [{g.norm}]" if g.norm else "")) if pi == 0 else "",
                        short,
                        str(params[p].numel()),
                        f"{var_of[p]:.4g}",
                    )
                )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {4, 5}

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    total = sum(g.numel for g in plan.groups())
    lines.append(
        f"{len(plan.stages)} stages, {len(plan.groups())} groups, {total} parameters; order: {plan.order_source}"
    )
    if plan.tied:
        lines.append("tied: " + ", ".join(f"{a} -> {c}" for a, c in plan.tied.items()))
    if plan.never_run:
        lines.append("never ran (last stage): " + ", ".join(plan.never_run))
    lines.append(f"buffers (never moved): {len(plan.buffers)}")
    return "\n".join(lines)
