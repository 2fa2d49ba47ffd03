"""Judging a path: evaluation columns, linear baseline, barrier, BN recalibration, continuity, plots, report, CLI.

Run directories are built here with RunWriter from two small_cnn endpoints trained for 3 epochs, so the tests do
not depend on the path engine (except the repeats test, which needs ``hf_llpf.connect``).
"""

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from hf_llpf.api import evaluate_run
from hf_llpf.cli import main
from hf_llpf.config import ConnectConfig
from hf_llpf.errors import ConfigError, RunDirectoryError
from hf_llpf.evaluation import (
    EVAL_COLUMNS,
    barrier,
    evaluate_path,
    load_point,
    make_eval_sets,
    positions,
    recalibrate_bn,
    score,
)
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.recipes import to_yaml
from hf_llpf.reporting.plots import plot_repeats
from hf_llpf.reporting.report import END, START, write_report
from hf_llpf.run import PointRecord, RunWriter, read_metrics

torch.set_num_threads(1)

SMALL = {"train_subset": 256, "continuity_subset": 128, "linear_points": 5}


@pytest.fixture(scope="module")
def endpoints(trained_endpoint):
    return load_endpoint(trained_endpoint(0, epochs=3)), load_endpoint(trained_endpoint(1, epochs=3))


def write_run(root, endpoint, states, *, stages=None, phases=None, layer_groups=None):
    """A run directory whose points are ``states`` (state dicts), in the endpoint's format."""
    writer = RunWriter(root)
    model = copy.deepcopy(endpoint.model)
    points = []
    for i, state in enumerate(states):
        load_point(model, state)
        rel = writer.write_point(10 * i, model, endpoint)
        phase, stage = phases[i] if phases else "m2m", stages[i] if stages else 0
        points.append(PointRecord(i, 10 * i, stage, phase, 0.0, 3, 0.0, 0.0, False, rel).row())
    writer.write_yaml("llpf_config.yaml", to_yaml(ConnectConfig(seed=7)))
    writer.write_json("endpoints.json", {"A": endpoint.describe(), "B": endpoint.describe()})
    if layer_groups is not None:
        writer.write_json("layer_groups.json", layer_groups)
    writer.write_metrics(points, [{"tick": 0, "loss": 0.1}], {"engine": {"ticks": 10 * (len(states) - 1)}})
    writer.close()
    return root


def summed_cross_entropy(model, loader):
    """Eval-mode mean cross-entropy (summed per example) and accuracy, computed here without hf_llpf."""
    model.eval()
    total, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for inputs, labels in loader:
            logits = model(inputs)
            total += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(-1) == labels).sum().item()
            count += len(labels)
    return SimpleNamespace(loss=total / count, accuracy=correct / count)


def lerp_states(a, b, n):
    model_states = []
    for i in range(n):
        t = i / (n - 1)
        model_states.append({k: torch.lerp(a[k], b[k], t) if a[k].is_floating_point() else a[k] for k in a})
    return model_states


def test_linear_baseline_ends_equal_the_endpoints_metrics(tmp_path, endpoints, digits):
    a, b = endpoints
    # The path is the straight line itself at 5 points, so every point is also a point of the 5-point baseline.
    run = write_run(tmp_path / "run", a, lerp_states(a.model.state_dict(), b.model.state_dict(), 5))
    res = evaluate_run(run, data=digits, recalibrate_bn=True, report=False, **SMALL)
    pts, lin = res["points"], res["linear"]
    cols = [*EVAL_COLUMNS, *(c + "_recal" for c in EVAL_COLUMNS)]
    for c in cols:
        assert lin[0][c] == pts[0][c] and lin[-1][c] == pts[-1][c], c  # exactly, not approximately
        assert [r[c] for r in lin] == [p[c] for p in pts], c  # same points, same numbers
    assert [r["t"] for r in lin] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [p["position"] for p in pts] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-6)
    s = res["summary"]
    # Positions come from L2 lengths (float rounding), so the barrier agrees to rounding, not bit for bit.
    assert s["llpf"]["barrier"] == pytest.approx(s["linear"]["barrier"], rel=1e-6) and s["linear"]["barrier"] > 0.1
    assert s["llpf"]["path_length"] == pytest.approx(s["llpf"]["straight_distance"], rel=1e-5)
    assert s["llpf"]["max_train_loss"] == max(p["eval_train_loss"] for p in pts)
    assert s["llpf"]["test_acc_range"] == [min(p["test_acc"] for p in pts), max(p["test_acc"] for p in pts)]
    # Recalibration is reported beside the raw numbers, never instead of them.
    assert set(s) == {"llpf", "linear", "llpf_recal", "linear_recal", "evaluation"}
    # Written back: columns, baseline, continuity and summary; the engine's own keys kept.
    on_disk = read_metrics(run)
    assert on_disk["points"][2]["eval_train_loss"] == pts[2]["eval_train_loss"] and on_disk["points"][2]["tick"] == 20
    assert len(on_disk["linear"]) == 5 and len(on_disk["continuity"]) == 4 * 4
    assert on_disk["ticks"] == [{"tick": 0, "loss": 0.1}] and on_disk["summary"]["engine"] == {"ticks": 40}
    assert "eval_train_loss_recal" in (run / "path_metrics.csv").read_text().splitlines()[0]
    # The whole training set by default; the figure agrees with a hand-computed one (a separate code path).
    full = evaluate_path(run, data=digits, continuity_k=0, linear_points=2)
    ref = summed_cross_entropy(a.model, digits.loader("train", batch_size=100, seed=0, shuffle=False))
    assert full["points"][0]["eval_train_loss"] == pytest.approx(ref.loss, rel=1e-5)
    assert full["points"][0]["eval_train_acc"] == ref.accuracy
    assert full["summary"]["evaluation"]["train_examples"] == len(digits.train_tensors)


