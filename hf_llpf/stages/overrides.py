"""User overrides of the automatic stage plan: typed models, reading them, applying them.

Two forms, written in a recipe's ``stages:`` key or a YAML file (``hf-llpf groups --overrides``):

- **moves** (a list): ``[{match: "^head\\.", stage: last}, {match: pos_embed, stage: 0}]`` moves every group a
  regex selects into one stage of the automatic plan (:class:`MoveOverride`);
- **explicit** (a mapping): ``{stages: [["^conv1\\.", "^bn1\\."], ["^layer1\\."], ...]}`` gives the complete
  stage list (:class:`ExplicitStages`).

Regexes select groups with :class:`~hf_llpf.stages.matching.GroupMatcher`, the matcher hand-set schedules use.
Everything that can be checked without a model (keys, types, regex syntax) is checked when the settings are
built; what needs the plan (a stage index in range, a regex that selects something) when it is applied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError, model_validator
from torch import nn

from hf_llpf.errors import ConfigError
from hf_llpf.stages.matching import GroupMatcher, compile_regex
from hf_llpf.stages.plan import LayerGroup, Stage, StagePlan

__all__ = [
    "ExplicitStages",
    "MoveOverride",
    "StageOverrides",
    "apply_overrides",
    "load_overrides",
    "parse_overrides",
]

_FORMS = "a list of {match, stage} entries or {stages: [[regex, ...], ...]}"


def _regex(v: Any) -> str:
    compile_regex(v)
    return v


def _stage_ref(v: Any) -> int | str:
    if v in ("first", "last") or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return v
    raise ValueError(f"got {v!r}; allowed: an integer >= 0 (a stage of the automatic plan), first, last")


def _pattern_list(v: Any) -> list | None:
    """A stage's regexes as a list (a single regex may stand alone), or ``None`` when not a non-empty list."""
    patterns = [v] if isinstance(v, str) else v
    return patterns if isinstance(patterns, list) and patterns else None


def _stage_patterns(v: Any) -> str | list[str]:
    patterns = _pattern_list(v)
    if patterns is None:
        raise ValueError(f"must be a regex or a non-empty list of regexes, got {v!r}")
    for p in patterns:
        compile_regex(p)
    return v


def _explicit_shape_problem(v: Any) -> str | None:
    if isinstance(v, Mapping) and set(v) == {"stages"} and isinstance(v["stages"], list):
        return None
    got = f"keys {sorted(map(str, v))}" if isinstance(v, Mapping) else type(v).__name__
    return f"a mapping must be {{stages: [[regex, ...], ...]}}; got {got}"


Regex = Annotated[str, PlainValidator(_regex)]
StageRef = Annotated[Union[int, Literal["first", "last"]], PlainValidator(_stage_ref)]  # noqa: UP007
StagePatterns = Annotated[Union[str, list[str]], PlainValidator(_stage_patterns)]  # noqa: UP007


class MoveOverride(BaseModel):
    """Move every layer group that ``match`` selects into stage ``stage`` of the automatic plan.

    Attributes:
        match: a regex, searched in parameter names (tied aliases included); it selects whole groups.
        stage: an index of the automatic plan's stages, ``"first"`` or ``"last"``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: Regex
    stage: StageRef

    @model_validator(mode="before")
    @classmethod
    def _exact_keys(cls, v: Any) -> Any:
        # Checked here rather than by extra="forbid", so the message names the allowed keys wherever it is raised.
        if not isinstance(v, Mapping) or set(v) != {"match", "stage"}:
            raise ValueError(f"must be a mapping with exactly the keys match and stage, got {v!r}")
        return v


class ExplicitStages(BaseModel):
    """The complete stage list: stage ``i`` holds the groups the regexes of ``stages[i]`` select.

    Every group must be selected by the regexes of exactly one stage.

    Attributes:
        stages: per stage, one regex or a non-empty list of regexes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    stages: list[StagePatterns]

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, v: Any) -> Any:
        problem = _explicit_shape_problem(v)
        if problem:
            raise ValueError(problem)
        return v


StageOverrides = Union[list[MoveOverride], ExplicitStages]  # noqa: UP007


# ------------------------------------------------------------------------------------- reading and checking
def _describe(err: ValidationError, where: str) -> list[str]:
    """pydantic's errors as problems that name the field, the value and what is allowed."""
    out = []
    for e in err.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        out.append(f"{where}{loc}={e['input']!r}: {msg}" if loc else f"{where}: {msg}")
    return out


