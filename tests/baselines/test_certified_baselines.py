"""Bézier and AutoNEB held under LLPF's certificate (docs/baselines.md, "Certified baselines"): they train in rounds
until every checked position (the written points and each segment's midpoint, on every training example) is under
the ceiling, or the cap; the run directory says which, and at what cost; ``compare`` reports it per method."""

from __future__ import annotations

import json

import pytest

from hf_llpf.algorithms.certify import certification_line
from hf_llpf.baselines import build_baseline
from hf_llpf.baselines.certify import CertifySettings, certify_settings
from hf_llpf.errors import ConfigError

# Small and fast: 5 points (4 segment midpoints), rounds of 20 SGD iterations at a learning rate that bends the
# curve within a few rounds. The straight line between the pair's ends is above 1.0 at its middle.
FAST = {"points": 5, "bezier": {"lr": 0.05}}
GENEROUS = 0.5  # above the ends (about 0.020 and 0.017) and reached by the curve within the cap
ROUNDS = {"round_iters": 20, "cap": 400}


def _cert(path) -> dict:
    return path.summary["run"]["certification"]


@pytest.fixture(scope="module")
def generous(small_cnn_pair, digits, tmp_path_factory):
    """A Bézier run under the generous ceiling, built once for the tests that read it."""
    run = tmp_path_factory.mktemp("bz") / "bz"
    return build_baseline("bezier", *small_cnn_pair, digits, run_dir=run, ceiling=GENEROUS, certify=ROUNDS, **FAST)


def test_a_bezier_run_under_a_generous_ceiling_certifies_and_records_its_cost(generous, digits):
    cert, run = _cert(generous), generous.summary["run"]
    assert cert["certified"] is True and cert["stopped"] == "certified" and cert["cap_hit"] is False
    assert cert["ceiling"] == GENEROUS and cert["ceiling_source"] == "given" and cert["route"] == "exact"
    assert cert["probe_examples"] == digits.split_size("train") == 1437  # every training example
    # It stopped at the first round whose check accepted the path: the cost is the SGD iterations it spent.
    rounds = cert["rounds"]
    assert [r["sgd_iters"] for r in rounds] == [20 * i for i in range(len(rounds))]
    assert [r["certified"] for r in rounds] == [False] * (len(rounds) - 1) + [True]
    assert rounds[0]["highest"]["loss"] > GENEROUS  # the straight line (round 0) is above
    assert cert["iters_to_certify"] == run["sgd_iters"] == rounds[-1]["sgd_iters"] > 0
    assert 0 < cert["seconds_to_certify"] <= run["seconds_this_session"]
    # The final check read the written points back: 5 points and 4 midpoints, all under, the maximum recorded.
    final = cert["final_check"]
    assert (final["points"], final["segments"], cert["checked_points"]) == (5, 4, 5)
    assert cert["full_set_max"] == final["max"] == max(final["point_losses"] + final["segment_losses"])
    assert final["max"] <= GENEROUS and final["reused"] == 9  # the same bits the last round measured
    assert [row["full_loss"] for row in generous.metrics] == final["point_losses"]
    assert certification_line(cert).startswith(
        "certified: every saved point and every segment at t = 0.5 has mean eval-mode training loss <= 0.5 "
        f"over all {cert['probe_examples']} training examples (exact; final check: maximum"
    )
    assert generous.config["baseline"]["certify"] == ROUNDS
    assert "iters" not in generous.config["baseline"]["bezier"]  # not used under a ceiling


def test_a_rerun_gives_the_same_path_and_the_same_record(generous, small_cnn_pair, digits, tmp_path):
    again = build_baseline("bezier", *small_cnn_pair, digits, run_dir=tmp_path / "bz", ceiling=GENEROUS,
                           certify=ROUNDS, **FAST)  # fmt: skip
    a, b = _cert(generous), _cert(again)
    assert a["point_sha256"] == b["point_sha256"]
    for key in ("iters_to_certify", "full_set_max", "decisions", "examples_run", "uncertified"):
        assert a[key] == b[key], key
    timed = ("seconds",)
    assert {k: v for k, v in a["final_check"].items() if k not in timed} == {
        k: v for k, v in b["final_check"].items() if k not in timed
    }
    assert [(r["sgd_iters"], r["highest"]) for r in a["rounds"]] == [
        (r["sgd_iters"], r["highest"]) for r in b["rounds"]
    ]


