"""Every shipped recipe loads, validates, names a model that exists, and its stage regexes fit that model; a connect
recipe is written in the blocks of today's settings schema, and its flat form (schema 2) reads the same."""

import argparse
import logging
import re
from pathlib import Path

import pytest
import timm
import torch
import yaml

import hf_llpf  # noqa: F401  (registers the built-in models with timm)
from hf_llpf.cli.connect import _config
from hf_llpf.config import BLOCKS, GROUPED, SCHEMA, WRITTEN_ORDER, ConnectConfig, TrainRecipe, build, flat_settings
from hf_llpf.models.endpoints import create_model
from hf_llpf.recipes import load_recipe
from hf_llpf.stages import build_stages
from hf_llpf.stages.overrides import ExplicitStages

torch.set_num_threads(1)

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
FILES = sorted(RECIPES.glob("*.yaml"))
# Small widths, default depths: the recipes' regexes name blocks by index, which only a full-depth model has.
TINY = {
    "small_cnn": {"width": 4},
    "cifar_resnet18": {"width": 4},
    "cifar_vgg11_bn": {"width": 4},
    "cifar_mobilenetv2": {"width": 0.25},
    "cifar_shufflenetv2": {"width": 0.25},
    "cifar_efficientnet_b0": {"width": 0.25},
    "cifar_regnetx_200mf": {"width": 0.25},
    "cifar_dla": {"width": 2},
    "cct_7_3x1": {"embed_dim": 16, "num_heads": 2},
}


def _kind(path: Path) -> str:
    return "train" if path.stem.endswith("-train") else "llpf" if path.stem.endswith("-llpf") else "other"


def _endpoint_recipe(path: Path) -> TrainRecipe:
    """How the endpoints of a connect recipe are trained: the train recipe its header names, the model its
    ``hf-llpf train MODEL`` command names, or else ``<arch>-<data>-train.yaml`` beside it."""
    header = path.read_text().split("\n\n")[0]
    named = re.search(r"hf-llpf train .*--recipe recipes/(\S+-train\.yaml)", header)
    if named:
        return build(TrainRecipe, load_recipe(RECIPES / named.group(1)))
    command = re.search(r"hf-llpf train (\w+)(?: --data (\S+))?", header)
    if command:
        return build(TrainRecipe, {"model": command.group(1), "data": {"source": command.group(2) or "digits"}})
    arch, data = path.stem.split("-")[:2]
    sibling = RECIPES / f"{arch}-{data}-train.yaml"
    assert sibling.is_file(), f"{path.name}: names no endpoint recipe or model, and {sibling.name} is missing"
    return build(TrainRecipe, load_recipe(sibling))


def _tiny_model(recipe: TrainRecipe) -> torch.nn.Module:
    in_chans = 1 if recipe.data.source in ("digits", "ylecun/mnist") else 3
    args = {"num_classes": 10, "in_chans": in_chans, **recipe.model_args, **TINY.get(recipe.model, {})}
    return create_model(recipe.model, **args).eval()


def test_every_architecture_has_both_recipes():
    stems = {p.stem for p in FILES}
    for arch in ("resnet18", "vgg11_bn", "mobilenetv2", "shufflenetv2", "efficientnet_b0", "regnetx_200mf", "dla"):
        assert {f"{arch}-cifar10-train", f"{arch}-cifar10-llpf"} <= stems
    assert {"cct_7_3x1-cifar10-train", "cct_7_3x1-cifar10-llpf", "lenet5-mnist-train", "lenet5-mnist-llpf"} <= stems
    assert {"digits-small_cnn-train", "digits-small_cnn-llpf"} <= stems
    for arch in ("dla", "cct_7_3x1"):  # the paper also connects these across spheres
        config = build(ConnectConfig, load_recipe(RECIPES / f"{arch}-cifar10-cross-sphere.yaml"))
        assert config.method == "cross-sphere" and config.m2o.lr_policy == "var" and config.schema_version == SCHEMA


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_recipe_starts_with_its_commands(path):
    lines = path.read_text().splitlines()
    assert lines and lines[0].startswith("# "), "a recipe starts with a comment"
    header = "\n".join(line for line in lines[: next(i for i, x in enumerate(lines) if not x.startswith("#"))])
    verb = "train" if _kind(path) == "train" else "connect"
    assert re.search(rf"hf-llpf {verb} .*--recipe recipes/{re.escape(path.name)}", header), header
    assert "Hardware:" in header and "Expected time:" in header