def test_barrier_of_a_constant_loss_path_is_zero(tmp_path, endpoints, digits):
    a, _ = endpoints
    run = write_run(tmp_path / "run", a, [a.model.state_dict()] * 4)
    before = (run / "path_metrics.json").read_bytes()
    s = evaluate_path(run, data=digits, **SMALL)["summary"]["llpf"]
    # evaluate_path computes and returns; only evaluate_run writes into the run directory.
    assert (run / "path_metrics.json").read_bytes() == before and not (run / "plots").exists()
    assert s["barrier"] == 0.0 and s["path_length"] == 0.0
    assert s["worst_continuity_at"]["excess"] == 0.0
    # The formula itself, on numbers worked by hand.
    assert barrier([1.0, 3.0, 2.0], [0.0, 0.5, 1.0]) == 1.5  # 3 - (1 + 0.5 * (2 - 1))
    assert barrier([1.0, 0.5, 2.0], [0.0, 0.5, 1.0]) == 0.0  # below the chord: the first point's 0 wins
    assert barrier([2.0, 2.0, 2.0], [0.0, 0.3, 1.0]) == 0.0
    assert math.isnan(barrier([1.0, math.nan, 1.0], [0.0, 0.5, 1.0]))  # NaN is reported, not skipped
    assert positions([1.0, 3.0]) == [0.0, 0.25, 1.0] and positions([0.0, 0.0]) == [0.0, 0.5, 1.0]
    with pytest.raises(ConfigError):
        barrier([1.0], [0.0, 1.0])


def test_recalibration_changes_batchnorm_statistics_only(endpoints, digits):
    a, _ = endpoints
    model = copy.deepcopy(a.model).eval()
    params = {k: v.clone() for k, v in model.named_parameters()}
    before = {k: v.clone() for k, v in model.named_buffers()}
    x = digits.loader("train", batch_size=64, seed=0, shuffle=False, augment=False)
    batches = [b for _, b in zip(range(4), x)]  # four full batches of 64
    assert recalibrate_bn(model, batches) == 3  # bn1, bn2, bn3
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k  # bit-identical
    assert not torch.equal(model.bn1.running_mean, before["bn1.running_mean"])
    assert not torch.equal(model.bn3.running_var, before["bn3.running_var"])
    assert int(model.bn1.num_batches_tracked) == 4
    assert model.bn1.momentum == 0.1 and not model.training and not model.bn1.training  # restored
    # Cumulative average of equal-sized batch means = the mean over all 256 inputs of conv1's output.
    inputs = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        expected = model.conv1(inputs).mean(dim=(0, 2, 3))
    torch.testing.assert_close(model.bn1.running_mean, expected, rtol=1e-4, atol=1e-5)
    # A model without BatchNorm is left as it is.
    plain = torch.nn.Linear(64, 10)
    assert recalibrate_bn(plain, [(torch.zeros(2, 64), torch.zeros(2, dtype=torch.long))]) == 0