def _plain(obj: Any) -> Any:
    """Typed overrides back to plain lists and dicts; anything else unchanged."""
    if isinstance(obj, ExplicitStages):
        return obj.model_dump()
    if isinstance(obj, (list, tuple)):
        return [e.model_dump() if isinstance(e, MoveOverride) else e for e in obj]
    return obj


def _read(path_or_obj: Any) -> list | dict:
    """The raw overrides: a YAML file's content, or the object itself (typed ones as plain lists/dicts)."""
    obj = _plain(path_or_obj)
    if isinstance(path_or_obj, (str, os.PathLike)):
        from hf_llpf.recipes import parse_yaml

        path = os.fspath(path_or_obj)
        if not os.path.isfile(path):
            raise ConfigError(f"overrides: file not found: {path!r}")
        try:
            with open(path, "rb") as fh:
                text = fh.read().decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"overrides: {path!r} is not UTF-8 text (byte {err.start})") from None
        obj = parse_yaml(text, where=f"overrides: {path!r}")
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (list, tuple)):
        return list(obj)
    raise ConfigError(f"overrides: got {type(obj).__name__}; allowed: {_FORMS}")


def _check_moves(raw: Sequence, where: str) -> tuple[list[tuple[int, MoveOverride]], list[str]]:
    """The valid entries with their positions, and a problem for each invalid one."""
    entries, problems = [], []
    for i, entry in enumerate(raw):
        try:
            entries.append((i, MoveOverride.model_validate(entry)))
        except ValidationError as err:
            problems += _describe(err, f"{where}[{i}]")
    return entries, problems


def _check_explicit(raw: Mapping, where: str) -> tuple[list[list[str]], list[str]]:
    """Each stage's valid regexes, and a problem for each invalid stage or regex.

    Raises:
        ConfigError: the mapping is not ``{stages: [...]}`` at all.
    """
    problem = _explicit_shape_problem(raw)
    if problem:
        raise ConfigError(f"{where}: {problem}")
    stages: list[list[str]] = []
    problems: list[str] = []
    for si, given in enumerate(raw["stages"]):
        patterns = _pattern_list(given)
        if patterns is None:
            problems.append(f"{where}.stages[{si}]: must be a non-empty list of regexes, got {given!r}")
            patterns = []
        valid = []
        for pi, pattern in enumerate(patterns):
            try:
                compile_regex(pattern)
                valid.append(pattern)
            except ValueError as e:
                problems.append(f"{where}.stages[{si}][{pi}]={pattern!r}: {e}")
        stages.append(valid)
    return stages, problems


def parse_overrides(obj: Any, where: str = "overrides") -> StageOverrides:
    """Check parsed overrides (a list or a mapping, as read from YAML) and return them typed.

    Args:
        obj: the moves list or the explicit mapping (typed overrides pass through).
        where: the field name used in error messages (``"stages"`` for a recipe's key).

    Returns:
        A list of :class:`MoveOverride` or an :class:`ExplicitStages`.

    Raises:
        ConfigError: every problem found (unknown or missing keys, wrong types, invalid regexes).
    """
    obj = _plain(obj)
    if isinstance(obj, Mapping):
        _, problems = _check_explicit(obj, where)
        if problems:
            raise ConfigError(problems)
        return ExplicitStages.model_validate(obj)
    if isinstance(obj, (list, tuple)):
        entries, problems = _check_moves(obj, where)
        if problems:
            raise ConfigError(problems)
        return [e for _, e in entries]
    raise ConfigError(f"{where}: got {type(obj).__name__} {obj!r}; allowed: {_FORMS}")


def load_overrides(path_or_obj: Any) -> StageOverrides:
    """Read user overrides from a YAML file, or check an already-parsed object.

    Args:
        path_or_obj: a path (``str`` or ``os.PathLike``) to a YAML file, or a list/dict (typed or plain).

    Returns:
        The typed overrides (see :func:`parse_overrides`).

    Raises:
        ConfigError: the file is missing or unreadable, or the content is neither form or has invalid entries.
    """
    return parse_overrides(_read(path_or_obj))


# -------------------------------------------------------------------------------------------------- applying
def _stage_index(stage: int | str, n_stages: int) -> int | None:
    if stage == "first":
        return 0
    if stage == "last":
        return n_stages - 1
    return stage if isinstance(stage, int) and 0 <= stage < n_stages else None