@pytest.mark.parametrize("path", [p for p in FILES if _kind(p) == "train"], ids=lambda p: p.name)
def test_train_recipe_validates_and_its_model_exists(path):
    recipe = build(TrainRecipe, load_recipe(path))
    assert timm.is_model(recipe.model), recipe.model


@pytest.mark.parametrize("path", [p for p in FILES if _kind(p) != "train"], ids=lambda p: p.name)
def test_llpf_recipe_validates_and_its_regexes_fit_the_model(path):
    config = build(ConnectConfig, load_recipe(path))
    model = _tiny_model(_endpoint_recipe(path))
    names = [n for n, _ in model.named_parameters()]
    if config.schedule:
        for entry in config.schedule:
            rx = re.compile(entry.match)
            assert any(rx.search(n) for n in names), f"schedule regex {entry.match!r} matches no parameter"
        unmatched = [n for n in names if not any(re.search(e.match, n) for e in config.schedule)]
        assert not unmatched, f"parameters in no scheduled stage: {unmatched[:5]}"
    if config.stages is not None:
        in_chans = next(model.parameters()).shape[1]
        batch = (torch.zeros(2, in_chans, 32, 32), torch.zeros(2, dtype=torch.long))
        # build_stages raises when a regex matches nothing or (complete form) a group is matched twice or never.
        plan = build_stages(model, batch, overrides=config.stages)
        assert sorted(plan.param_names()) == sorted(names)
        if isinstance(config.stages, ExplicitStages):
            assert len(plan.stages) == len(config.stages.stages)


CONNECT = [p for p in FILES if _kind(p) != "train"]


@pytest.mark.parametrize("path", CONNECT, ids=lambda p: p.name)
def test_connect_recipe_is_written_in_blocks_and_read_without_a_notice(path, caplog):
    values = load_recipe(path)
    assert values["schema_version"] == SCHEMA and set(values) <= set(WRITTEN_ORDER), sorted(
        set(values) - set(WRITTEN_ORDER)
    )
    assert not set(values) & set(GROUPED), "a flat key: write it in its block"
    args = argparse.Namespace(recipe=str(path), data=None, method=None, overrides=[])
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        assert _config(args) == build(ConnectConfig, values)
    assert caplog.records == []


@pytest.mark.parametrize("path", CONNECT, ids=lambda p: p.name)
def test_connect_recipe_written_flat_as_schema_2_reads_the_same(path, tmp_path, caplog):
    flat = {**flat_settings(load_recipe(path)), "schema_version": 2}
    assert not set(flat) & set(BLOCKS)
    old = tmp_path / path.name
    old.write_text(yaml.safe_dump(flat, sort_keys=False))
    args = argparse.Namespace(recipe=str(old), data=None, method=None, overrides=[])
    with caplog.at_level(logging.WARNING, logger="hf_llpf"):
        assert _config(args) == build(ConnectConfig, load_recipe(path))
    [notice] = [r.getMessage() for r in caplog.records]
    assert notice.startswith(f"recipe {old}: its flat keys are read into the blocks of settings schema {SCHEMA} (")


def test_resnet18_recipe_is_the_papers_schedule():
    config = build(ConnectConfig, load_recipe(RECIPES / "resnet18-cifar10-llpf.yaml"))
    starts = [(e.match, e.start) for e in config.schedule]
    assert [s for _, s in starts] == [0, 2000, 4000, 6000, 8000, 10000] and config.max_ticks == 16000
    assert (config.step_a, config.step_f, config.step_r) == (0.001, 0.0, 0.0)
    assert (config.min_iters, config.max_iters, config.loss_threshold) == (20, 20000, 0.005)
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size) == (0.001, 0.0, 0.0, 256)


def test_yaml_keys_are_exactly_the_settings():
    # build() already rejects unknown keys; this also catches a key typed twice (YAML keeps the last one).
    for path in FILES:
        text = path.read_text()
        top = [m.group(1) for m in re.finditer(r"^([A-Za-z_]+):", text, flags=re.M)]
        assert len(top) == len(set(top)), f"{path.name}: a key is given twice"
        assert isinstance(yaml.safe_load(text), dict)
