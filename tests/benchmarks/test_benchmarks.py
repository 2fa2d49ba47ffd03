"""The benchmarks' entry points and harness (no benchmark is run), the reference table and docs writer (synthetic
rows, no training), and ``hf-llpf connect --profile``."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys

import pytest
import safetensors.torch
import torch

from benchmarks import harness, hashes
from benchmarks import reference as bench
from benchmarks.__main__ import ENTRIES
from hf_llpf.cli import main
from hf_llpf.config import TrainRecipe
from hf_llpf.training.endpoint import train_endpoint


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
    marks = (bench.START_MARK, bench.END_MARK)
    assert harness.update_doc_section(readme, "| new | table |\n", marks)
    assert harness.update_doc_section(readme, "| newer | table |\n", marks)  # rerunning replaces, never appends
    text = readme.read_text()
    section = f"{bench.START_MARK}\n| newer | table |\n{bench.END_MARK}"
    assert text == f"# x\n\n## Performance\n{section}\n\n## After\nkept\n"
    no_markers = tmp_path / "other.md"
    no_markers.write_text("nothing\n")
    assert not harness.update_doc_section(no_markers, "x", marks) and no_markers.read_text() == "nothing\n"


def test_families_table_rows_compare_sgd_with_the_probe_engines_latest_row(tmp_path):
    from benchmarks import families

    def record(family, sgd, threads=1, **extra):
        return {"threads": threads, "row": {"family": family, "method": "m2m", "sgd_iters": sgd, **extra}}

    records = [
        record("lenet5", 100),
        record("lenet5", 80),  # the probe engine's latest: the reference
        record("lenet5", 50, threads=2, route="exact"),  # two threads: not in the table
        record("lenet5", 120, route="exact"),
        record("gpt2", 36, route="exact"),  # no probe-engine row: no ratio
        record("resnet18", 351),  # the probe engine's row only: shown, no ratio
    ]
    file = tmp_path / "families.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = families.table_rows(file)
    assert [(r["family"], r["sgd_iters"]) for r in rows] == [("lenet5", 120), ("resnet18", 351), ("gpt2", 36)]
    assert rows[0]["sgd_vs_probe_engine"] == 1.5
    assert "sgd_vs_probe_engine" not in rows[1] and "sgd_vs_probe_engine" not in rows[2]


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


# ------------------------------------------------------------------------------------------ entries and harness
def test_list_names_every_entry_with_one_line():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=harness.ROOT, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(ENTRIES)
    assert all(len(line.split()) > 3 for line in lines)
    bad = subprocess.run([sys.executable, "-m", "benchmarks", "nosuch"], cwd=harness.ROOT, capture_output=True,
                         text=True, check=False)  # fmt: skip
    assert bad.returncode == 2 and "unknown benchmark 'nosuch'" in bad.stderr and "certificate" in bad.stderr


def _helps() -> list[tuple[str, list[str]]]:
    cases = [(name, []) for name in ENTRIES]
    cases += [("speed", [part]) for part in ("geometry", "layout", "evaluate", "storage", "memory")]
    return cases + [("gpu", ["m2m"]), ("gpu", ["paper"]), ("gpu", ["check"])]


@pytest.mark.parametrize(("name", "sub"), _helps(), ids=[" ".join([n, *s]) for n, s in _helps()])
def test_every_entry_parser_accepts_help(name, sub, capsys):
    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.parser().parse_args([*sub, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m benchmarks {' '.join([name, *sub])}")
    assert "--threads" in out and "--no-record" in out or not sub and name in ("speed", "gpu")


def test_overrides_nest_and_split_on_commas():
    got = harness.parse_overrides(["step_r=0.1,arrival_tol=0.1", "m2o.lr_policy=none", "", "loss_ceiling=null"])
    assert got == {"step_r": 0.1, "arrival_tol": 0.1, "m2o": {"lr_policy": "none"}, "loss_ceiling": None}
    with pytest.raises(SystemExit, match="'step_r': expected key=value"):
        harness.parse_overrides(["step_r"])


def test_measure_reports_the_child_peak_rss_and_results_append_json_lines(tmp_path, capsys):
    got = harness.measure("tests.bench_child:hold", {"mib": 200}, threads=None)
    assert got["held"] == 200 and 200 <= got["peak_rss_mib"] < 400 and got["process_s"] > 0
    args = harness.common_options(harness.entry_parser("x", "doc")).parse_args(["--results", str(tmp_path)])
    results = harness.Results("x", args, ["--a", "1"])
    results.add({"v": 0.5, "name": "one"})
    results.add({"name": "two"})
    records = harness.read_results(tmp_path / "x.jsonl")
    assert [r["row"] for r in records] == [{"v": 0.5, "name": "one"}, {"name": "two"}]
    assert records[0]["command"] == "python -m benchmarks x --a 1" and records[0]["threads"] == 1
    table = results.table([("name", "name", str), ("v", "value", harness.fmt(".2f"))])
    assert table.splitlines() == ["| name | value |", "|---|---|", "| one | 0.50 |", "| two | – |"]
    assert capsys.readouterr().out == table + "\n"


def test_tensor_hash_ignores_file_metadata_and_compare_names_the_first_change(tmp_path):
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "n": torch.tensor(3)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    safetensors.torch.save_file(state, str(tmp_path / "a" / "model.safetensors"), {"format": "pt"})
    safetensors.torch.save_file(state, str(tmp_path / "b" / "model.safetensors"), {"format": "pt", "v": "2"})
    a, b = hashes.folder_hashes(tmp_path / "a"), hashes.folder_hashes(tmp_path / "b")
    assert a["tensors"] == b["tensors"] and a["files"] != b["files"]
    state["w"][1, 2] = 5.000001
    safetensors.torch.save_file(state, str(tmp_path / "b" / "model.safetensors"), {"format": "pt"})
    changed = hashes.folder_hashes(tmp_path / "b")
    assert changed["tensors"] != a["tensors"]

    def run(*points):
        return {"points": [{"index": i, "tick": i, **p} for i, p in enumerate(points)]}

    old = run(a, a)
    assert hashes.compare_run(old, run(a, a)) == "same"
    assert hashes.compare_run(old, run(a, b)) == "same (the files' bytes differ: headers or metadata)"
    assert hashes.compare_run(old, run(a, changed)) == "different: from point 1 (tick 1; now tick 1)"
    assert hashes.compare_run(old, run(a)) == "different: 1 points instead of 2"
    assert hashes.compare_run(old, None) == "different: not run"
    assert json.loads(json.dumps(old)) == old  # what --record writes is what --check reads


def test_eta_entry_reads_progress_lines_against_the_time_left(tmp_path):
    import datetime

    from benchmarks import eta

    start = datetime.datetime(2026, 1, 1, 12, 0, 0).timestamp()
    log = tmp_path / "hf_llpf.log"
    log.write_text(
        "2026-01-01 12:00:05,000 INFO loss ceiling 0.04\n"
        "2026-01-01 12:00:10,000 INFO llpf m2m: 1/4 stages done, tick 9; 5 s so far, ETA ~30 s\n"
        "2026-01-01 12:00:20,500 INFO llpf m2m: 2/4 stages done, tick 16; 15 s so far, ETA ~1.5 min\n"
        "2026-01-01 12:00:21,000 INFO llpf m2m: 2/4 stages done, tick 17; 16 s so far, ETA after the first stage\n"
        "2026-01-01 12:00:30,000 INFO llpf m2m: 4/4 stages done, tick 30; 25 s so far, last stage arriving\n",
        encoding="utf-8",
    )
    lines = eta.read_lines(log, start, start + 40.0)
    assert [(x["at"], x["done"], x["eta"], x["left"], x["ratio"]) for x in lines] == [
        (10.0, 1, 30.0, 30.0, 1.0),
        (20.5, 2, 90.0, 19.5, 4.62),
    ]
    assert eta.half_way(lines, 40.0) == lines[1] and eta.half_the_stages(lines) == lines[1]
    assert eta.half_way([], 40.0) is None and eta.half_the_stages(lines[:1]) is None
