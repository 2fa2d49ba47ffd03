"""Settings schemas: 2 named the methods (`cross-sphere` is M2O then M2M, `m2o` the walk to the origin), 3 wrote
the settings in blocks (`m2m:`, `repair:`, `certify:`, …). Files written before (no `schema_version`, or flat keys)
are read with the names and keys they were written with, with one line saying so; a bare flat key on the command
line or in `config=` is still read (docs/cli.md#settings-schema)."""

import argparse
import logging

import pytest
import yaml
from conftest import connect_killed_after

import hf_llpf
import hf_llpf.run.state as resume_state
from hf_llpf.cli.connect import _config
from hf_llpf.config import (
    BLOCKS,
    GROUPED,
    SCHEMA,
    WRITTEN_ORDER,
    ConnectConfig,
    build,
    flat_settings,
    grouped_key,
    upgrade_settings,
)
from hf_llpf.errors import ConfigError
from hf_llpf.recipes import to_yaml
from hf_llpf.run.layout import CHECKPOINT_DIR, CONFIG_YAML
from hf_llpf.run.resume import _differences, read_checkpoint

SCHEMA_1_NOTICE = "has no settings schema (written before schema 2): its method 'm2o' is read as 'cross-sphere'"
FLAT_NOTICE = f"its flat keys are read into the blocks of settings schema {SCHEMA}"


def _args(recipe, method=None, overrides=()):
    return argparse.Namespace(recipe=None if recipe is None else str(recipe), data=None, method=method,
                              overrides=list(overrides))  # fmt: skip


