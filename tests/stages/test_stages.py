"""hf_llpf.stages: Follow-Data-Flow stages for the supported models, tied weights, overrides (issue 3)."""

import torch

torch.set_num_threads(1)

import json  # noqa: E402

import pytest  # noqa: E402
import timm  # noqa: E402
from tiny_models import tiny_bert, tiny_gpt2  # noqa: E402
from torch import nn  # noqa: E402

import hf_llpf.stages as L  # noqa: E402
import hf_llpf.zoo  # noqa: E402,F401  (registers small_cnn, lenet5, cifar_resnet18 with timm)
from hf_llpf.errors import ConfigError, UnknownNameError  # noqa: E402
from hf_llpf.stages import trace as stage_trace  # noqa: E402

IMG = torch.randn(2, 3, 32, 32)
GRAY = torch.randn(2, 1, 32, 32)
IDS = torch.randint(0, 100, (2, 8))


def _timm(name, **kw):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=10, **kw)


def _vit_timm():
    return _timm("vit_tiny_patch16_224", img_size=32, patch_size=4, depth=2)


def _bert():
    return tiny_bert(0, vocab_size=100, num_hidden_layers=2).train()


def _gpt2():
    return tiny_gpt2(0).train()


def _vit_hf():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
    )
    return ViTForImageClassification(cfg)


# name -> (builder, example batch)
MODELS = {
    "small_cnn": (lambda: _timm("small_cnn", in_chans=1), GRAY),
    "lenet5": (lambda: _timm("lenet5", in_chans=1), GRAY),
    "cifar_resnet18": (lambda: _timm("cifar_resnet18", width=8), IMG),
    "resnet18": (lambda: _timm("resnet18"), IMG),
    "mobilenetv2_100": (lambda: _timm("mobilenetv2_100"), IMG),
    "efficientnet_b0": (lambda: _timm("efficientnet_b0"), IMG),
    "regnetx_002": (lambda: _timm("regnetx_002"), IMG),
    "dla34": (lambda: _timm("dla34"), IMG),
    "vit_timm": (_vit_timm, IMG),
    "bert": (_bert, {"input_ids": IDS, "attention_mask": torch.ones_like(IDS)}),
    "gpt2": (_gpt2, {"input_ids": IDS}),
    "vit_hf": (_vit_hf, {"pixel_values": IMG}),
}

_CACHE: dict = {}


def _built(name):
    """(model, plan), built once per test session (building is the slow part)."""
    if name not in _CACHE:
        build, batch = MODELS[name]
        model = build()
        _CACHE[name] = (model, L.build_stages(model, batch))
    return _CACHE[name]


def _assert_coverage(model, plan):
    names = [p for g in plan.groups() for p in g.param_names]
    assert len(names) == len(set(names)), "a parameter is in two groups"
    assert set(names) == {n for n, _ in model.named_parameters()}  # canonical names, each once
    all_names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    assert set(plan.tied) == all_names - set(names)
    params = dict(model.named_parameters())
    for g in plan.groups():
        assert g.numel == sum(params[p].numel() for p in g.param_names)
    assert plan.buffers == [n for n, _ in model.named_buffers()]
    assert [s.index for s in plan.stages] == list(range(len(plan.stages)))
    assert all(s.groups for s in plan.stages)


# name -> a parameter of the classifier head, which must be in the last stage
HEADS = {
    "small_cnn": "head.weight",
    "lenet5": "head.weight",
    "cifar_resnet18": "fc.weight",
    "resnet18": "fc.weight",
    "mobilenetv2_100": "classifier.weight",
    "efficientnet_b0": "classifier.weight",
    "regnetx_002": "head.fc.weight",
    "dla34": "fc.weight",
    "vit_timm": "head.weight",
    "bert": "classifier.weight",
    "gpt2": "transformer.ln_f.weight",  # lm_head is tied to wte: the final norm is the last own group
    "vit_hf": "classifier.weight",
}


@pytest.mark.parametrize("name", list(MODELS))
def test_coverage_and_head_last(name):
    model, plan = _built(name)
    _assert_coverage(model, plan)
    assert plan.never_run == []
    assert plan.stage_of(HEADS[name]) == len(plan.stages) - 1


