"""The benchmark's table and README writer (synthetic rows, no training) and ``hf-llpf connect --profile``."""

from __future__ import annotations

import re

import pytest

from benchmarks import run as bench
from hf_llpf.cli import main
from hf_llpf.config import TrainRecipe
from hf_llpf.train import train_endpoint


def _measured(loss: float, ticks: int, iters: int, wall: float, train_s: float) -> dict:
    judged = {"max_train_loss": loss, "barrier": loss / 2, "worst_continuity_loss": loss, "test_acc_range": [0.9, 1.0]}
    linear = {"max_train_loss": 2.42, "barrier": 2.418, "worst_continuity_loss": None, "test_acc_range": [0.1556, 1.0]}
    return {
        "llpf": judged,
        "linear": linear,
        "ticks": ticks,
        "sgd_iters": iters,
        "wall_s": wall,
        "train_s": train_s,
        "peak_rss_mib": 512.0,
        "points": 7,
    }


def test_rows_table_and_readme_section(tmp_path):
    ref, default = _measured(0.2, 600, 12000, 100.0, 90.0), _measured(0.06, 538, 2815, 34.0, 30.0)
    rows = bench.make_rows("small_cnn / digits", 690, {"reference": ref, "defaults": default})
    settings = ["reference-equivalent (scaled)", "hf_llpf defaults", "linear interpolation"]
    assert [r["settings"] for r in rows] == settings
    assert rows[1]["x_endpoint"] == pytest.approx(2815 / 690)
    assert rows[1]["outside_sgd"] == pytest.approx(4 / 34)

    table = bench.markdown_table(rows).splitlines()
    assert len(table) == 5 and table[0].count("|") == table[1].count("|") == table[2].count("|") == 13
    assert table[3] == (
        "| small_cnn / digits | hf_llpf defaults | 0.0600 | 0.0300 | 0.0600 | 90.00% – 100.00% | 538 | 2815 | 4.08 "
        "| 34.0 | 11.8% | 512 |"
    )
    # The linear baseline has no SGD, time or memory of its own: dashes, not zeros.
    linear = "| small_cnn / digits | linear interpolation | 2.4200 | 2.4180 | – | 15.56% – 100.00% | 0 "
    assert table[4] == linear + "| – | – | – | – | – |"

    cons = bench.consistency([0.05, 0.06, 0.07])
    assert (cons["mean"], cons["std"], cons["cv"]) == pytest.approx((0.06, 0.01, 1 / 6))

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n{bench.START_MARK}\nold\n{bench.END_MARK}\n\n## After\nkept\n")
    assert bench.update_readme(readme, "| new | table |\n")
    assert bench.update_readme(readme, "| newer | table |\n")  # rerunning replaces, never appends
    text = readme.read_text()
    section = f"{bench.START_MARK}\n| newer | table |\n{bench.END_MARK}"
    assert text == f"# x\n\n## Performance\n{section}\n\n## After\nkept\n"
    no_markers = tmp_path / "other.md"
    no_markers.write_text("nothing\n")
    assert not bench.update_readme(no_markers, "x") and no_markers.read_text() == "nothing\n"


def test_reference_config_scales_ticks_and_step_together():
    cfg = bench.reference_config(bench.BENCHES["small_cnn"])
    # k = 20: 2000/20 = 100 ticks per stage, 6000/20 = 300 after the last one starts, step_a 0.001 × 20.
    assert [s["start"] for s in cfg["schedule"]] == [0, 100, 200, 300] and cfg["max_ticks"] == 600
    assert cfg["step_a"] == pytest.approx(0.02) and cfg["step_a"] * 100 == pytest.approx(0.001 * 2000)
    assert (cfg["step_r"], cfg["step_f"], cfg["min_iters"], cfg["lr"], cfg["momentum"]) == (0, 0, 20, 1e-3, 0)
    assert bench.unscaled_reference_iters(bench.BENCHES["small_cnn"]) == (3 * 2000 + 6000) * 20


def test_connect_profile_prints_phase_table(tmp_path, capsys, digits):
    recipe = {"model_args": {"width": 4}, "epochs": 1}
    for seed in (0, 1):
        train_endpoint(TrainRecipe(seed=seed, **recipe), out_dir=tmp_path / f"s{seed}", data=digits, progress=False)
    argv = ["connect", str(tmp_path / "s0"), str(tmp_path / "s1"), "--data", "digits", "--out", str(tmp_path / "run")]
    assert main([*argv, "--no-progress", "--profile", "step_r=0.5", "max_iters=2", "min_iters=1", "repair_budget=4",
                 "method=m2m", "loss_ceiling=null"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    ticks = int(re.search(r"(\d+) ticks", out).group(1))
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^(\w+)\s+([\d.]+)\s+([\d.]+)%\s+([\d.]+)$", out, re.M)}
    phases = {"snapshot", "move", "correct", "train", "record", "write_points", "write_metrics", "write_checkpoint"}
    assert phases | {"evaluate", "other", "total"} <= set(rows)
    # (the cheap phases of this tiny run can print as 0.000 s)
    assert float(rows["train"][0]) > 0 and float(rows["write_points"][0]) > 0
    assert float(rows["evaluate"][0]) == 0  # no evaluation inside the run (no --push-to-hub)
    total = float(rows["total"][0])
    assert rows["total"][1] == "100.0"
    # The phases add up to the wall time, and ms/tick is seconds / ticks (seconds are printed to 1 ms: ±0.5 ms).
    assert sum(float(v[0]) for k, v in rows.items() if k != "total") == pytest.approx(total, abs=0.01)
    assert float(rows["train"][2]) == pytest.approx(1000 * float(rows["train"][0]) / ticks, abs=0.5 / ticks + 0.01)
