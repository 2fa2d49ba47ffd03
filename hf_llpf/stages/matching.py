"""The one regex -> layer-group matcher, shared by stage overrides and hand-set schedules.

A regex selects a parameter when ``re.search`` finds it in the parameter's name (or, when the matcher is
given the tied names, in one of its tied aliases); it selects a layer group when it selects any of the
group's parameters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from hf_llpf.errors import ConfigError
from hf_llpf.stages.plan import LayerGroup, StagePlan

__all__ = ["GroupMatcher", "compile_regex", "schedule_start_ticks"]

ALLOWED_REGEX = "a Python regular expression, searched (re.search) in parameter names"


def compile_regex(pattern: Any) -> re.Pattern:
    """Compile one user regex.

    Args:
        pattern: the regex, as the user wrote it.

    Returns:
        The compiled pattern.

    Raises:
        ValueError: ``pattern`` is not a string or not a valid regex; the message says what is allowed
            (callers prefix it with the field and the value).
    """
    if not isinstance(pattern, str):
        raise ValueError(f"must be a regex string, got {type(pattern).__name__}; allowed: {ALLOWED_REGEX}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regex: {e}; allowed: {ALLOWED_REGEX}") from None


class GroupMatcher:
    """Which parameters and layer groups of a plan a regex selects.

    Args:
        groups: the layer groups, in plan order (``StagePlan.groups()``).
        tied: alias -> canonical parameter name (``StagePlan.tied``); when given, a regex that matches an alias
            selects its canonical parameter. Hand-set schedules pass nothing: they match canonical names only.
    """

    def __init__(self, groups: Sequence[LayerGroup], tied: Mapping[str, str] | None = None):
        self.groups = list(groups)
        self._aliases: dict[str, list[str]] = {}
        for alias, canon in (tied or {}).items():
            self._aliases.setdefault(canon, []).append(alias)

    def selects(self, rx: re.Pattern, param_name: str) -> bool:
        """Whether ``rx`` selects the parameter ``param_name`` (its name or one of its aliases)."""
        return bool(rx.search(param_name)) or any(rx.search(a) for a in self._aliases.get(param_name, ()))

    def params(self, rx: re.Pattern) -> list[str]:
        """The canonical parameter names ``rx`` selects, in plan order."""
        return [p for g in self.groups for p in g.param_names if self.selects(rx, p)]

    def group_indices(self, rx: re.Pattern) -> list[int]:
        """Indices (into ``groups``) of the groups ``rx`` selects: those with at least one selected parameter."""
        return [i for i, g in enumerate(self.groups) if any(self.selects(rx, p) for p in g.param_names)]


def schedule_start_ticks(plan: StagePlan, schedule: Sequence[Any]) -> list[int]:
    """A hand-set schedule's start tick of each stage (the paper's per-architecture schedules).

    Args:
        plan: the run's stage plan.
        schedule: the config's ``schedule`` entries (``match`` regex, ``start`` tick; regexes checked by the config).

    Returns:
        Per stage, in plan order, the earliest start of the entries that match any of its parameters.

    Raises:
        ConfigError: a parameter of the plan that no entry matches (the first 20 named).
    """
    # Canonical names only (no tied aliases), as schedules have always matched.
    matcher = GroupMatcher(plan.groups())
    hits: dict[str, list[int]] = {}
    for e in schedule:
        for name in matcher.params(compile_regex(e.match)):
            hits.setdefault(name, []).append(e.start)
    starts: list[int | None] = [None] * len(plan.stages)
    unmatched = []
    for s in plan.stages:
        for name in (n for g in s.groups for n in g.param_names):
            if name not in hits:
                unmatched.append(name)
                continue
            first = min(hits[name])
            starts[s.index] = first if starts[s.index] is None else min(starts[s.index], first)
    if unmatched:
        raise ConfigError(f"schedule: no entry matches these parameters: {', '.join(unmatched[:20])}")
    return [int(s) for s in starts]