def _apply_moves(
    plan: StagePlan, entries: list[tuple[int, MoveOverride]], matcher: GroupMatcher, problems: list[str]
) -> list[list[LayerGroup]]:
    """Move the selected groups; within a stage groups keep their automatic order."""
    n_stages = len(plan.stages)
    target: dict[int, int] = {}
    matched_by: dict[int, list[int]] = {}
    for ei, entry in entries:
        idx = _stage_index(entry.stage, n_stages)
        if idx is None:
            problems.append(
                f"overrides[{ei}]: stage: got {entry.stage!r}; allowed: an integer 0..{n_stages - 1}, first, last"
            )
            continue
        found = matcher.group_indices(compile_regex(entry.match))
        if not found:
            problems.append(f"overrides[{ei}]: regex {entry.match!r} matches no parameter")
        for gi in found:
            target[gi] = idx
            matched_by.setdefault(gi, []).append(ei)
    groups = matcher.groups
    double = [f"{groups[gi].name} (entries {e})" for gi, e in sorted(matched_by.items()) if len(e) > 1]
    if double:
        problems.append(f"overrides: groups matched by more than one entry: {', '.join(double)}")
    home = {g.name: s.index for s in plan.stages for g in s.groups}
    new_lists: list[list[LayerGroup]] = [[] for _ in range(n_stages)]
    for gi, g in enumerate(groups):
        new_lists[target.get(gi, home[g.name])].append(g)
    return new_lists


def _apply_explicit(stages: list[list[str]], matcher: GroupMatcher, problems: list[str]) -> list[list[LayerGroup]]:
    """The complete stage list; every group must be selected by exactly one stage."""
    groups = matcher.groups
    hits: dict[int, set[int]] = {}
    for si, patterns in enumerate(stages):
        for pattern in patterns:
            found = matcher.group_indices(compile_regex(pattern))
            if not found:
                problems.append(f"overrides.stages[{si}]: regex {pattern!r} matches no parameter")
            for gi in found:
                hits.setdefault(gi, set()).add(si)
    unmatched = [g.name for gi, g in enumerate(groups) if gi not in hits]
    double = [f"{groups[gi].name} (stages {sorted(s)})" for gi, s in sorted(hits.items()) if len(s) > 1]
    if unmatched:
        problems.append(f"overrides: groups matched by no stage: {', '.join(unmatched)}")
    if double:
        problems.append(f"overrides: groups matched by more than one stage: {', '.join(double)}")
    new_lists: list[list[LayerGroup]] = [[] for _ in stages]
    for gi, g in enumerate(groups):
        if gi in hits:
            new_lists[min(hits[gi])].append(g)
    return new_lists


def apply_overrides(plan: StagePlan, overrides: Any, model: nn.Module | None = None) -> StagePlan:
    """Adjust a plan with user overrides; returns a new plan (the input is not modified).

    Regexes are matched with ``re.search`` against parameter names (tied aliases included); a match selects
    the whole group that holds the parameter. Moves put the selected groups into a stage of ``plan``; the
    explicit form replaces the stage list. Stages left empty are dropped and the rest renumbered.

    Args:
        plan: the automatic plan.
        overrides: a YAML path, the parsed list/dict, or typed overrides (see :func:`load_overrides`).
        model: unused; reserved so callers can pass it for future checks against the model.

    Returns:
        The adjusted plan (``order_source`` gets ``"+overrides"``).

    Raises:
        ConfigError: malformed entries, invalid regexes, a regex that matches nothing, a group matched more
            than once, or (explicit form) groups matched by no stage; all problems are listed at once.
    """
    del model
    raw = _read(overrides)
    matcher = GroupMatcher(plan.groups(), plan.tied)
    if isinstance(raw, dict):
        stages, problems = _check_explicit(raw, "overrides")
        new_lists = _apply_explicit(stages, matcher, problems)
    else:
        entries, problems = _check_moves(raw, "overrides")
        new_lists = _apply_moves(plan, entries, matcher, problems)
    if problems:
        raise ConfigError(problems)
    return StagePlan(
        stages=[Stage(index=i, groups=tuple(gs)) for i, gs in enumerate(gs for gs in new_lists if gs)],
        buffers=list(plan.buffers),
        tied=dict(plan.tied),
        never_run=list(plan.never_run),
        order_source=plan.order_source
        if plan.order_source.endswith("+overrides")
        else plan.order_source + "+overrides",
    )
