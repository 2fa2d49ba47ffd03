"""hf_llpf.stages without a model run: the stage rules on synthetic traces, the one regex matcher, and the
override and schedule errors raised when the settings are built."""

import re

import pytest

from hf_llpf.config import ConnectConfig, build
from hf_llpf.errors import ConfigError
from hf_llpf.stages import LayerGroup, apply_overrides
from hf_llpf.stages.matching import GroupMatcher, schedule_start_ticks
from hf_llpf.stages.overrides import ExplicitStages, MoveOverride, load_overrides
from hf_llpf.stages.rules import plan_from_trace
from hf_llpf.stages.trace import ModelTrace


def _g(name, norm=None, params=("weight", "bias"), module_type="Conv2d"):
    return LayerGroup(name, module_type, tuple(f"{name}.{p}" for p in params), norm, 10 * len(params))


def _p(name):
    return LayerGroup(name, "Parameter", (name,), None, 4)


def _trace(groups, reads, *, ints=(), outputs=None, containers=(), first_use=None, declared=(), tied=None):
    """A trace in which the modules of ``reads`` (name -> key of the tensor read) ran in that order."""
    return ModelTrace(
        leaf_groups={g.name: g for g in groups},
        order=list(reads),
        in_key=dict(reads),
        in_int={n: n in ints for n in reads},
        out_owner=dict(outputs or {}),
        container_groups=list(containers),
        first_use=first_use,
        declared=list(declared),
        tied=dict(tied or {}),
        buffers=["bn.running_mean"],
    )


def _names(plan):
    return [[g.name for g in s.groups] for s in plan.stages]


# A block: stem -> bn (reads stem's output) -> left, right (read bn's output) -> gn (reads their sum) -> head.
GROUPS = [_g("stem"), _g("bn", "batchnorm"), _g("left"), _g("right"), _g("gn", "groupnorm"), _g("head"), _g("unused")]
READS = {"stem": "x", "bn": "stem_out", "left": "bn_out", "right": "bn_out", "gn": "sum", "head": "pooled"}
OUTPUTS = {"stem_out": "stem", "bn_out": "bn", "left_out": "left"}


def test_rules_parallel_readers_norm_after_producer_never_run():
    plan = plan_from_trace(_trace(GROUPS, READS, outputs=OUTPUTS))
    assert _names(plan) == [["stem", "bn"], ["left", "right"], ["gn"], ["head"], ["unused"]]
    assert plan.never_run == ["unused"] and plan.order_source == "hooks"
    assert plan.buffers == ["bn.running_mean"]
    assert [s.index for s in plan.stages] == list(range(5))


def test_rule_norm_reading_a_non_output_gets_its_own_stage():
    # a pre-norm transformer: the norm reads the residual stream, which no leaf module returned
    groups = [_g("emb"), _g("ln", "layernorm"), _g("qkv")]
    plan = plan_from_trace(_trace(groups, {"emb": "ids", "ln": "resid", "qkv": "ln_out"}, outputs={"ln_out": "ln"}))
    assert _names(plan) == [["emb"], ["ln"], ["qkv"]]


def test_rule_consecutive_index_inputs_share_a_stage():
    groups = [_g("word"), _g("pos"), _g("type"), _g("ln", "layernorm"), _g("fc")]
    reads = {"word": "ids", "pos": "pos_ids", "type": "type_ids", "ln": "emb_sum", "fc": "ln_out"}
    plan = plan_from_trace(_trace(groups, reads, ints={"word", "pos", "type"}))
    assert _names(plan) == [["word", "pos", "type"], ["ln"], ["fc"]]


def test_rules_skip_a_leaf_without_group_and_keep_first_call_order():
    # "lm_head" ran but owns only a tied alias: no group, and it breaks no chain
    groups = [_g("b"), _g("a")]
    plan = plan_from_trace(_trace(groups, {"a": "x", "lm_head": "y", "b": "z"}, tied={"lm_head.weight": "a.weight"}))
    assert _names(plan) == [["a"], ["b"]]
    assert plan.tied == {"lm_head.weight": "a.weight"}


def test_rules_container_parameters_from_the_export_graph():
    containers = [_p("cls_token"), _p("pos_embed"), _p("scale"), _p("dead")]
    first_use = {"stem.weight": 1, "cls_token": 2, "pos_embed": 3, "left.weight": 4, "head.weight": 8, "scale": 9}
    plan = plan_from_trace(_trace(GROUPS, READS, outputs=OUTPUTS, containers=containers, first_use=first_use))
    assert plan.order_source == "hooks+export graph"
    assert _names(plan) == [
        ["stem", "bn"],
        ["cls_token", "pos_embed"],  # used after stem, before left: a new stage just before left's
        ["left", "right"],
        ["gn"],
        ["head"],
        ["scale"],  # used after every leaf: a stage of its own at the end
        ["unused", "dead"],  # never ran / never read by the graph
    ]
    assert plan.never_run == ["unused", "dead"]


def test_rules_container_parameters_by_declaration_without_a_graph():
    declared = ["scale", "stem.weight", "stem.bias", "head.weight", "head.bias", "tail"]
    containers = [_p("scale"), _p("tail")]
    plan = plan_from_trace(_trace(GROUPS, READS, outputs=OUTPUTS, containers=containers, declared=declared))
    assert plan.order_source == "hooks+declared"
    assert _names(plan)[0] == ["scale"] and _names(plan)[1] == ["stem", "bn"]
    assert _names(plan)[-2:] == [["tail"], ["unused"]]  # no leaf declared after it: after every stage


