"""Every architecture family connects at CPU scale, and every built-in architecture saves and loads.

The per-family run is :func:`benchmarks.families.run_family` (the README table's script): tiny endpoints
trained from seeds 0 and 1, M2M over the stages of the family's LLPF recipe, evaluation in eval mode.
LeNet5 (the cheapest) runs in the fast suite, the cheap families in the slow suite (CI), the rest under the
``families`` marker.
"""

import pytest
import torch
from conftest import state_equal

import hf_llpf  # noqa: F401  (registers the built-in models with timm)
from benchmarks.families import FAMILIES, run_family
from hf_llpf.models.endpoints import as_endpoint, create_model, load_endpoint, save_model
from hf_llpf.zoo import BUILTIN_MODELS

torch.set_num_threads(1)

TINY = {
    "small_cnn": {"width": 4},
    "cifar_resnet18": {"width": 4},
    "cifar_vgg11_bn": {"width": 4},
    "cifar_mobilenetv2": {"width": 0.25, "depth": 0.34},
    "cifar_shufflenetv2": {"width": 0.25, "depth": 0.25},
    "cifar_efficientnet_b0": {"width": 0.25, "depth": 0.25},
    "cifar_regnetx_200mf": {"width": 0.25, "depth": 0.25},
    "cifar_dla": {"width": 2},
    "cct_7_3x1": {"embed_dim": 16, "depth": 2, "num_heads": 2},
}


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_model_saves_and_loads_bit_for_bit(name, tmp_path):
    model = create_model(name, num_classes=7, in_chans=3, **TINY.get(name, {})).eval()
    endpoint = as_endpoint(model)
    assert endpoint.kind == "timm"
    save_model(model, tmp_path, kind=endpoint.kind, arch=endpoint.arch)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = load_endpoint(tmp_path).model
    a, b = model.state_dict(), loaded.state_dict()
    assert state_equal(a, b)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x)) and model(x).shape == (2, 7)


def test_paper_sizes():
    # Full-size parameter counts of the CIFAR-10 models (10 classes): the published sizes of these networks.
    expected = {"cct_7_3x1": 3_760_139, "cifar_shufflenetv2": 1_263_854, "cifar_regnetx_200mf": 2_319_482}
    for name, count in expected.items():
        assert sum(p.numel() for p in create_model(name, num_classes=10).parameters()) == count


def _check(row: dict) -> None:
    assert "traceback" not in row, row.get("traceback")
    assert row["exact_endpoints"], "first/last point must equal θ_A/θ_B bit for bit"
    assert row["stage_problems"] == [], row["stage_problems"]
    assert row["llpf_max_train_loss"] <= row["linear_max_train_loss"], row
    # Certified on the whole training set (the defaults: no probe_data): the engine's own record, its final check of
    # every point and midpoint on all N, and the evaluation's maximum over the whole training split under the ceiling.
    assert row["engine_certified"], row["uncertified"]
    assert row["examples_source"] == "training set" and row["route"] == "exact", row
    assert row["n_train"] == (1024 if row["family"] in ("bert", "gpt2") else 1437), row
    assert row["final_points"] == row["points"] and row["final_segments"] == row["points"] - 1, row
    assert row["final_max"] <= row["ceiling"], row
    assert row["llpf_max_train_loss"] <= row["ceiling"] * (1 + 1e-6), row
    assert row["status"] == "certified"
    assert 0 < row["ticks"] <= row["max_ticks"]


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_lenet5_connects(tmp_path):
    _check(run_family("lenet5", tmp_path))


# The cheap families (about a minute each, measured) run in the slow suite that CI runs; the others take 2-15 minutes
# each on 2 cores and run under the `families` marker (make test-families).
IN_CI = ("resnet18", "vgg11_bn", "shufflenetv2", "bert", "gpt2")
# No known failures: the engine holds every family's path under its ceiling or says where not. (The tiny ViT kept one
# embedding-stage point above it on one machine until the repair's rate could come down, docs/benchmarks.md.)
KNOWN_FAILURES: dict[str, str] = {}


def _param(name: str):
    marks = [pytest.mark.slow if name in IN_CI else pytest.mark.families]
    if name in KNOWN_FAILURES:
        marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[name], strict=False))
    return pytest.param(name, marks=marks)


@pytest.mark.parametrize("name", [_param(n) for n in FAMILIES if n != "lenet5"])
def test_family_connects(name, tmp_path):
    _check(run_family(name, tmp_path))