def test_continuity_flags_broken_points_and_segments(tmp_path, endpoints, digits):
    a, b = endpoints
    sa, sb = a.model.state_dict(), b.model.state_dict()
    # (1) One point replaced by noise (parameters only: BN buffers stay valid).
    g = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(v.shape, generator=g) * v.std() if k in dict(a.model.named_parameters()) else v
             for k, v in sa.items()}  # fmt: skip
    run = write_run(tmp_path / "noise", a, [sa, sa, sa, noise, sa, sa])
    res = evaluate_path(run, data=digits, **SMALL)
    s, cont = res["summary"]["llpf"], res["continuity"]
    clean = res["points"][0]["eval_train_loss"]
    assert s["worst_continuity_loss"] > max(1.0, 4 * clean)
    at = s["worst_continuity_at"]
    assert at["segment"] in (2, 3) and at["from_tick"] in (20, 30)  # a segment touching the noise point (index 3)
    assert all(r["excess"] == 0.0 for r in cont if r["segment"] in (0, 1, 4))  # segments between copies of A
    # (2) Every saved point low, one segment high: A, A, B, B. Saved points say "low", continuity must not.
    run = write_run(tmp_path / "jump", a, [sa, sa, sb, sb])
    res = evaluate_path(run, data=digits, **SMALL)
    s = res["summary"]["llpf"]
    assert s["max_train_loss"] < 0.5 < s["worst_continuity_loss"]
    assert s["worst_continuity_at"]["segment"] == 1 and s["worst_continuity_at"]["excess"] > 0.3
    assert s["worst_continuity_at"]["from_tick"] == 10 and s["worst_continuity_at"]["to_tick"] == 20


