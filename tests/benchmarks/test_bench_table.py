"""``python -m benchmarks table``: the cell cache (resume, settings keys, a killed run), the winners per family, the
heaviest LLPF stage, and the refusal rows the comparison itself writes (no training: fake runners, untrained
models)."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import table
from benchmarks.__main__ import ENTRIES


def _row(family: str, method: str, seed: int, **figures) -> dict:
    return {"family": family, "method": method, "seed": seed, "status": "ok", "certified": None, **figures}


class FakeRunner:
    """Records the cells it was asked to run; LLPF certifies at a ceiling of 0.5 with 9 points."""

    def __init__(self, fail_at: int | None = None):
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def __call__(self, family, method, seed, values, llpf):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt  # the run is killed in this cell
        self.calls.append((family, method, seed, llpf))
        extra = {"ceiling": 0.5, "points": 9, "certified": True} if method == "llpf" else {}
        return _row(family, method, seed, max_train_loss=0.1 * (len(self.calls)), **extra)


def _run(tmp_path, *argv, runner=None):
    return table.main([*argv, "--results", str(tmp_path), "--plots", str(tmp_path)], runner=runner)


def _records(tmp_path) -> list[dict]:
    return [json.loads(line)["row"] for line in (tmp_path / "table.jsonl").read_text().splitlines()]


def test_the_entry_is_registered():
    assert "table" in ENTRIES


def test_second_run_skips_done_cells_and_other_settings_are_not_reused(tmp_path, capsys):
    first = FakeRunner()
    assert _run(tmp_path, "--families", "lenet5", "--methods", "linear,bezier,llpf", runner=first) == 0
    # LLPF first within the family; Bézier gets the LLPF cell's ceiling and points, linear none.
    assert [c[1] for c in first.calls] == ["llpf", "bezier", "linear"]
    assert first.calls[0][3] is None and first.calls[2][3] is None
    assert first.calls[1][3] == {"ceiling": 0.5, "points": 9}
    assert len(_records(tmp_path)) == 3

    again = FakeRunner()
    assert _run(tmp_path, "--families", "lenet5", "--methods", "llpf,bezier,linear", runner=again) == 0
    assert again.calls == []
    assert "lenet5 bezier seed 0: recorded, skipped" in capsys.readouterr().out
    assert len(_records(tmp_path)) == 3

    other = FakeRunner()  # another certify cap: another key, every cell runs again
    assert _run(tmp_path, "--families", "lenet5", "--methods", "llpf,bezier,linear", "--cap", "100",
                runner=other) == 0  # fmt: skip
    assert [c[1] for c in other.calls] == ["llpf", "bezier", "linear"]
    hashes = {r["settings_hash"] for r in _records(tmp_path)}
    assert len(hashes) == 2

    seeds = FakeRunner()  # another seed is another cell; a subset of methods runs only those
    assert _run(tmp_path, "--families", "lenet5", "--methods", "linear", "--seeds", "3", runner=seeds) == 0
    assert seeds.calls == [("lenet5", "linear", 3, None)]


def test_a_killed_run_loses_only_its_current_cell(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "--families", "lenet5,resnet18", "--methods", "llpf,linear", runner=FakeRunner(fail_at=3))
    assert [(r["family"], r["method"]) for r in _records(tmp_path)] == [
        ("lenet5", "llpf"), ("lenet5", "linear"), ("resnet18", "llpf")]  # fmt: skip
    rest = FakeRunner()
    _run(tmp_path, "--families", "lenet5,resnet18", "--methods", "llpf,linear", runner=rest)
    assert [(c[0], c[1]) for c in rest.calls] == [("resnet18", "linear")]
    assert rest.calls[0][3] is None  # linear takes no ceiling


def test_until_starts_no_cell_after_the_time(tmp_path, capsys):
    late = FakeRunner()
    _run(tmp_path, "--families", "lenet5", "--methods", "llpf", "--until", "00:00", runner=late)
    assert late.calls == [] and not (tmp_path / "table.jsonl").exists()
    assert "lenet5 llpf seed 0: not started (--until 00:00 UTC has passed)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        _run(tmp_path, "--until", "25:00", runner=late)
    assert err.value.code == 2


def test_consistency_plans_seeds_of_the_trained_methods_and_reports_their_spread(tmp_path, capsys):
    def runner(family, method, seed, values, llpf):
        top = {0: 0.10, 1: 0.14, 2: 0.12}[seed] + (0.5 if method == "bezier" else 0.0)
        curve = [[0.0, 0.0], [1.0, top]]
        figures = {"iters_to_certify": 10, "seconds_to_certify": 1.0, "ceiling": 1.0, "curve": curve}
        return _row(family, method, seed, max_train_loss=top, full_set_max=top, certified=True, **figures)

    assert _run(tmp_path, "--families", "lenet5", "--consistency", "3", runner=runner) == 0
    rows = _records(tmp_path)
    assert sorted({(r["method"], r["seed"]) for r in rows}) == [
        (m, s) for m in ("autoneb", "bezier", "llpf") for s in (0, 1, 2)]  # fmt: skip
    spread = {s["method"]: s for s in table.spread(rows)}
    assert spread["llpf"]["range"] == pytest.approx(0.04)
    assert spread["llpf"]["std"] == pytest.approx(0.02)
    assert spread["bezier"]["mean"] == pytest.approx(0.62)
    out = capsys.readouterr().out
    assert "| lenet5 | llpf | 3 | 3 | 0.1200 | 0.0400 | 0.0200 |" in out
    png = tmp_path / "table-consistency-lenet5.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit, match="--consistency 3 with 2 --seeds"):
        _run(tmp_path, "--families", "lenet5", "--consistency", "3", "--seeds", "1,2", runner=runner)


def test_winner_per_row():
    rows = [
        _row("f", "llpf", 0, max_train_loss=0.05, certified=True, iters_to_certify=300, seconds_to_certify=9.0),
        _row("f", "bezier", 0, max_train_loss=0.04, certified=True, iters_to_certify=250, seconds_to_certify=12.0),
        _row("f", "autoneb", 0, max_train_loss=0.03, certified=False, iters_to_certify=None, cap_hit=True),
        _row("f", "linear", 0, max_train_loss=2.0),
        {"family": "f", "method": "weight-matching", "seed": 0, "status": "not applicable: grouped convolution"},
    ]
    assert table.winners(rows) == {"max": "autoneb (0.03000)", "cost": "bezier (250 SGD iterations, 12.0 s)"}
    rows[1]["iters_to_certify"] = 300  # equal iterations: the seconds decide
    assert table.winners(rows)["cost"] == "llpf (300 SGD iterations, 9.0 s)"
    rows[0]["max_train_loss"] = 0.03  # a tie is named as one
    assert table.winners(rows)["max"] == "llpf = autoneb (0.03000)"
    rows[0]["full_set_max"] = 0.031  # the final check's midpoints count: above autoneb's points
    assert table.winners(rows)["max"] == "autoneb (0.03000)"
    rows[2]["full_set_max"] = 0.032
    assert table.winners(rows)["max"] == "llpf (0.03100)"
    assert table.winners(rows[3:]) == {"max": "linear (2.00000)", "cost": "none certified"}
    text = table.render(rows)
    assert "| f | 0 | llpf (0.03100) | llpf (300 SGD iterations, 9.0 s) |" in text
    assert "| f | weight-matching | 0 | not applicable: grouped convolution |" in text
    assert "| f | autoneb | 0 | cap hit |" in text


def test_heaviest_stage_names_the_stage_and_the_cause():
    stages = [
        {"phase": "m2m", "stage": 0, "ticks": 10, "sgd_iters": 100, "backtracks": 0},
        {"phase": "m2m", "stage": 1, "ticks": 5, "sgd_iters": 400, "backtracks": 3},
        {"phase": "m2m", "stage": 2, "ticks": 0, "sgd_iters": 0, "backtracks": 0},
    ]
    top = table.heaviest_stage(stages, endpoint_iters=100)
    assert top["stage"] == 1 and top["share"] == pytest.approx(0.8)
    assert top["text"] == (
        "m2m stage 1: 400 of 500 SGD iterations (80%) in 5 ticks, 3 backtracks (4.0x one endpoint's iterations)"
    )
    assert top["cause"] == ("3 moves retried shorter (backtracks); long repairs (80.0 SGD iterations per tick against "
                            "the run's 33.3)")  # fmt: skip
    assert table.heaviest_stage([], 100) is None
    alone = table.heaviest_stage(stages[:1], endpoint_iters=None)
    assert alone["text"] == "m2m stage 0: 100 of 100 SGD iterations (100%) in 10 ticks, 0 backtracks"
    assert alone["cause"] == "the run's only stage (10 ticks, 10.0 SGD iterations per tick)"
    row = {**_row("f", "llpf", 0, x_endpoint=5.0), "heaviest_stage": top}
    assert table._stage(row).startswith("**above 3x**: m2m stage 1")


def test_weight_matching_refusal_is_a_row_with_the_comparisons_reason(tmp_path):
    from benchmarks.families import FAMILIES
    from hf_llpf.data.bundle import load_data
    from hf_llpf.models.endpoints import create_model

    fam = FAMILIES["mobilenetv2"]
    data = load_data("digits", image_size=fam.image_size)
    torch.manual_seed(0)
    shape = {"num_classes": data.num_classes, "in_chans": data.input_shape[0], **fam.model_args}
    a, b = (create_model(fam.model, **shape) for _ in range(2))
    values = table.settings("mobilenetv2", {})
    row = table.compare_cell(a, b, data, "weight-matching", 0, values, tmp_path / "wm")
    assert row["status"].startswith("not applicable: ")
    cell = table.cell_row("mobilenetv2", "weight-matching", 0, row, None)
    assert cell["status"] == row["status"] and "max_train_loss" not in cell
    assert f"| mobilenetv2 | weight-matching | 0 | {row['status']} |" in table.render([cell])


def test_language_family_rows_carry_the_comparisons_refusal(tmp_path, monkeypatch):
    monkeypatch.setattr(table.harness, "CACHE", tmp_path)
    row = table.cell_job("bert", "linear", 0, table.settings("bert", {}))
    assert row["status"] == "not run: train_data: compare needs a data spec, DataConfig or DataBundle (its test " \
        "split too)"  # fmt: skip
    assert row["family"] == "bert" and row["endpoint_iters"] is None