def test_a_recipe_without_a_schema_reads_m2o_as_cross_sphere_and_says_so(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("method: m2o\nm2o:\n  lr_policy: var\n")
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        config = _config(_args(old))
    assert (config.method, config.schema_version, config.m2o.lr_policy) == ("cross-sphere", SCHEMA, "var")
    assert [r.getMessage() for r in caplog.records] == [f"recipe {old} {SCHEMA_1_NOTICE}, that method's name now"]


def test_schema_2_names_are_read_as_written_and_m2o_connects_nothing(tmp_path, caplog):
    new = tmp_path / "new.yaml"
    new.write_text("schema_version: 3\nmethod: cross-sphere\n")
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        assert _config(_args(new)).method == "cross-sphere"
        assert _config(_args(new, method="m2m")).method == "m2m"  # the command line is schema 2
    assert caplog.records == []
    current = {"schema_version": SCHEMA, "method": "m2o"}
    assert upgrade_settings(current, where="x") == (current, None)
    with pytest.raises(ConfigError) as err:
        build(ConnectConfig, {"schema_version": SCHEMA + 1})
    assert "schema_version" in str(err.value) and str(SCHEMA + 1) in str(err.value)


def test_a_run_directory_of_schema_1_resumes_with_its_method_renamed(tmp_path, caplog):
    written = ConnectConfig(method="cross-sphere").model_dump(mode="json")  # flat, as schema 1 wrote it
    del written["schema_version"]
    written["method"] = "m2o"  # as schema 1 wrote a cross-sphere run
    (tmp_path / CONFIG_YAML).write_text(yaml.safe_dump(written, sort_keys=False))
    resume_state.save(tmp_path / CHECKPOINT_DIR, {"method": "m2o", "done": False, "state": {}},
                      write_text=lambda p, text: p.write_text(text))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        saved, now, differing = _differences(tmp_path, ConnectConfig(method="cross-sphere"))
    assert differing == [] and saved["method"] == "cross-sphere"
    [notice] = [r.getMessage() for r in caplog.records]
    assert notice.startswith(f"{tmp_path / CONFIG_YAML} {SCHEMA_1_NOTICE}, that method's name now; {FLAT_NOTICE} (")
    assert f"… ({len(GROUPED)} in all)" in notice
    ckpt = read_checkpoint(tmp_path)
    assert (ckpt["method"], ckpt["schema_version"]) == ("cross-sphere", SCHEMA)


def test_every_setting_is_written_once_in_its_block_or_at_the_top():
    attrs = [attr for keys in BLOCKS.values() for attr in keys.values()]
    assert len(attrs) == len(set(attrs)) == len(GROUPED)
    top = [name for name in WRITTEN_ORDER if name not in BLOCKS]
    assert sorted(attrs + top) == sorted(ConnectConfig.model_fields)
    assert (GROUPED["repair_budget"], GROUPED["certify_segments"], GROUPED["step_r"]) == (
        "repair.budget",
        "certify.segments",
        "m2m.step_r",
    )


def test_llpf_config_is_written_in_blocks_and_reads_back_the_same():
    config = ConnectConfig(step_r=0.1, lr=0.03, repair_budget=40, certify_delta=0.01, point_dtype="bf16",
                           loss_limit=5.0, schedule=[{"match": "^fc", "start": 0}], m2o={"step_a": 0.02})  # fmt: skip
    written = yaml.safe_load(to_yaml(config))
    assert list(written) == list(WRITTEN_ORDER) and written["schema_version"] == SCHEMA == 3
    assert written["m2m"]["step_r"] == 0.1 and written["m2m"]["schedule"] == [{"match": "^fc", "start": 0}]
    assert (written["repair"]["lr"], written["repair"]["budget"], written["certify"]["delta"]) == (0.03, 40, 0.01)
    assert (written["storage"]["point_dtype"], written["guard"]["loss_limit"], written["m2o"]["step_a"]) == (
        "bf16",
        5.0,
        0.02,
    )
    assert "lr" not in written and "repair_budget" not in written["repair"]
    assert build(ConnectConfig, written) == config
    assert build(ConnectConfig, config.model_dump()) == config  # the flat attributes are still read


def test_overrides_reach_the_blocks_and_a_bare_key_is_its_blocks(tmp_path, caplog):
    recipe = tmp_path / "grouped.yaml"
    recipe.write_text("schema_version: 3\nm2m:\n  step_r: 0.1\nrepair:\n  lr: 0.5\n  min_iters: 3\n")
    overrides = ["m2m.step_a=0.2", "repair.momentum=0.5", "lr=0.01", "certify_segments=false", "m2o.step_a=0.03"]
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        config = _config(_args(recipe, overrides=overrides))
    assert caplog.records == []  # the command line's bare keys are read without a notice
    assert (config.step_r, config.step_a, config.lr, config.momentum, config.min_iters) == (0.1, 0.2, 0.01, 0.5, 3)
    assert (config.certify_segments, config.m2o.step_a) == (False, 0.03)
    assert config == _config(
        _args(
            None,
            overrides=[
                "m2m.step_r=0.1",
                "step_a=0.2",
                "repair.lr=0.01",
                "min_iters=3",
                "momentum=0.5",
                "certify.segments=false",
                "m2o.step_a=0.03",
            ],
        )
    )
    assert (grouped_key("repair_budget"), grouped_key("m2o.step_a"), grouped_key("data.source")) == (
        "repair.budget",
        "m2o.step_a",
        "data.source",
    )


def test_a_flat_recipe_of_schema_2_is_read_into_the_blocks_with_one_line(tmp_path, caplog):
    old = tmp_path / "flat.yaml"
    old.write_text("schema_version: 2\nmethod: m2m\nstep_r: 0.02\nlr: 0.01\nrepair_budget: 30\nsave_every: 10\n")
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        config = _config(_args(old))
    assert (config.step_r, config.lr, config.repair_budget, config.save_every) == (0.02, 0.01, 30, 10)
    assert config.schema_version == SCHEMA
    assert [r.getMessage() for r in caplog.records] == [
        f"recipe {old}: {FLAT_NOTICE} (step_r → m2m.step_r, lr → repair.lr, repair_budget → repair.budget, … "
        "(4 in all))"
    ]
    grouped = {"m2m": {"step_r": 0.02}, "repair": {"lr": 0.01, "budget": 30}, "storage": {"save_every": 10}}
    assert build(ConnectConfig, {"method": "m2m", **grouped}) == config


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"repair": {"lr": -1}}, "repair.lr=-1: Input should be greater than 0"),
        ({"lr": -1}, "repair.lr=-1: Input should be greater than 0"),
        (
            {"repair": {"lrr": 1}},
            "repair.lrr: unknown key (did you mean 'lr'?); valid keys: " + ", ".join(BLOCKS["repair"]),
        ),
        ({"step_rr": 1}, "step_rr: unknown key (did you mean 'm2m.step_r'?); valid keys: " + ", ".join(WRITTEN_ORDER)),
        ({"m2m": {"max_ticks": True}}, "m2m.max_ticks=True: expected a number, not a boolean"),
        ({"repair": {"lr": 0.1}, "lr": 0.2}, "repair.lr and lr: one setting given twice; write repair.lr only"),
        ({"repair": 5}, "repair=5: a block of settings, a mapping of " + ", ".join(BLOCKS["repair"])),
        ({"repair": {"min_iters": 9, "max_iters": 5}}, "repair.max_iters (5) must be >= repair.min_iters (9)"),
        ({"certify": {"clip": -1}}, "certify.clip=-1.0: must be > 0 or 'auto'"),
    ],
)
def test_a_wrong_setting_is_named_as_it_is_written(values, problem):
    with pytest.raises(ConfigError) as err:
        build(ConnectConfig, values)
    assert err.value.problems == [problem]