def test_cli_evaluate_writes_every_plot_and_the_report(tmp_path, endpoints, capsys):
    a, b = endpoints
    sa, sb = a.model.state_dict(), b.model.state_dict()
    groups = {"stages": [
        {"index": 0, "groups": [{"param_names": ["conv1.weight", "bn1.weight", "bn1.bias"]}]},
        {"index": 1, "groups": [{"param_names": ["conv2.weight", "bn2.weight", "bn2.bias"]}]},
        {"index": 2, "groups": [{"param_names": ["conv3.weight", "bn3.weight", "bn3.bias"]}]},
        {"index": 3, "groups": [{"param_names": ["head.weight", "head.bias"]}]},
    ]}  # fmt: skip
    stages, phases = [0, 0, 1, 1, 2, 2], ["m2o", "m2o", "m2o", "m2m", "m2m", "m2m"]
    run = write_run(tmp_path / "run", a, lerp_states(sa, sb, 6), stages=stages, phases=phases, layer_groups=groups)
    (run / "README.md").write_text("# my card\n\nkept text\n")
    argv = ["evaluate", str(run), "--train-subset", "200", "--linear-points", "4", "--continuity", "1"]
    assert main([*argv, "--recalibrate-bn", "--batch-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "| max train loss |" in out and "| figure | LLPF | linear |" in out and "BN recal." in out
    for name in ("loss", "accuracy", "layers"):
        png = run / "plots" / f"{name}.png"
        assert png.stat().st_size > 10_000, name
        with Image.open(png) as im:
            assert im.size[0] >= 800 and im.size[1] >= 300
    readme = (run / "README.md").read_text()
    assert readme.startswith("# my card\n\nkept text\n") and readme.count(START) == 1 == readme.count(END)
    assert "![loss along the path](plots/loss.png)" in readme and "| barrier |" in readme
    write_report(run)  # rewriting replaces the section, never duplicates it
    assert (run / "README.md").read_text() == readme
    # Data defaulted to the run's llpf_config.yaml (digits); the subset size was honoured, and the report says so.
    ev = read_metrics(run)["summary"]["evaluation"]
    assert ev["train_examples"] == 200 and ev["train_data"] == {"form": "seeded subset", "seed": 0}
    said = f"evaluated on 200 training examples (fixed subset, seed 0) and {ev['test_examples']} test examples"
    assert said in readme
    out_png = plot_repeats([run, run], tmp_path / "repeats.png")
    assert out_png.stat().st_size > 10_000


def test_bad_inputs_are_refused_with_the_allowed_values(tmp_path, endpoints, digits):
    with pytest.raises(RunDirectoryError, match="path_metrics.json"):
        evaluate_path(tmp_path, data=digits)
    with pytest.raises(RunDirectoryError, match="path_metrics.json"):
        evaluate_run(tmp_path, data=digits)
    a, _ = endpoints
    run = write_run(tmp_path / "run", a, [a.model.state_dict()] * 2)
    with pytest.raises(ConfigError) as err:
        evaluate_path(run, data=digits, linear_points=1, continuity_k=-1)
    assert len(err.value.problems) == 2 and "at least 2" in str(err.value)
    (run / "llpf_config.yaml").unlink()
    with pytest.raises(RunDirectoryError, match="pass data="):
        evaluate_path(run)
    assert main(["evaluate", str(tmp_path / "missing")]) == 2


def test_score_matches_a_hand_computed_mean(endpoints, digits):
    a, _ = endpoints
    sets = make_eval_sets(digits, train_subset=100, continuity_subset=10, batch_size=32)
    got = score(a.model.eval(), sets.train)
    inputs = torch.cat([x for x, _ in sets.train])
    labels = torch.cat([y for _, y in sets.train])
    with torch.no_grad():
        logits = a.model(inputs)
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    assert got["acc"] == int((logits.argmax(-1) == labels).sum()) / 100
    assert sets.continuity.num_examples == 10 and sets.train.num_examples == 100


@pytest.mark.slow
def test_repeats_same_seed_agree_different_seeds_differ(tmp_path, endpoints, digits):
    from hf_llpf.repeats import run_repeats

    a, b = endpoints
    tiny = {
        "step_r": 0.3,
        "min_iters": 1,
        "max_iters": 2,
        "max_ticks": 6,
        "save_every": 2,
        "seed": 3,
        "repair_budget": 4,
    }
    opts = {"train_subset": 128, "continuity_subset": 64, "linear_points": 3, "continuity_k": 1, "report": False}
    two = run_repeats(a, b, digits, config=tiny, run_dir=tmp_path / "x", repeats=2, evaluate_options=opts)
    one = run_repeats(a, b, digits, config=tiny, run_dir=tmp_path / "y", repeats=1, evaluate_options=opts)
    assert two["seeds"] == [3, 4] and one["seeds"] == [3]
    first, second = read_metrics(tmp_path / "x/repeat_00"), read_metrics(tmp_path / "x/repeat_01")
    again = read_metrics(tmp_path / "y/repeat_00")
    curve = [p["eval_train_loss"] for p in first["points"]]
    assert curve == [p["eval_train_loss"] for p in again["points"]]  # same seed: the same path, bit for bit
    assert curve != [p["eval_train_loss"] for p in second["points"]]  # another seed: another path
    fig = two["figures"]["llpf.max_train_loss"]
    assert fig["values"] == [max(curve), max(p["eval_train_loss"] for p in second["points"])]
    assert fig["min"] <= fig["mean"] <= fig["max"] and fig["std"] > 0
    assert json.loads((tmp_path / "x/consistency.json").read_text()) == two
    assert (tmp_path / "x/plots/repeats.png").stat().st_size > 10_000
    assert "Consistency over 2 repeats" in (tmp_path / "x/README.md").read_text()
    with pytest.raises(ConfigError, match="repeats=0"):
        run_repeats(a, b, digits, config=tiny, run_dir=tmp_path / "z", repeats=0)


def test_the_training_data_are_worded_as_they_were_chosen(digits):
    from hf_llpf.evaluation.sets import sets_for
    from hf_llpf.reporting.report import training_data_words

    cpu = torch.device("cpu")
    subset = sets_for(digits, train_subset=100, continuity_subset=10, batch_size=32, seed=3, device=cpu)
    whole = sets_for(digits, train_subset=10**6, continuity_subset=10, batch_size=32, seed=3, device=cpu)
    batches = [(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))] * 3
    own = sets_for({"train": batches}, train_subset=100, continuity_subset=10, batch_size=32, seed=3, device=cpu)
    assert [training_data_words({"train_data": s.train.origin}) for s in (subset, whole, own)] == [
        "fixed subset, seed 3",
        "the whole training split",
        "your 3 batches, used whole",
    ]
    assert training_data_words({"train_data": {"form": "own batches", "batches": 1}}) == "your 1 batch, used whole"
    # A record written before train_data: the options as given, never a subset that was not asked for.
    assert training_data_words({"train_subset": 500, "seed": 2}) == "train_subset 500, seed 2"
    assert training_data_words({"train_subset": None, "seed": 0}) == "the whole training data"


def test_the_verdict_says_plainly_when_the_path_is_worse_than_the_straight_line():
    from hf_llpf.reporting.report import path_verdict

    better = path_verdict({"llpf": {"max_train_loss": 0.07}, "linear": {"max_train_loss": 2.4}})
    worse = path_verdict({"llpf": {"max_train_loss": 1.173}, "linear": {"max_train_loss": 0.379}})
    assert "not above linear interpolation's 2.4" in better and "not certified" in better
    assert "WORSE than linear interpolation" in worse and "1.173 vs 0.379" in worse
    for text in (better, worse):
        assert "connected" not in text and "certified: every" not in text
    assert "no comparison" in path_verdict({"llpf": {"max_train_loss": float("nan")}, "linear": {}})
    cert = {"ceiling": 0.042, "probe_examples": 512, "certified": True, "uncertified": [], "segments": True}
    ok = path_verdict({"llpf": {"max_train_loss": 0.04}, "linear": {"max_train_loss": 2.4}}, cert)
    assert ok.startswith("verdict: certified: every point and segment <= 0.042 on 512 probe examples; ")
    bad = {**cert, "certified": False, "uncertified": [{"tick": 7, "stage": 2, "phase": "m2m", "what": "point",
                                                         "loss": 0.051}]}  # fmt: skip
    text = path_verdict({"llpf": {"max_train_loss": 0.051}, "linear": {"max_train_loss": 2.4}}, bad)
    assert "NOT certified: 1 above the ceiling 0.042" in text and "point at tick 7 (stage 2, m2m): 0.051" in text


def test_the_verdict_names_the_worst_point_and_a_lower_accuracy():
    from hf_llpf.reporting.report import path_verdict

    worst = {"index": 5, "tick": 12, "stage": 3, "phase": "m2m", "position": 0.4231, "loss": 0.0717}
    llpf = {"max_train_loss": 0.0717, "min_train_acc": 0.9706, "worst_point": worst}
    text = path_verdict({"llpf": llpf, "linear": {"max_train_loss": 0.1932, "min_train_acc": 0.9906}})
    assert "maximum train loss 0.0717 (tick 12, stage 3, at 42% of the path) is not above linear" in text
    assert text.endswith("; its minimum train accuracy 97.06% is BELOW linear interpolation's 99.06%")
    llpf["min_train_acc"] = 0.9951
    text = path_verdict({"llpf": llpf, "linear": {"max_train_loss": 2.4, "min_train_acc": 0.1301}})
    assert text.endswith("; its minimum train accuracy 99.51% is not below linear interpolation's 13.01%")
    lm = {"max_train_loss": 3.6, "min_train_acc": float("nan")}  # a task without accuracy: no clause
    assert "accuracy" not in path_verdict({"llpf": lm, "linear": {"max_train_loss": 5.0, "min_train_acc": 0.1}})
    subset = {"train_examples": 512, "train_data": {"form": "seeded subset", "seed": 0}}
    text = path_verdict({"llpf": {"max_train_loss": 0.0471}, "linear": {"max_train_loss": 2.4}, "evaluation": subset})
    assert "interpolation's 2.4 on the same 512 training examples (a fixed subset, seed 0: its mean may " in text
    whole = {"train_examples": 1437, "train_data": {"form": "whole split"}}
    text = path_verdict({"llpf": {"max_train_loss": 3.0}, "linear": {"max_train_loss": 2.4}, "evaluation": whole})
    assert "maximum train loss 3 vs 2.4 on the same data (" in text


def test_the_loader_a_path_was_built_with_is_judged_with_a_test_split(tmp_path, endpoints, digits):
    a, _ = endpoints
    run = write_run(tmp_path / "run", a, [a.model.state_dict()] * 2)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_digits_tensors(digits, "train")), 64)
    alone = evaluate_path(run, data=loader, **SMALL)  # the training batches alone: no test column
    assert "test_loss" not in alone["points"][0] and alone["summary"]["evaluation"]["test_examples"] is None
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*_digits_tensors(digits, "test")), 64)
    result = evaluate_path(run, data={"train": loader, "test": test}, **SMALL)
    own = summed_cross_entropy(a.model, test)
    assert result["points"][0]["test_loss"] == pytest.approx(own.loss, rel=1e-5)
    assert result["points"][0]["eval_train_loss"] == alone["points"][0]["eval_train_loss"]


def _digits_tensors(digits, split):
    """The split's normalised images and labels, as the evaluation's fixed batches hold them."""
    batches = list(digits.eval_loader(split, indices=None, batch_size=256))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