def _check_shortcut(plan, conv1, shortcut, next_block_first):
    s = plan.stage_of(shortcut)
    assert s in (plan.stage_of(conv1), plan.stage_of(conv1) + 1)
    assert s < plan.stage_of(next_block_first)


@pytest.mark.parametrize("name", ["cifar_resnet18", "resnet18"])
def test_resnet_downsample_with_first_conv(name):
    model, plan = _built(name)
    for layer in (2, 3, 4):
        _check_shortcut(
            plan, f"layer{layer}.0.conv1.weight", f"layer{layer}.0.downsample.0.weight", f"layer{layer}.1.conv1.weight"
        )
        assert plan.stage_of(f"layer{layer}.0.downsample.1.weight") == plan.stage_of(
            f"layer{layer}.0.downsample.0.weight"
        )
    assert plan.stage_of("conv1.weight") == plan.stage_of("bn1.weight") == 0  # conv + bn move together
    assert plan.order_source == "hooks"


def test_regnet_downsample_with_first_conv():
    _, plan = _built("regnetx_002")
    _check_shortcut(plan, "s3.b1.conv1.conv.weight", "s3.b1.downsample.conv.weight", "s3.b2.conv1.conv.weight")


def test_dla_project_before_its_tree():
    _, plan = _built("dla34")
    assert plan.stage_of("level2.project.0.weight") < plan.stage_of("level2.root.conv.weight")
    assert plan.stage_of("level3.tree1.project.0.weight") <= plan.stage_of("level3.tree1.tree1.conv1.weight")


@pytest.mark.parametrize("name", ["mobilenetv2_100", "efficientnet_b0"])
def test_conv_nets_stem_first_and_bn_joins_conv(name):
    model, plan = _built(name)
    assert plan.stage_of("conv_stem.weight") == plan.stage_of("bn1.weight") == 0
    assert plan.stage_of("classifier.weight") == len(plan.stages) - 1
    kinds = {type(m).__name__: L.norm_kind(m) for m in model.modules()}
    assert kinds["BatchNormAct2d"] == "batchnorm"
    for g in plan.groups():
        assert (g.norm == "batchnorm") == (g.module_type == "BatchNormAct2d")


def test_vit_timm_order():
    _, plan = _built("vit_timm")
    assert plan.order_source == "hooks+export graph"
    first_block = plan.stage_of("blocks.0.norm1.weight")
    assert plan.stage_of("cls_token") < first_block and plan.stage_of("pos_embed") < first_block
    assert plan.stage_of("patch_embed.proj.weight") < first_block
    for b in (0, 1):
        assert plan.stage_of(f"blocks.{b}.norm1.weight") < plan.stage_of(f"blocks.{b}.attn.qkv.weight")
        assert plan.stage_of(f"blocks.{b}.attn.qkv.weight") < plan.stage_of(f"blocks.{b}.attn.proj.weight")
    assert plan.stage_of("blocks.0.mlp.fc2.weight") < plan.stage_of("blocks.1.norm1.weight")
    assert plan.stage_of("head.weight") == len(plan.stages) - 1
    groups = {g.name: g for g in plan.groups()}
    assert groups["cls_token"].module_type == "Parameter"
    assert groups["blocks.0.norm1"].norm == "layernorm"


def test_vit_hf_order():
    _, plan = _built("vit_hf")
    assert plan.order_source == "hooks+export graph"
    for b in (0, 1):
        pre = f"vit.layers.{b}"
        ln = plan.stage_of(f"{pre}.layernorm_before.weight")
        qkv = {plan.stage_of(f"{pre}.attention.{x}_proj.weight") for x in "qkv"}
        assert len(qkv) == 1 and ln < qkv.pop()
    first = plan.stage_of("vit.layers.0.layernorm_before.weight")
    assert plan.stage_of("vit.embeddings.cls_token") < first
    assert plan.stage_of("vit.embeddings.position_embeddings") < first
    assert plan.stage_of("classifier.weight") == len(plan.stages) - 1


