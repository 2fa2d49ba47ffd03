"""`hf-llpf groups` and `hf-llpf spheres`: tables with real numbers, layer_groups.json round trip, verdicts."""

import json

import pytest
import torch

from hf_llpf import geometry
from hf_llpf.cli import main
from hf_llpf.models.endpoints import create_model, save_model
from hf_llpf.stages import StagePlan

torch.set_num_threads(1)

SMALL_CNN_PARAMS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.bias",
    "conv2.weight",
    "bn2.weight",
    "bn2.bias",
    "conv3.weight",
    "bn3.weight",
    "bn3.bias",
    "head.weight",
    "head.bias",
]


@pytest.fixture(autouse=True)
def _digits_once(monkeypatch, digits):
    """The commands load the digits data per call; reuse the session's copy (the loading is the slow part)."""
    import hf_llpf.data.bundle

    real = hf_llpf.data.bundle.load_data
    monkeypatch.setattr(
        hf_llpf.data.bundle, "load_data", lambda spec, **o: digits if (spec, o) == ("digits", {}) else real(spec, **o)
    )


def _endpoint(folder, seed: int, scale: float = 1.0):
    torch.manual_seed(seed)
    model = create_model("small_cnn")
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(scale)
    save_model(model, folder, kind="timm", arch={"architecture": "small_cnn", "model_args": {}})
    return model


def _table_rows(out: str) -> list[list[str]]:
    """Rows of the groups table (between the dashes line and the summary line), split on runs of spaces."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-----")) + 1
    end = next(i for i, line in enumerate(lines) if " stages, " in line)
    return [line.split() for line in lines[start:end]]


def test_groups_builtin_prints_every_parameter_and_stage(tmp_path, capsys):
    out_json = tmp_path / "out" / "layer_groups.json"
    assert main(["groups", "small_cnn", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["stage", "group"]
    rows = _table_rows(out)
    assert len(rows) == len(SMALL_CNN_PARAMS)  # one row per parameter
    for short in ("weight", "bias"):
        assert any(short in r for r in rows)
    stage_cells = [r[0] for r in rows if r[0].isdigit()]
    assert stage_cells == ["0", "1", "2", "3"]  # conv+bn pairs, then the head
    assert "order: hooks" in out
    assert "container-owned parameters: none" in out
    assert "never-run modules: none" in out
    assert "tied parameters: none" in out

    plan = StagePlan.from_json(json.loads(out_json.read_text()))
    assert plan.param_names() == SMALL_CNN_PARAMS
    assert plan.stage_of("head.weight") == 3


def test_groups_on_saved_endpoint_folder(tmp_path, capsys):
    model = _endpoint(tmp_path / "a", seed=0)
    assert main(["groups", str(tmp_path / "a"), "--json", str(tmp_path / "lg.json")]) == 0
    out = capsys.readouterr().out
    rows = _table_rows(out)
    assert len(rows) == len(SMALL_CNN_PARAMS)
    # The variance column is the loaded weights' variance (printed with 4 significant digits).
    var = geometry.variances([model.conv2.weight]).item()
    conv2 = next(r for r in rows if "conv2" in r)
    assert float(conv2[-1]) == pytest.approx(var, rel=1e-3)
    assert StagePlan.from_json(json.loads((tmp_path / "lg.json").read_text())).param_names() == SMALL_CNN_PARAMS


def _sphere_rows(out: str) -> dict[str, tuple[float, float, float]]:
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] in SMALL_CNN_PARAMS:
            rows[cells[0]] = (float(cells[1]), float(cells[2]), None if cells[3] == "-" else float(cells[3]))
    return rows


def test_spheres_same_sphere_for_two_seeds(tmp_path, capsys):
    a = _endpoint(tmp_path / "a", seed=0)
    b = _endpoint(tmp_path / "b", seed=1)
    assert main(["spheres", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    rows = _sphere_rows(out)
    names = [n for n in SMALL_CNN_PARAMS if n in rows]
    assert names == [n for n, p in a.named_parameters() if p.numel() > 1]
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    va = geometry.variances([pa[n] for n in names]).tolist()
    vb = geometry.variances([pb[n] for n in names]).tolist()
    for n, x, y in zip(names, va, vb):
        got_a, got_b, ratio = rows[n]
        assert got_a == pytest.approx(x, rel=1e-5, abs=1e-12)
        assert got_b == pytest.approx(y, rel=1e-5, abs=1e-12)
        if x > 0:
            assert ratio == pytest.approx(y / x, rel=1e-5)
        else:  # random-init BatchNorm weights are constant: no ratio, skipped by the verdict
            assert ratio is None and y == 0
    verdict = out.strip().splitlines()[-1]
    assert "mean |ln(Var_B/Var_A)| <= 0.5 over weight tensors" in verdict
    assert "same variance sphere -> M2M" in verdict


def test_spheres_differ_when_weights_scaled_by_3(tmp_path, capsys):
    _endpoint(tmp_path / "a", seed=0)
    _endpoint(tmp_path / "b", seed=0, scale=3.0)
    assert main(["spheres", str(tmp_path / "a"), str(tmp_path / "b"), "--tolerance", "0.25"]) == 0
    out = capsys.readouterr().out
    assert _sphere_rows(out)["conv1.weight"][2] == pytest.approx(9.0, rel=1e-5)
    verdict = out.strip().splitlines()[-1]
    assert "<= 0.25" in verdict
    assert "different variance spheres -> cross-sphere M2O+M2M needed" in verdict
    assert " off" in out


def test_groups_overrides_and_batch_errors(tmp_path, capsys):
    overrides = tmp_path / "stages.yaml"
    overrides.write_text("- match: '^(conv|bn)3\\.'\n  stage: 1\n")
    assert main(["groups", "small_cnn", "--overrides", str(overrides)]) == 0
    out = capsys.readouterr().out
    assert "3 stages, 7 groups" in out and "order: hooks+overrides" in out

    overrides.write_text("- match: nothing\n  stage: 0\n")
    assert main(["groups", "small_cnn", "--overrides", str(overrides)]) == 2
    assert "regex 'nothing' matches no parameter" in capsys.readouterr().err

    tiny_vit = '{"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}'
    assert main(["groups", "vit_tiny_patch16_224", "--model-args", tiny_vit]) == 2  # digits images are 8x8
    err = capsys.readouterr().err
    assert "the example batch (8, 1, 8, 8) does not fit vit_tiny_patch16_224" in err


def test_sphere_verdict_flags_and_counts():
    from hf_llpf.algorithms.spheres import sphere_verdict

    report = [
        {"name": "w1", "ndim": 2, "numel": 100, "var_a": 1.0, "var_b": 9.0, "ratio": 9.0},
        {"name": "w2", "ndim": 4, "numel": 100, "var_a": 1.0, "var_b": 1.1, "ratio": 1.1},
        {"name": "b", "ndim": 1, "numel": 10, "var_a": 1.0, "var_b": 9.0, "ratio": 9.0},  # biases not judged
        {"name": "n", "ndim": 1, "numel": 10, "var_a": 0.0, "var_b": 0.0, "ratio": float("inf")},
    ]
    v = sphere_verdict(report, 0.5)
    assert v.off == [True, False, False, False]
    assert (v.tensors, v.outside, v.skipped, v.same) == (4, 1, 1, False)
    assert sphere_verdict(report, 2.0).same and sphere_verdict(report).tolerance == 0.5
