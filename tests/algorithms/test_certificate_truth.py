"""The certificate holds on the training data: the exact route, the final check, and a point above the ceiling on
the whole training set that is never certified, whatever a subset of it says."""

import copy

import pytest
import torch
from test_certify import QUICK, own_probe_loss, probe_examples

import hf_llpf
from hf_llpf.algorithms.certify import Certifier, Verdict, certification_line
from hf_llpf.algorithms.final_check import final_check
from hf_llpf.config import ConnectConfig
from hf_llpf.evaluation.probe import ProbeSet
from hf_llpf.models.endpoints import load_endpoint
from hf_llpf.run import read_metrics

torch.set_num_threads(1)


def every_example(digits):
    return probe_examples(digits, size=len(digits.train_tensors.labels))


def midpoint_model(template, path, i):
    """The midpoint of the segment from point i - 1 to point i, built here from the stored points."""
    sa, sb = path.state_dict_at(i - 1), path.state_dict_at(i)
    mid = copy.deepcopy(template)
    mid.load_state_dict({k: (sb[k] + sa[k]) * 0.5 if sa[k].is_floating_point() else sb[k] for k in sa})
    return mid


@pytest.fixture
def exact_run(quick_certified_run):
    return quick_certified_run  # connected with QUICK from the CLI; read-only


def test_the_final_check_is_an_independent_evaluation_of_every_point_and_midpoint(exact_run, small_cnn_pair, digits):
    path, run_dir = exact_run
    cert = read_metrics(run_dir)["summary"]["run"]["certification"]
    x, y = every_example(digits)
    assert cert["route"] == "exact" and cert["probe_examples"] == len(y) == 1437
    template = load_endpoint(small_cnn_pair[0]).model
    points = [own_probe_loss(path.model_at(i), x, y) for i in range(len(path))]
    segments = [own_probe_loss(midpoint_model(template, path, i), x, y) for i in range(1, len(path))]
    final = cert["final_check"]
    assert final["points"] == len(path) and final["segments"] == len(path) - 1 and final["examples"] == 1437
    assert final["max"] == pytest.approx(max(points + segments), abs=1e-6)
    for i, row in enumerate(path.metrics):
        assert row["full_loss"] == pytest.approx(points[i], abs=1e-6), f"point {i}"
        if i:
            assert row["full_segment_loss"] == pytest.approx(segments[i - 1], abs=1e-6), f"segment {i - 1}-{i}"
    assert cert["certified"] and max(points + segments) <= cert["ceiling"]
    assert final["reused"] == final["points"] + final["segments"]  # every value a whole pass of the run, same bits
    assert certification_line(cert) == (
        f"certified: every saved point and every segment at t = 0.5 has mean eval-mode training loss <= "
        f"{cert['ceiling']:.4g} over all 1437 training examples (exact; final check: maximum {final['max']:.4g})"
    )


def test_a_point_under_the_ceiling_on_the_probe_but_above_it_on_the_training_set_is_not_certified(exact_run, digits):
    path, _ = exact_run
    x, y = every_example(digits)
    px, py = probe_examples(digits, size=512)  # the 512 examples the run was certified on before
    full = [own_probe_loss(path.model_at(i), x, y) for i in range(len(path))]
    probe = [own_probe_loss(path.model_at(i), px, py) for i in range(len(path))]
    i = max(range(len(path)), key=lambda j: full[j] - probe[j])
    assert probe[i] < full[i]
    ceiling = (probe[i] + full[i]) / 2  # point i: under it on the probe, above it on every training example
    config = ConnectConfig(loss_ceiling=ceiling, certify_segments=False)
    whole = ProbeSet([(x[k : k + 64], y[k : k + 64]) for k in range(0, len(y), 64)])
    certifier = Certifier(whole, ceiling, config, [min(full)])
    certifier.final = final_check(certifier, path, path.model_at(0))
    named = {(a["tick"], a["what"]) for a in certifier.final["above"]}
    assert (path.metrics[i]["tick"], "point") in named
    assert named == {(path.metrics[j]["tick"], "point") for j in range(len(path)) if full[j] > ceiling}
    record = certifier.summary([])
    assert not record["certified"]
    assert certification_line(record).startswith(f"NOT certified: {len(named)} above the ceiling {ceiling:.4g}")