def test_the_settings_check_still_lists_every_problem_of_the_blocks():
    with pytest.raises(ConfigError) as err:
        build(ConnectConfig, {"repair": {"lr": -1, "lrr": 1}, "storage": {"point_dtype": "fp8"}, "guard": None})
    assert [p.split(":")[0].split("=")[0] for p in err.value.problems] == [
        "repair.lr",
        "storage.point_dtype",
        "repair.lrr",
    ]


def _flat_schema_2(run):
    """Rewrite ``run``'s llpf_config.yaml as hf_llpf wrote it under schema 2: every setting flat."""
    flat = flat_settings(yaml.safe_load((run / CONFIG_YAML).read_text()))
    (run / CONFIG_YAML).write_text(yaml.safe_dump({**flat, "schema_version": 2}, sort_keys=False))


FAST = {"m2m": {"step_r": 0.25, "arrival_tol": 0.05}, "repair": {"min_iters": 1, "max_iters": 2},
        "storage": {"checkpoint_every": 1}, "certify": {"loss_ceiling": None}}  # fmt: skip


def test_a_run_directory_written_flat_resumes_and_is_written_in_blocks_again(
    small_cnn_pair, digits, tmp_path, monkeypatch, caplog
):
    a, b = small_cnn_pair
    run = tmp_path / "run"
    connect_killed_after(3, monkeypatch, a, b, digits, config=FAST, run_dir=run, progress=False)
    _flat_schema_2(run)
    changed = {**FAST, "repair": {**FAST["repair"], "lr": 0.5}}
    with pytest.raises(
        ConfigError,
        match=r"--resume: repair\.lr was 0\.02 in .*, now 0\.5 \(a resume may change only "
        r"m2m\.step_a, m2m\.step_r, m2m\.step_f, repair\.min_iters, repair\.max_iters, repair\.budget",
    ):
        hf_llpf.connect(a, b, digits, config=changed, run_dir=run, exist="resume", progress=False)  # fmt: skip
    assert yaml.safe_load((run / CONFIG_YAML).read_text())["schema_version"] == 2  # a refused resume writes nothing
    caplog.clear()
    longer = {**FAST, "repair": {**FAST["repair"], "max_iters": 3}}  # a change a resume may make
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        path = hf_llpf.connect(a, b, digits, config=longer, run_dir=run, exist="resume", progress=False)
    assert path.metrics[-1]["phase"] == "end"
    assert [r["changed"] for r in path.summary["run"]["resumed_with"]] == [{"max_iters": [2, 3]}]
    assert [r.getMessage()[: len(str(run / CONFIG_YAML)) + 2] for r in caplog.records] == [f"{run / CONFIG_YAML}: "]
    rewritten = yaml.safe_load((run / CONFIG_YAML).read_text())  # the settings in force, in blocks now
    assert rewritten["schema_version"] == SCHEMA and rewritten["repair"]["max_iters"] == 3 and "lr" not in rewritten