def test_bert_order():
    _, plan = _built("bert")
    emb = [f"bert.embeddings.{e}_embeddings.weight" for e in ("word", "position", "token_type")]
    assert {plan.stage_of(e) for e in emb} == {0}
    for b in (0, 1):
        qkv = {plan.stage_of(f"bert.encoder.layer.{b}.attention.self.{x}.weight") for x in ("query", "key", "value")}
        assert len(qkv) == 1
    assert plan.stage_of("classifier.weight") == len(plan.stages) - 1
    groups = {g.name: g for g in plan.groups()}
    assert groups["bert.embeddings.LayerNorm"].norm == "layernorm"


def test_gpt2_tied_once():
    model, plan = _built("gpt2")
    assert plan.tied == {"lm_head.weight": "transformer.wte.weight"}
    assert plan.param_names().count("transformer.wte.weight") == 1
    assert "lm_head.weight" not in plan.param_names()
    assert plan.stage_of("lm_head.weight") == plan.stage_of("transformer.wte.weight") == 0  # alias resolves
    assert plan.stage_of("transformer.h.0.ln_1.weight") < plan.stage_of("transformer.h.0.attn.c_attn.weight")
    assert plan.stage_of("transformer.ln_f.weight") == len(plan.stages) - 1


def test_json_round_trip():
    _, plan = _built("vit_timm")
    d = json.loads(json.dumps(plan.to_json()))
    assert L.StagePlan.from_json(d) == plan
    with pytest.raises(ConfigError):
        L.StagePlan.from_json({"stages": []})


def test_stage_of_unknown_name():
    _, plan = _built("small_cnn")
    with pytest.raises(UnknownNameError):
        plan.stage_of("nope.weight")