def test_a_certified_baseline_verifies_like_an_llpf_run(generous, digits):
    from hf_llpf.verify import verify_path

    report = verify_path(generous, data=digits)
    assert report["holds"] is True and report["above"] == [] and report["hashes"]["differ"] == []
    assert report["losses"]["checked"] == 9 and report["losses"]["differ"] == []


def test_a_ceiling_the_curve_cannot_reach_within_the_cap_stops_there_and_says_so(small_cnn_pair, digits, tmp_path):
    ceiling = 0.025  # above both ends, far below the bent curve's middle after 40 iterations
    path = build_baseline("bezier", *small_cnn_pair, digits, run_dir=tmp_path / "bz", ceiling=ceiling,
                          certify={"round_iters": 20, "cap": 40}, **FAST)  # fmt: skip
    cert = _cert(path)
    assert cert["certified"] is False and cert["stopped"] == "cap" and cert["cap_hit"] is True and cert["cap"] == 40
    assert path.summary["run"]["sgd_iters"] == 40 and [r["sgd_iters"] for r in cert["rounds"]] == [0, 20, 40]
    assert cert["iters_to_certify"] is None and cert["seconds_to_certify"] is None
    # What stayed above is named by the final check, on every training example: the three interior points and
    # the four midpoints, each above the ceiling; the ends are under it.
    above = cert["uncertified"]
    assert sorted((u["what"], u["tick"]) for u in above) == [
        ("point", 1), ("point", 2), ("point", 3), ("segment", 1), ("segment", 2), ("segment", 3), ("segment", 4),
    ]  # fmt: skip
    assert all(u["loss"] > ceiling and u["check"] == "final" for u in above)
    assert cert["full_set_max"] == max(u["loss"] for u in above) > ceiling
    assert certification_line(cert).startswith("NOT certified: 7 above the ceiling 0.025 over all")


def test_a_ceiling_below_an_end_stops_before_any_training(small_cnn_pair, digits, tmp_path):
    path = build_baseline("bezier", *small_cnn_pair, digits, run_dir=tmp_path / "bz", ceiling=0.01,
                          certify=ROUNDS, **FAST)  # fmt: skip
    cert = _cert(path)
    assert cert["stopped"] == "end above" and cert["certified"] is False and cert["cap_hit"] is False
    assert path.summary["run"]["sgd_iters"] == 0 and cert["rounds"] == []
    ends = [(u["what"], u["tick"]) for u in cert["uncertified"] if u["what"] == "point" and u["tick"] in (0, 4)]
    assert ends == [("point", 0), ("point", 4)]
    assert [u["loss"] for u in cert["uncertified"][:1]] == [cert["endpoint_probe_losses"][0]]


def test_certify_settings_are_checked_at_once(tmp_path):
    assert certify_settings(None) == CertifySettings() and CertifySettings().cap == 3000
    with pytest.raises(ConfigError) as err:
        certify_settings({"round_iters": 0, "cap": -1})
    assert err.value.problems == [
        "certify round_iters=0: must be a whole number >= 1",
        "certify cap=-1: must be a whole number >= 0",
    ]
    with pytest.raises(ConfigError, match="certify 'rounds': unknown setting"):
        certify_settings({"rounds": 3})
    with pytest.raises(ConfigError) as err:  # refused before the endpoints and data are loaded
        build_baseline("autoneb", "no/such-model", "no/such-model", "digits", run_dir=tmp_path / "n",
                       ceiling=-1.0, certify={"round_iters": 10})  # fmt: skip
    assert err.value.problems == [
        "ceiling=-1.0: must be a positive number, or None (the settings' loss_ceiling)",
        "certify round_iters=10: must be >= autoneb max_pivots (15), so that every round moves each pivot at least "
        "once",
    ]
    assert not (tmp_path / "n").exists()