def test_decisions_that_lie_are_caught_by_the_final_check(small_cnn_pair, digits, tmp_path, monkeypatch):
    # Every tick "certified" without a look at the data and without repair: the points are the raw moves.
    monkeypatch.setattr(Certifier, "certify", lambda self, *a, **k: Verdict(0.0, 0.0, 0, self.ceiling))
    path = hf_llpf.connect(*small_cnn_pair, digits, config=QUICK, run_dir=tmp_path / "r", progress=False)
    cert = path.summary["run"]["certification"]
    x, y = every_example(digits)
    above = [i for i in range(len(path)) if own_probe_loss(path.model_at(i), x, y) > cert["ceiling"]]
    assert above, "the unrepaired moves should leave points above the ceiling"
    assert not cert["certified"]
    named = [u for u in cert["uncertified"] if u.get("check") == "final" and u["what"] == "point"]
    assert [u["tick"] for u in named] == [path.metrics[i]["tick"] for i in above]
    assert certification_line(cert).startswith("NOT certified:")


@pytest.mark.slow
def test_above_the_exact_limit_decisions_are_sequential_and_the_guarantee_says_so(small_cnn_pair, digits, tmp_path):
    # 1437 training images: the sequential route; a ceiling well above the path, so most points are far under it.
    config = {**QUICK, "certify_exact_max": 700, "loss_ceiling": 0.3, "max_ticks": 12}
    path = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "r", progress=False)
    cert = path.summary["run"]["certification"]
    assert cert["route"] == "sequential" and cert["delta"] == 0.05 and cert["decision_cap"] == 700
    assert cert["clip"] == pytest.approx(10 * cert["ceiling"]) and "final_check" not in cert
    per = cert["examples_per_decision"]
    assert per and max(per) <= 700 and len(per) == cert["decisions"]
    # Far from the ceiling a decision stops after its first batches; only those near it read up to the cap.
    assert min(per) <= 64 and sorted(per)[len(per) // 2] < 700, per
    if cert["certified"]:
        assert certification_line(cert).startswith(
            "certified with confidence 0.95: every saved point and every segment at t = 0.5 has a mean of "
            f"min(loss, {cert['clip']:.4g}) <= {cert['ceiling']:.4g} over the 1437 training examples, and at most "
        )
    else:
        assert certification_line(cert).startswith("NOT certified:")


def test_the_auto_ceiling_follows_the_task():
    import math

    from tiny_models import tiny_gpt2

    from hf_llpf.algorithms.certify import CEILING_RULES, ceiling_rule, resolve_ceiling

    auto = ConnectConfig()
    lm, cnn = tiny_gpt2(0, vocab_size=50), torch.nn.Linear(2, 2)
    assert ceiling_rule([lm]) == "causal-lm" and ceiling_rule([cnn]) == "classifier"
    assert ceiling_rule([lm], loss_fn=lambda m, b: 0) == "custom"
    # A pair of small GPT-2s at 3.545: perplexity at most 1.5x theirs (the classifier's rule gave 5.317).
    assert resolve_ceiling(auto, [3.5, 3.545], rule="causal-lm") == pytest.approx(3.545 + math.log(1.5))
    assert math.exp(resolve_ceiling(auto, [3.545], rule="causal-lm")) == pytest.approx(1.5 * math.exp(3.545))
    assert resolve_ceiling(auto, [3.545], rule="classifier") == pytest.approx(3.545 * 1.5)
    assert resolve_ceiling(auto, [0.002], rule="custom") == pytest.approx(0.042)
    assert "perplexity at most 1.5x" in CEILING_RULES["causal-lm"] and "set loss_ceiling" in CEILING_RULES["custom"]


@pytest.mark.slow
def test_a_sequential_run_killed_mid_way_draws_the_same_examples_after_its_resume(
    small_cnn_pair, digits, tmp_path, monkeypatch
):
    from conftest import connect_killed_after, state_equal
    from test_certify import assert_same_certificate

    config = {**QUICK, "certify_exact_max": 700, "loss_ceiling": 0.3, "max_ticks": 12}
    whole = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=tmp_path / "whole", progress=False)
    run = tmp_path / "killed"
    connect_killed_after(2, monkeypatch, *small_cnn_pair, digits, config=config, run_dir=run, progress=False)
    resumed = hf_llpf.connect(*small_cnn_pair, digits, config=config, run_dir=run, exist="resume", progress=False)
    strip = lambda rows: [{c: v for c, v in r.items() if c != "point"} for r in rows]  # noqa: E731
    assert strip(resumed.metrics) == strip(whole.metrics)  # the same decisions, so the same values
    assert all(state_equal(resumed.state_dict_at(i), whole.state_dict_at(i)) for i in range(len(whole)))
    cert = resumed.summary["run"]["certification"]
    assert cert["route"] == "sequential"
    assert_same_certificate(cert, whole.summary["run"]["certification"])