# ------------------------------------------------------------------------------------------------ matching
def _plan():
    groups = [*GROUPS, _p("scale")]
    return plan_from_trace(_trace(groups, {**READS, "scale": "s"}, outputs=OUTPUTS))


@pytest.mark.parametrize("regex", [r"^(left|right)\.", r"\.bias$", "^gn|^head", "scale", "nothing"])
def test_matcher_params_and_groups_agree(regex):
    plan = _plan()
    matcher = GroupMatcher(plan.groups(), plan.tied)
    rx = re.compile(regex)
    by_params = {i for i, g in enumerate(matcher.groups) if set(g.param_names) & set(matcher.params(rx))}
    assert set(matcher.group_indices(rx)) == by_params
    assert matcher.params(rx) == [p for g in plan.groups() for p in g.param_names if rx.search(p)]


def test_matcher_tied_aliases_only_when_given():
    groups = [_g("wte", params=("weight",)), _g("ln_f", "layernorm")]
    tied = {"lm_head.weight": "wte.weight"}
    rx = re.compile("^lm_head")
    assert GroupMatcher(groups, tied).group_indices(rx) == [0]
    assert GroupMatcher(groups).group_indices(rx) == []


def _schedule_starts(plan, schedule):
    config = build(ConnectConfig, {"schedule": schedule})
    return schedule_start_ticks(plan, config.schedule)


def test_overrides_and_schedules_select_the_same_groups():
    plan = _plan()
    regexes = [r"^(stem|bn)\.", r"^(left|right|gn)\.", r"^(head|unused)\.|^scale$"]
    explicit = apply_overrides(plan, {"stages": [[rx] for rx in regexes]})
    matcher = GroupMatcher(plan.groups())
    for stage, rx in zip(explicit.stages, regexes, strict=True):
        assert [g.name for g in stage.groups] == [
            matcher.groups[i].name for i in matcher.group_indices(re.compile(rx))
        ]
    # The schedule starts each automatic stage at the earliest tick of the entries selecting its parameters.
    starts = _schedule_starts(plan, [{"match": rx, "start": 10 * i} for i, rx in enumerate(regexes)])
    assert starts == [0, 10, 10, 20, 20, 20]  # stages: stem+bn, left+right, gn, head, scale, unused
    with pytest.raises(ConfigError, match="no entry matches these parameters: left.weight"):
        _schedule_starts(plan, [{"match": regexes[0], "start": 0}, {"match": regexes[2], "start": 5}])


# -------------------------------------------------------------------------- errors when settings are built
def _problems(values):
    with pytest.raises(ConfigError) as e:
        build(ConnectConfig, values)
    return str(e.value)


def test_override_errors_when_the_config_is_built():
    msg = _problems({"stages": [{"match": "(", "stage": 0}]})
    assert "stages[0].match='('" in msg and "invalid regex" in msg and "allowed: a Python regular expression" in msg
    msg = _problems({"stages": [{"match": "^a", "stage": 0, "extra": 1}]})
    assert "stages[0]" in msg and "'extra': 1" in msg and "exactly the keys match and stage" in msg
    msg = _problems({"stages": [{"match": 3, "stage": "middle"}, {"match": "^a", "stage": True}]})
    assert "stages[0].match=3" in msg and "must be a regex string" in msg
    assert "stages[0].stage='middle'" in msg and "stages[1].stage=True" in msg
    assert "allowed: an integer >= 0 (a stage of the automatic plan), first, last" in msg
    msg = _problems({"stages": {"stages": [["^a", "["], []], "more": 1}})
    assert "a mapping must be {stages: [[regex, ...], ...]}; got keys ['more', 'stages']" in msg
    msg = _problems({"stages": {"stages": [["^a", "["], []]}})
    assert "stages.stages[0][1]='['" in msg and "invalid regex" in msg
    assert "stages.stages[1]: must be a non-empty list of regexes, got []" in msg
    assert "allowed: a list of {match, stage} entries" in _problems({"stages": "groups.yaml"})


def test_schedule_regex_error_when_the_config_is_built():
    msg = _problems({"schedule": [{"match": "^a", "start": 0}, {"match": "[", "start": 10}]})
    assert "schedule[1].match='['" in msg and "invalid regex" in msg and "unterminated character set" in msg


def test_typed_overrides_round_trip_and_apply():
    config = build(ConnectConfig, {"stages": [{"match": "^head", "stage": "first"}]})
    assert config.stages == [MoveOverride(match="^head", stage="first")]
    assert config.model_dump()["stages"] == [{"match": "^head", "stage": "first"}]
    moved = apply_overrides(_plan(), config.stages)
    assert _names(moved)[0] == ["stem", "bn", "head"]
    config = build(ConnectConfig, {"stages": {"stages": [".", ["^x"]]}})
    assert isinstance(config.stages, ExplicitStages) and config.model_dump()["stages"] == {"stages": [".", ["^x"]]}
    assert load_overrides([{"match": "a", "stage": 1}]) == [MoveOverride(match="a", stage=1)]
