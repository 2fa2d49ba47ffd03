"""Settings schema 2: `cross-sphere` is M2O then M2M, `m2o` the walk to the origin; files written before it (no
`schema`) are read with the names they were written with, with one line saying so (docs/cli.md#settings-schema)."""

import argparse
import logging

import pytest
import yaml

import hf_llpf.run.state as resume_state
from hf_llpf.cli.connect import _config
from hf_llpf.config import SCHEMA, ConnectConfig, build, upgrade_settings
from hf_llpf.errors import ConfigError
from hf_llpf.recipes import to_yaml
from hf_llpf.run.layout import CHECKPOINT_DIR, CONFIG_YAML
from hf_llpf.run.resume import _differences, read_checkpoint

SCHEMA_1_NOTICE = "has no settings schema (written before schema 2): its method 'm2o' is read as 'cross-sphere'"


def _args(recipe, method=None):
    return argparse.Namespace(recipe=str(recipe), data=None, method=method, overrides=[])


def test_a_recipe_without_a_schema_reads_m2o_as_cross_sphere_and_says_so(tmp_path, caplog):
    old = tmp_path / "old.yaml"
    old.write_text("method: m2o\nm2o:\n  lr_policy: var\n")
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        config = _config(_args(old))
    assert (config.method, config.schema_version, config.m2o.lr_policy) == ("cross-sphere", SCHEMA, "var")
    assert [r.getMessage() for r in caplog.records] == [f"recipe {old} {SCHEMA_1_NOTICE}, that method's name now"]


def test_schema_2_names_are_read_as_written_and_m2o_connects_nothing(tmp_path, caplog):
    new = tmp_path / "new.yaml"
    new.write_text("schema_version: 2\nmethod: cross-sphere\n")
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        assert _config(_args(new)).method == "cross-sphere"
        assert _config(_args(new, method="m2m")).method == "m2m"  # the command line is schema 2
    assert caplog.records == []
    current = {"schema_version": 2, "method": "m2o"}
    assert upgrade_settings(current, where="x") == (current, None)
    with pytest.raises(ConfigError) as err:
        build(ConnectConfig, {"schema_version": SCHEMA + 1})
    assert "schema_version" in str(err.value) and str(SCHEMA + 1) in str(err.value)


def test_a_run_directory_of_schema_1_resumes_with_its_method_renamed(tmp_path, caplog):
    written = yaml.safe_load(to_yaml(ConnectConfig(method="cross-sphere")))
    del written["schema_version"]
    written["method"] = "m2o"  # as schema 1 wrote a cross-sphere run
    (tmp_path / CONFIG_YAML).write_text(yaml.safe_dump(written, sort_keys=False))
    resume_state.save(tmp_path / CHECKPOINT_DIR, {"method": "m2o", "done": False, "state": {}},
                      write_text=lambda p, text: p.write_text(text))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        saved, now, differing = _differences(tmp_path, ConnectConfig(method="cross-sphere"))
    assert differing == [] and saved["method"] == "cross-sphere"
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / CONFIG_YAML} {SCHEMA_1_NOTICE}, that method's name now"
    ]
    ckpt = read_checkpoint(tmp_path)
    assert (ckpt["method"], ckpt["schema_version"]) == ("cross-sphere", SCHEMA)