# ---------------------------------------------------------------------------------------- custom models
class TwoBranch(nn.Module):
    """Parallel branches reading one tensor, a module that never runs, a root parameter used last."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)  # named "bn" but it is the type that counts
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)
        self.gn = nn.GroupNorm(2, 4)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        x = torch.relu_(self.bn(self.stem(x)))  # in-place ReLU on a tensor the hooks saw
        x = self.gn(self.left(x) + self.right(x))
        return self.head(x.mean(dim=(2, 3))) * self.scale


def test_parallel_branches_never_run_and_container_param():
    model = TwoBranch()
    model.bn.eval()  # a per-module mode that must survive
    plan = L.build_stages(model, (IMG, torch.tensor([0, 1])))  # (inputs, labels): labels dropped
    _assert_coverage(model, plan)
    names = [[g.name for g in s.groups] for s in plan.stages]
    assert names == [["stem", "bn"], ["left", "right"], ["gn"], ["head"], ["scale"], ["unused"]]
    assert plan.never_run == ["unused"]
    assert plan.order_source == "hooks+export graph"
    kinds = {g.name: g.norm for g in plan.groups()}
    assert kinds == {"stem": None, "bn": "batchnorm", "left": None, "right": None, "gn": "groupnorm",
                     "head": None, "scale": None, "unused": None}  # fmt: skip
    assert model.training and not model.bn.training and model.head.training
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_declared_fallback_when_export_fails(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("no graph")

    monkeypatch.setattr(stage_trace, "_export_first_use", boom)
    model = TwoBranch()
    plan = L.build_stages(model, IMG)
    assert plan.order_source == "hooks+declared"
    # named_parameters() lists a module's own parameters before its children's: the root's `scale` comes first.
    assert [g.name for g in plan.stages[0].groups] == ["scale"]
    assert [g.name for g in plan.stages[1].groups] == ["stem", "bn"]
    _assert_coverage(model, plan)


def test_forward_fn_and_hooks_removed_on_error():
    model = TwoBranch()
    plan = L.build_stages(model, {"x": IMG}, forward_fn=lambda m, b: m(b["x"]))
    assert plan.stage_of("head.weight") == 3

    def bad(m, b):
        raise ValueError("forward failed")

    model.train()
    with pytest.raises(ValueError):
        L.build_stages(model, IMG, forward_fn=bad)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_batch_type():
    with pytest.raises(ConfigError):
        L.build_stages(TwoBranch(), 3.0)


def test_norm_kind_by_type_not_name():
    class bn(nn.Linear):  # noqa: N801  (a misleading class name: still a Linear)
        pass

    assert L.norm_kind(bn(2, 2)) is None
    assert L.norm_kind(nn.LayerNorm(4)) == "layernorm"
    assert L.norm_kind(nn.RMSNorm(4)) == "rmsnorm"
    assert L.norm_kind(nn.BatchNorm1d(4)) == "batchnorm"
    assert L.norm_kind(nn.InstanceNorm2d(4, affine=True)) == "groupnorm"
    assert L.norm_kind(timm.layers.RmsNorm(4)) == "rmsnorm"


# ------------------------------------------------------------------------------------------------ overrides
def _plan():
    model = TwoBranch()
    return model, L.build_stages(model, IMG)


def test_override_moves():
    model, plan = _plan()
    new = L.apply_overrides(plan, [{"match": r"^head\.", "stage": "first"}, {"match": "unused", "stage": 2}], model)
    names = [[g.name for g in s.groups] for s in new.stages]
    assert names == [["stem", "bn", "head"], ["left", "right"], ["gn", "unused"], ["scale"]]
    assert new.order_source.endswith("+overrides")
    _assert_coverage(model, new)
    last = L.apply_overrides(plan, [{"match": "^stem", "stage": "last"}])
    assert [g.name for g in last.stages[-1].groups] == ["stem", "unused"]


def test_override_explicit_and_yaml(tmp_path):
    model, plan = _plan()
    path = tmp_path / "groups.yaml"
    path.write_text("stages:\n  - ['^stem', '^bn']\n  - ['^(left|right|gn)']\n  - ['.']\n")
    with pytest.raises(ConfigError) as e:  # '.' also matches the groups of stages 0 and 1
        L.build_stages(model, IMG, overrides=str(path))
    assert "stem" in str(e.value) and "more than one stage" in str(e.value)
    path.write_text("stages:\n  - ['^stem', '^bn']\n  - ['^(left|right|gn)']\n  - ['^(head|scale|unused)']\n")
    new = L.build_stages(model, IMG, overrides=path)
    assert [[g.name for g in s.groups] for s in new.stages] == [
        ["stem", "bn"],
        ["left", "right", "gn"],
        ["head", "scale", "unused"],
    ]


def test_override_errors_list_names():
    _, plan = _plan()
    with pytest.raises(ConfigError) as e:
        L.apply_overrides(plan, {"stages": [["^stem"], ["^head"]]})
    msg = str(e.value)
    for name in ("bn", "left", "right", "gn", "scale", "unused"):
        assert name in msg
    with pytest.raises(ConfigError) as e:
        L.apply_overrides(
            plan,
            [
                {"match": "^nothing_here", "stage": 0},
                {"match": "^left", "stage": 0},
                {"match": "left|right", "stage": 1},
                {"match": "(", "stage": 0},
                {"match": "gn", "stage": 99},
                {"match": "gn"},
            ],
        )
    problems = e.value.problems
    assert any("^nothing_here" in p for p in problems)
    assert any("left" in p and "more than one entry" in p for p in problems)
    assert any("invalid regex" in p for p in problems)
    assert any("99" in p for p in problems)
    assert any("overrides[5]" in p for p in problems)
    with pytest.raises(ConfigError):
        L.load_overrides("/nonexistent/groups.yaml")
    with pytest.raises(ConfigError):
        L.load_overrides(3)


def test_format_stage_table():
    model, plan = _built("cifar_resnet18")
    table = L.format_stage_table(plan, model)
    lines = table.splitlines()
    assert lines[0].split() == ["stage", "group", "module", "type", "parameter", "numel", "variance"]
    assert "layer2.0.downsample.0" in table and "BatchNorm2d [batchnorm]" in table
    assert "order: hooks" in table
    assert len([ln for ln in lines if ln.strip() and ln.split()[-1] != "variance"]) >= len(plan.param_names())