@pytest.mark.slow
def test_compare_reports_each_methods_certificate_and_cost(generous, small_cnn_pair, digits, tmp_path):
    from hf_llpf import compare

    table = compare(*small_cnn_pair, digits, out_dir=tmp_path / "c", methods=["linear", "bezier", "autoneb"],
                    config={"loss_ceiling": GENEROUS}, certify={"round_iters": 20, "cap": 40}, train_subset=200,
                    continuity_k=0, **FAST)  # fmt: skip
    rows = {r["method"]: r for r in table["rows"]}
    assert rows["linear"]["certified"] is None and rows["linear"]["iters_to_certify"] is None
    bz, neb = rows["bezier"], rows["autoneb"]
    assert bz["certified"] is True and bz["ceiling"] == GENEROUS == neb["ceiling"]
    # The same certificate as the run built alone (same ceiling, points, rounds and seed) at the same cost.
    assert bz["iters_to_certify"] == _cert(generous)["iters_to_certify"] == bz["sgd_iters"]
    assert bz["full_set_max"] == _cert(generous)["full_set_max"]
    assert bz["seconds_to_certify"] > 0 and bz["cap_hit"] is False
    assert neb["certified"] is False and neb["cap_hit"] is True and neb["sgd_iters"] <= 40
    assert neb["iters_to_certify"] is None and neb["full_set_max"] > GENEROUS
    md = (tmp_path / "c" / "comparison.md").read_text().splitlines()
    assert md[0].endswith("| certified | SGD iters to certify | s to certify | full-set max |")
    bz_line = next(line for line in md if line.startswith("| bezier |"))
    assert bz_line.endswith(
        f"| yes | {bz['iters_to_certify']} | {bz['seconds_to_certify']:.1f} | {bz['full_set_max']:.4f} |"
    )
    assert next(line for line in md if line.startswith("| linear |")).endswith("| — | — | — | — |")
    assert any(line.startswith("- autoneb: NOT certified: the cap of 40 SGD iterations was reached; ") for line in md)
    assert md[-1] == (
        f"verdict: lowest cost to certify: bezier ({bz['iters_to_certify']} SGD iterations, "
        f"{bz['seconds_to_certify']:.1f} s); no other method was certified"
    )
    assert json.loads((tmp_path / "c" / "comparison.json").read_text())["rows"][1]["certified"] is True


def test_above_certify_exact_max_the_rounds_take_the_sequential_route_and_the_final_check_is_whole(
    small_cnn_pair, digits, tmp_path
):
    path = build_baseline("bezier", *small_cnn_pair, digits, run_dir=tmp_path / "bz", ceiling=GENEROUS,
                          certify=ROUNDS, config={"certify_exact_max": 500}, **FAST)  # fmt: skip
    cert = _cert(path)
    assert cert["route"] == "sequential" and cert["certified"] is True and cert["decision_cap"] == 500
    assert max(cert["examples_per_decision"]) <= 500 and cert["delta"] == 0.05
    # The final check is not sampled: every point and midpoint on all 1437 training examples.
    final = cert["final_check"]
    assert final["examples"] == 1437 and final["reused"] == 0 and final["examples_run"] == 9 * 1437
    assert cert["full_set_max"] == final["max"] <= GENEROUS
    assert certification_line(cert).startswith("certified with confidence 0.95: every saved point and every segment")


def test_the_cli_refuses_a_bad_cap_before_any_work(small_cnn_pair, tmp_path, capsys):
    from hf_llpf.cli import main

    argv = [
        "compare",
        *map(str, small_cnn_pair),
        "--data",
        "digits",
        "--methods",
        "bezier",
        "--out",
        str(tmp_path / "c"),
    ]
    assert main([*argv, "--certify-cap", "-1", "--certify-round", "0"]) == 2
    err = capsys.readouterr().err
    assert "certify round_iters=0: must be a whole number >= 1" in err and "certify cap=-1: must be" in err
    assert not (tmp_path / "c").exists()


def test_autoneb_certifies_in_rounds_that_insert_pivots_between_them(small_cnn_pair, digits, tmp_path):
    path = build_baseline("autoneb", *small_cnn_pair, digits, run_dir=tmp_path / "n", points=5, ceiling=GENEROUS,
                          autoneb={"lr": 0.05}, certify={"round_iters": 30, "cap": 600})  # fmt: skip
    cert, run = _cert(path), path.summary["run"]
    assert cert["certified"] is True and cert["stopped"] == "certified"
    # Each round spends whole NEB steps (3 interior pivots: 10 steps of 3 iterations); from the second round on it
    # first inserts pivots where the band rises (here none).
    assert [r["sgd_iters"] for r in cert["rounds"]] == [0, 30, 60] and cert["iters_to_certify"] == run["sgd_iters"]
    assert run["autoneb"]["pivots"] == 3 and run["autoneb"]["inserted_per_cycle"] == [0]
    assert cert["full_set_max"] <= GENEROUS and cert["final_check"]["reused"] == 9
    assert "iters" not in path.config["baseline"]["autoneb"] and "cycles" not in path.config["baseline"]["autoneb"]
