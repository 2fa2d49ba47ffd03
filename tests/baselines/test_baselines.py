"""The baselines (docs/baselines.md): SLERP, Bézier, weight matching, and the comparison's common evaluator."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hf_llpf.baselines import build_baseline
from hf_llpf.baselines.bezier import BezierCurve, BezierSettings
from hf_llpf.baselines.pathdir import state_of
from hf_llpf.baselines.permutation import permutation_spec
from hf_llpf.baselines.slerp import slerp_state, slerp_tensor
from hf_llpf.baselines.weight_matching import apply_permutation, match_weights
from hf_llpf.errors import ConfigError, NotApplicableError
from hf_llpf.models.endpoints import create_model, load_endpoint
from tests.conftest import state_equal


def test_slerp_of_identical_endpoints_is_the_endpoint_and_its_ends_are_exact():
    torch.manual_seed(0)
    a = state_of(create_model("small_cnn"))
    b = state_of(create_model("small_cnn"))
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        assert state_equal(slerp_state(t, a, a), a)
    assert state_equal(slerp_state(0.0, a, b), a) and state_equal(slerp_state(1.0, a, b), b)
    # Off the ends it is spherical: the norm of a slerp of two equal-norm orthogonal vectors stays that norm,
    # where lerp's mid-point shrinks by sqrt(2).
    u, v = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    assert torch.linalg.vector_norm(slerp_tensor(0.5, u, v)).item() == pytest.approx(3.0, abs=1e-6)
    assert torch.linalg.vector_norm(torch.lerp(u, v, 0.5)).item() == pytest.approx(3.0 / 2**0.5, abs=1e-6)
    # Nearly colinear tensors fall back to lerp; integer buffers come from the nearer end.
    assert torch.equal(slerp_tensor(0.3, u, 2 * u), torch.lerp(u, 2 * u, 0.3))
    key = "bn1.num_batches_tracked"
    a[key], b[key] = torch.tensor(3), torch.tensor(7)
    assert int(slerp_state(0.4, a, b)[key]) == 3 and int(slerp_state(0.6, a, b)[key]) == 7


def test_bezier_ends_are_exact_and_training_the_control_point_lowers_the_midpoint_loss(small_cnn_pair, digits):
    ea, eb = (load_endpoint(p) for p in small_cnn_pair)
    sa, sb = state_of(ea.model), state_of(eb.model)
    curve = BezierCurve(ea.model, sa, sb)
    recal = list(digits.loader("train", batch_size=64, seed=0, augment=False))[:8]
    probe = list(digits.loader("train", batch_size=256, seed=1, shuffle=False, augment=False))[:2]
    before = curve.loss_at(0.5, probe, recal_data=recal)
    loader = digits.loader("train", batch_size=64, seed=0)
    losses = curve.train(iter(loader.stream()), BezierSettings(iters=150, lr=0.05))
    after = curve.loss_at(0.5, probe, recal_data=recal)
    assert len(losses) == 150 and curve.iterations == 150
    assert before > 1.0  # the straight line's midpoint (θ_C starts at the midpoint) has a high loss
    assert after < 0.3 and after < before / 4, (before, after)
    assert state_equal(curve.state_at(0.0), sa) and state_equal(curve.state_at(1.0), sb)
    # The ends were constants: training moved θ_C only.
    assert state_equal(state_of(ea.model), sa)


def test_bezier_path_on_disk_has_exact_ends_and_records_its_budget(small_cnn_pair, digits, tmp_path):
    path = build_baseline(
        "bezier",
        *small_cnn_pair,
        digits,
        run_dir=tmp_path / "bz",
        points=5,
        bezier={"iters": 20, "lr": 0.05},
        config={"loss_ceiling": None},  # no ceiling: a fixed budget (certified runs: test_certified_baselines.py)
    )
    assert len(path) == 5 and [m["t"] for m in path.metrics] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert state_equal(path.state_dict_at(0), state_of(load_endpoint(small_cnn_pair[0]).model))
    assert state_equal(path.state_dict_at(-1), state_of(load_endpoint(small_cnn_pair[1]).model))
    assert path.summary["run"]["sgd_iters"] == 20 and path.metrics[-1]["sgd_iters"] == 20
    assert "certification" not in path.summary["run"] and path.config["baseline"]["bezier"]["iters"] == 20
    with pytest.raises(ConfigError, match="bezier iters=-1"):
        build_baseline("bezier", *small_cnn_pair, digits, run_dir=tmp_path / "bad", bezier={"iters": -1})


@pytest.mark.slow
def test_autoneb_bends_the_band_below_the_straight_line_with_exact_ends(small_cnn_pair, digits, tmp_path):
    from hf_llpf.api import evaluate_run

    options = {"train_subset": 300, "continuity_k": 0, "linear_points": 5, "report": False}
    fixed = {"loss_ceiling": None}  # a fixed budget
    straight = build_baseline("autoneb", *small_cnn_pair, digits, run_dir=tmp_path / "n0", points=11,
                              autoneb={"iters": 0}, config=fixed)  # fmt: skip
    band = build_baseline("autoneb", *small_cnn_pair, digits, run_dir=tmp_path / "n", points=11,
                          autoneb={"iters": 200}, config=fixed)  # fmt: skip
    assert state_equal(band.state_dict_at(0), state_of(load_endpoint(small_cnn_pair[0]).model))
    assert state_equal(band.state_dict_at(-1), state_of(load_endpoint(small_cnn_pair[1]).model))
    run = band.summary["run"]
    assert 0 < run["sgd_iters"] <= 200 and run["autoneb"]["pivots"] == 3 + sum(run["autoneb"]["inserted_per_cycle"])
    flat = evaluate_run(straight, **options)["summary"]["llpf"]["max_train_loss"]
    bent = evaluate_run(band, **options)["summary"]["llpf"]["max_train_loss"]
    assert bent < 0.5 * flat  # the band left the straight line's barrier (margin: measured far below half)
    with pytest.raises(ConfigError, match="autoneb lr=0"):
        build_baseline("autoneb", *small_cnn_pair, digits, run_dir=tmp_path / "bad", autoneb={"lr": 0})


def _permuted_copy(folder, tmp_path, digits):
    """B = A with every hidden unit of every permutation space shuffled: the same function, other weights."""
    ea = load_endpoint(folder)
    example = next(iter(digits.loader("test", batch_size=8, seed=0, shuffle=False)))[0]
    spec = permutation_spec(ea.model, example)
    gen = torch.Generator().manual_seed(5)
    perms = {s: torch.randperm(v["size"], generator=gen) for s, v in spec.spaces.items()}
    model = create_model("small_cnn")
    model.load_state_dict(apply_permutation(state_of(ea.model), spec, perms))
    return ea, model.eval(), spec


def test_weight_matching_recovers_an_exact_permutation(small_cnn_pair, digits, tmp_path):
    from hf_llpf.api import evaluate_run

    ea, permuted, spec = _permuted_copy(small_cnn_pair[0], tmp_path, digits)
    assert [v["size"] for v in spec.spaces.values()] == [16, 32, 64]
    perms, _ = match_weights(state_of(ea.model), state_of(permuted), spec)
    assert state_equal(apply_permutation(state_of(permuted), spec, perms), state_of(ea.model))
    options = {"data": digits, "train_subset": 256, "continuity_k": 0, "report": False}
    wm = evaluate_run(
        build_baseline("weight-matching", ea, permuted, digits, run_dir=tmp_path / "wm", points=5), **options
    )
    losses = [p["eval_train_loss"] for p in wm["points"]]
    assert max(losses) - min(losses) < 1e-5, losses  # the interpolated loss equals the endpoint loss
    check = json.loads((tmp_path / "wm" / "path_metrics.json").read_text())["summary"]["run"]["weight_matching"]
    assert check["ends_check"]["max_abs_output_diff"] < 1e-4 and check["ends_check"]["same_predictions"]
    assert check["units_moved"] > 100  # the permutation was not the identity
    # Without the matching the same endpoints are far apart: linear interpolation has a real barrier.
    lin = evaluate_run(build_baseline("linear", ea, permuted, digits, run_dir=tmp_path / "lin", points=5), **options)
    assert lin["summary"]["llpf"]["barrier"] > 0.5


def test_weight_matching_reads_resnets_and_refuses_what_it_cannot_read():
    model = create_model("cifar_resnet18", width=4).eval()
    resnet = permutation_spec(model, torch.randn(2, 3, 32, 32))
    assert not any(m.training for m in model.modules())  # the trace shares the modules: modes are restored
    # The stem and the four residual streams are joined by the additions: 4 residual spaces + 8 inner ones.
    assert len(resnet.spaces) == 12
    assert sorted(v["size"] for v in resnet.spaces.values()) == [4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32]
    timm_resnet = permutation_spec(create_model("resnet18", num_classes=10).eval(), torch.randn(1, 3, 32, 32))
    assert len(timm_resnet.spaces) == 12  # timm's ResNet: the same structure read from another definition
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))
    assert [v["size"] for v in permutation_spec(mlp, torch.randn(2, 1, 8, 8)).spaces.values()] == [20, 10]
    text_batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8)}
    with pytest.raises(NotApplicableError) as refused:  # a transformers model is called with a dict of inputs
        permutation_spec(mlp, text_batch)
    assert str(refused.value) == (
        "weight-matching: not applicable: weight matching supports models called with one tensor (an MLP or a CNN); "
        "this model is called with a dict of inputs (input_ids, attention_mask)"
    )
    with pytest.raises(NotApplicableError, match="this model is called with a tuple$"):
        permutation_spec(mlp, (torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)))
    with pytest.raises(NotApplicableError, match="weight-matching: not applicable: grouped convolution"):
        permutation_spec(create_model("cifar_mobilenetv2").eval(), torch.randn(2, 3, 32, 32))

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], 1))

    with pytest.raises(NotApplicableError, match="operation 'cat' on permuted channels"):
        permutation_spec(Cat(), torch.randn(2, 4))


@pytest.mark.slow
def test_compare_judges_every_method_on_the_same_probe_data(small_cnn_pair, digits, tmp_path):
    from hf_llpf import compare
    from hf_llpf.comparison import probe_digest
    from hf_llpf.evaluation.sets import make_eval_sets

    table = compare(
        *small_cnn_pair,
        digits,
        out_dir=tmp_path / "cmp",
        methods=["linear", "slerp", "bezier", "weight-matching"],
        points=5,
        bezier={"iters": 10},
        config={"loss_ceiling": None},  # Bézier at a fixed budget (certified runs: test_certified_baselines.py)
        train_subset=200,
        continuity_k=1,
    )
    sets = make_eval_sets(digits, train_subset=200, batch_size=256, seed=0)
    expected = {"train": [probe_digest(sets.train)], "test": [probe_digest(sets.test)]}
    assert [r["method"] for r in table["rows"]] == ["linear", "slerp", "bezier", "weight-matching"]
    for row in table["rows"]:
        assert row["status"] == "ok"
        assert row["probe"] == expected  # every pass of the evaluator over its data saw exactly these batches
    assert table["probe"]["train_examples"] == 200 and table["probe"]["test_examples"] == len(digits.test_tensors)
    by = {r["method"]: r for r in table["rows"]}
    assert by["bezier"]["sgd_iters"] == 10 and by["linear"]["sgd_iters"] == 0
    assert by["weight-matching"]["ends_check"]["max_abs_output_diff"] < 1e-4
    assert by["weight-matching"]["barrier"] < by["linear"]["barrier"]
    for name in ("comparison.md", "comparison.json", "comparison.png"):
        assert (tmp_path / "cmp" / name).stat().st_size > 0
    assert "| slerp |" in (tmp_path / "cmp" / "comparison.md").read_text()


@pytest.mark.slow  # a whole run, evaluation or interpreter: kept out of the fast suite
def test_compare_cli_and_a_method_that_does_not_apply(small_cnn_pair, tmp_path, capsys):
    from hf_llpf.cli import main

    rc = main(["compare", *map(str, small_cnn_pair), "--data", "digits", "--methods", "linear,slerp", "--points", "3",
               "--train-subset", "128", "--out", str(tmp_path / "c")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0 and "| linear |" in out and "| slerp |" in out
    with pytest.raises(SystemExit):  # argparse refuses an unknown method before anything runs
        main(["compare", "a", "b", "--methods", "linear,nope", "--out", str(tmp_path / "x")])
    assert "--methods 'linear,nope': expected a comma-separated list of llpf" in capsys.readouterr().err


def test_weight_matching_not_applicable_is_a_row_not_a_crash(tmp_path, digits):
    from hf_llpf import compare

    a, b = create_model("lenet5").eval(), create_model("lenet5").eval()
    table = compare(a, b, digits, out_dir=tmp_path / "c", methods=["weight-matching"], points=3, train_subset=64)
    (row,) = table["rows"]
    assert row["status"].startswith("not applicable: ")


FAST = {"step_r": 0.2, "min_iters": 2, "max_iters": 5, "save_every": 2, "checkpoint_every": 3, "arrival_tol": 0.05}


@pytest.mark.slow
def test_evaluate_with_baselines_adds_them_to_an_llpf_run(small_cnn_pair, digits, tmp_path, capsys):
    import hf_llpf
    from hf_llpf.cli import main

    run = tmp_path / "run"
    path = hf_llpf.connect(*small_cnn_pair, digits, config=FAST, run_dir=run, progress=False)
    iters = path.summary["run"]["sgd_iters"]
    args = ["evaluate", str(run), "--baselines", "slerp,bezier", "--train-subset", "128", "--certify-cap", "40"]
    assert main([*args, "--certify-round", "20", "--continuity", "1"]) == 0
    out = capsys.readouterr().out
    assert "| llpf |" in out and "| slerp |" in out and "| bezier |" in out
    table = json.loads((run / "baselines" / "comparison.json").read_text())
    rows = {r["method"]: r for r in table["rows"]}
    # Bézier is held under the run's own ceiling, checked at the run's points, trained in rounds up to the cap.
    bezier = hf_llpf.RunPath(run / "baselines" / "bezier")
    assert rows["bezier"]["ceiling"] == path.summary["run"]["certification"]["ceiling"] == rows["llpf"]["ceiling"]
    assert len(bezier) == len(path) and len(hf_llpf.RunPath(run / "baselines" / "slerp")) == 31
    assert rows["bezier"]["sgd_iters"] in (0, 20, 40) and rows["llpf"]["sgd_iters"] == iters
    assert rows["llpf"]["probe"] == rows["slerp"]["probe"] == rows["bezier"]["probe"]
    assert rows["llpf"]["probe"]["train"] == [table["probe"]["train"]]
    # The baselines start and end at the run's own ends.
    slerp = hf_llpf.RunPath(run / "baselines" / "slerp")
    assert state_equal(slerp.state_dict_at(0), path.state_dict_at(0))
    assert state_equal(slerp.state_dict_at(-1), path.state_dict_at(-1))
    # The run's own evaluation was written with the same data.
    assert len(json.loads((run / "path_metrics.json").read_text())["points"][0]) > 10
    assert main(["evaluate", str(run), "--baselines", "llpf"]) == 2
    assert "--baselines llpf" in capsys.readouterr().err


def test_a_baseline_path_exports_and_its_card_does_not_call_it_llpf(small_cnn_pair, digits, tmp_path):
    from hf_llpf.hub import export_point
    from hf_llpf.hub.card import build_model_card

    run = tmp_path / "wm"
    path = build_baseline("weight-matching", *small_cnn_pair, digits, run_dir=run, points=3)
    card = str(build_model_card(run, repo_id="org/wm"))
    assert "weight-matching path between two models" in card and "LLPF path" not in card
    assert "the path ends at π(θ_B)" in card
    export_point(run, point="mid", out_dir=tmp_path / "mid")
    assert state_equal(load_endpoint(tmp_path / "mid").model.state_dict(), path.state_dict_at(1))


def test_compare_refuses_bad_settings_before_any_work(small_cnn_pair, tmp_path):
    from hf_llpf import compare

    with pytest.raises(ConfigError) as err:
        compare(*small_cnn_pair, "digits", out_dir=tmp_path / "c", points=1, train_subset=0, bezier={"lr": -1.0})
    assert [p.split(":")[0] for p in err.value.problems] == ["points=1", "train_subset=0", "bezier lr=-1.0"]
    assert not (tmp_path / "c").exists()
