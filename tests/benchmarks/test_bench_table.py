"""``python -m benchmarks table``: the cell cache (resume, settings keys, a killed run), the winners per family, the
heaviest LLPF stage, the refusal rows the comparison itself writes and a language family's cell on its in-memory
batches (no training: fake runners, untrained models)."""

from __future__ import annotations

import datetime
import json

import pytest
import torch

from benchmarks import table
from benchmarks.__main__ import ENTRIES


def _row(family: str, method: str, seed: int, **figures) -> dict:
    return {"family": family, "method": method, "seed": seed, "status": "ok", "certified": None, **figures}


class FakeRunner:
    """Records the cells it was asked to run; LLPF certifies at a ceiling of 0.5 with 9 points; the k-th cell's loss is
    0.1 * (k + offset)."""

    def __init__(self, fail_at: int | None = None, offset: int = 0):
        self.calls: list[tuple] = []
        self.fail_at, self.offset = fail_at, offset

    def __call__(self, family, method, seed, values, llpf):
        if self.fail_at is not None and len(self.calls) == self.fail_at:
            raise KeyboardInterrupt  # the run is killed in this cell
        self.calls.append((family, method, seed, llpf))
        extra = {"ceiling": 0.5, "points": 9, "certified": True} if method == "llpf" else {}
        return _row(family, method, seed, max_train_loss=0.1 * (len(self.calls) + self.offset), **extra)


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


def test_rerun_runs_recorded_cells_again_and_their_new_rows_replace_the_old(tmp_path):
    _run(tmp_path, "--families", "lenet5", "--methods", "llpf,bezier", runner=FakeRunner())
    again = FakeRunner(offset=5)  # its rows' losses differ from the first run's
    _run(tmp_path, "--families", "lenet5", "--methods", "llpf,bezier", "--rerun", runner=again)
    assert [(c[0], c[1]) for c in again.calls] == [("lenet5", "llpf"), ("lenet5", "bezier")]
    assert again.calls[1][3] == {"ceiling": 0.5, "points": 9}  # the curve takes the new LLPF cell's ceiling
    kept = table.recorded(tmp_path / "table.jsonl")
    assert sorted(round(r["max_train_loss"], 6) for r in kept.values()) == [0.6, 0.7]  # the new rows only
    assert len(_records(tmp_path)) == 4


def test_until_starts_no_cell_after_the_time(tmp_path, capsys, monkeypatch):
    # Parsed at 23:10, "00:00" is the next midnight; the cell would start at 00:01.
    clock = iter([datetime.datetime(2026, 12, 7, 23, 10, tzinfo=datetime.timezone.utc)])
    later = datetime.datetime(2026, 12, 8, 0, 1, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(table, "_now", lambda: next(clock, later))
    late = FakeRunner()
    _run(tmp_path, "--families", "lenet5", "--methods", "llpf", "--until", "00:00", runner=late)
    assert late.calls == [] and not (tmp_path / "table.jsonl").exists()
    assert "lenet5 llpf seed 0: not started (--until 00:00 UTC has passed)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        _run(tmp_path, "--until", "25:00", runner=late)
    assert err.value.code == 2


def test_until_names_the_next_occurrence_of_its_time(monkeypatch):
    monkeypatch.setattr(table, "_now", lambda: datetime.datetime(2026, 12, 7, 23, 10, tzinfo=datetime.timezone.utc))
    assert table._utc("23:30") == datetime.datetime(2026, 12, 7, 23, 30, tzinfo=datetime.timezone.utc)
    assert table._utc("00:40") == datetime.datetime(2026, 12, 8, 0, 40, tzinfo=datetime.timezone.utc)


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
    assert table.winners(rows[3:]) == {
        "max": "linear (2.00000); llpf, bezier, autoneb not run",
        "cost": "none certified; llpf, bezier, autoneb not run",
    }
    only_llpf = [rows[0], rows[3]]  # a win over methods that did not run is said to be one
    assert table.winners(only_llpf) == {
        "max": "llpf (0.03100); bezier, autoneb not run",
        "cost": "llpf (300 SGD iterations, 9.0 s); bezier, autoneb not run",
    }
    text = table.render(rows)
    assert "| f | 0 | llpf (0.03100) | llpf (300 SGD iterations, 9.0 s) |" in text
    assert "| f | weight-matching | 0 | not applicable: grouped convolution |" in text
    assert "| f | autoneb | 0 | cap hit |" in text


def test_a_cell_from_another_machine_than_its_llpf_cell_is_marked_where_it_is_shown_and_where_it_wins():
    here, there = "x86_64 (AMD EPYC, AVX512), 2 CPU cores", "x86_64, 2 CPU cores"
    rows = [
        _row("f", "llpf", 0, max_train_loss=0.05, certified=True, iters_to_certify=300, seconds_to_certify=9.0,
             _machine=there),
        _row("f", "autoneb", 0, max_train_loss=0.03, certified=True, iters_to_certify=200, seconds_to_certify=5.0,
             _machine=here),
        _row("f", "bezier", 0, max_train_loss=0.04, certified=True, iters_to_certify=400, _machine=there),
        _row("g", "llpf", 0, max_train_loss=0.05, certified=True, iters_to_certify=300, _machine=here),
        _row("g", "linear", 0, max_train_loss=2.0, _machine=here),
    ]  # fmt: skip
    text = table.render(rows)
    assert "| f | autoneb † | 0 | yes |" in text and "| f | bezier | 0 |" in text and "| g | linear | 0 |" in text
    assert "| f | 0 | autoneb † (0.03000) | autoneb † (200 SGD iterations, 5.0 s) |" in text
    assert f"† ran on {here}, the LLPF cell on {there}: the endpoints were trained on each machine" in text
    assert "not run" not in text.split("| f | 0 |")[1].split("\n")[0]  # the marked method counts as run
    assert "†" not in table.render(rows[3:])


def test_heaviest_stage_names_the_stage_and_the_cause():
    stages = [
        {"phase": "m2m", "stage": 0, "ticks": 10, "sgd_iters": 100, "repair_rounds": 12, "backtracks": 0},
        {"phase": "m2m", "stage": 1, "ticks": 5, "sgd_iters": 400, "repair_rounds": 21, "backtracks": 3},
        {"phase": "m2m", "stage": 2, "ticks": 0, "sgd_iters": 0, "repair_rounds": 0, "backtracks": 0},
    ]
    top = table.heaviest_stage(stages, endpoint_iters=100, names=["stem", "layer4", "head"])
    assert top["stage"] == 1 and top["share"] == pytest.approx(0.8)
    assert top["text"] == "m2m stage 1 (layer4): 400 of 500 SGD iterations in 5 ticks (4.0x one endpoint's iterations)"
    assert top["cause"] == ("21 repair rounds over 5 ticks, 3 backtracks, 80% of the SGD; long repairs (80.0 SGD "
                            "iterations per tick against the run's 33.3)")  # fmt: skip
    assert table.heaviest_stage([], 100) is None
    alone = table.heaviest_stage(stages[:1], endpoint_iters=None)
    assert alone["text"] == "m2m stage 0: 100 of 100 SGD iterations in 10 ticks"
    assert alone["cause"] == ("12 repair rounds over 10 ticks, 0 backtracks, 100% of the SGD; the run's only stage "
                              "(10.0 SGD iterations per tick)")  # fmt: skip
    old = [{k: v for k, v in s.items() if k != "repair_rounds"} for s in stages]  # records of an earlier version
    assert table.heaviest_stage(old, 100)["cause"].startswith("repair rounds not recorded, 3 backtracks, 80% of")
    row = {**_row("f", "llpf", 0, x_endpoint=5.0), "heaviest_stage": top}
    assert table._stage(row).startswith("**above 3x**: m2m stage 1 (layer4)")


def test_stage_names_are_what_each_stages_groups_share(tmp_path):
    groups = [["conv1"], ["layer4.0.conv1", "layer4.0.bn1", "layer4.1.conv2"], ["fc", "head.norm"], []]
    plan = {"stages": [{"groups": [{"name": n} for n in names]} for names in groups]}
    (tmp_path / "layer_groups.json").write_text(json.dumps(plan))
    assert table.stage_names(tmp_path) == ["conv1", "layer4", "fc … head.norm", ""]
    assert table.stage_names(tmp_path / "missing") is None
    # MobileNetV2's stages all lie under "features": a prefix that every stage shares names none of them.
    groups = [["conv_stem", "features.0.conv"], ["features.1.conv", "features.3.conv"], ["features.4.conv",
              "features.6.conv"]]  # fmt: skip
    plan = {"stages": [{"groups": [{"name": n} for n in names]} for names in groups]}
    (tmp_path / "layer_groups.json").write_text(json.dumps(plan))
    assert table.stage_names(tmp_path) == ["conv_stem … features.0.conv", "features.1.conv … features.3.conv",
                                           "features.4.conv … features.6.conv"]  # fmt: skip


def test_render_flags_every_costly_llpf_cell_with_its_stage_and_cause():
    # Cells as table.jsonl records them: one family above 3x one endpoint's iterations, one costlier than Bézier,
    # one within both (not flagged), one above 3x without stage records (recorded by an earlier version). The
    # resnet18 cell has no endpoint_iters: only the comparison with Bézier can flag it.
    stages = [
        {"phase": "m2m", "stage": 0, "ticks": 4, "sgd_iters": 40, "repair_rounds": 4, "backtracks": 0},
        {"phase": "m2m", "stage": 3, "ticks": 8, "sgd_iters": 600, "repair_rounds": 12, "backtracks": 4},
    ]
    costly = {"sgd_iters": 640, "endpoint_iters": 184, "x_endpoint": 640 / 184, "stages": stages,
              "stage_names": ["stem", "b1", "b2", "layer4"]}  # fmt: skip
    rows = [
        _row("mobilenetv2", "llpf", 0, certified=True, iters_to_certify=640, **costly),
        _row("mobilenetv2", "bezier", 0, certified=True, iters_to_certify=900),
        _row("resnet18", "llpf", 0, certified=True, iters_to_certify=300, sgd_iters=300, stages=stages[:1]),
        _row("resnet18", "bezier", 0, certified=True, iters_to_certify=250),
        _row("dla", "llpf", 0, certified=True, iters_to_certify=700, sgd_iters=700, endpoint_iters=184),
        _row("vgg11_bn", "llpf", 0, certified=True, iters_to_certify=200, sgd_iters=200, endpoint_iters=184),
        _row("vgg11_bn", "autoneb", 0, certified=False, iters_to_certify=100),  # not certified: no comparison
    ]
    text = table.render(rows)
    flagged = text.split("LLPF's cost (heaviest stage and cause):\n\n")[1].splitlines()
    assert flagged == [
        "- mobilenetv2 seed 0: 3.5x one endpoint's SGD iterations (640 against 184). Heaviest: m2m stage 3 (layer4): "
        "12 repair rounds over 8 ticks, 4 backtracks, 94% of the SGD; many ticks (8 of the run's 12)",
        "- resnet18 seed 0: more SGD to certify than bezier (300 against 250). Heaviest: m2m stage 0: 4 repair "
        "rounds over 4 ticks, 0 backtracks, 100% of the SGD; the run's only stage (10.0 SGD iterations per tick)",
        "- dla seed 0: 3.8x one endpoint's SGD iterations (700 against 184). Heaviest: no stage records in the cell",
    ]
    assert "**above 3x**: m2m stage 3 (layer4): 600 of 640 SGD iterations" in text
    assert table.costly(rows[5:]) == []
    assert table.render(rows[5:]).endswith("- none above 3x one endpoint's SGD iterations or a certified curve's cost")


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


def test_a_language_family_cell_runs_on_its_in_memory_batches(tmp_path, monkeypatch):
    from benchmarks import families

    def endpoints(fam):  # untrained models and a small token task instead of the families' training
        train, test = (families.token_task(fam.model, n=64, seed=s) for s in (10, 11))
        batches = families._batches(train, 32, seed=0)
        a, b = (families._hf_model(fam.model, s) for s in (0, 1))
        return a, b, batches, {"train": families._batches(train, 64), "test": families._batches(test, 64)}, 7

    monkeypatch.setattr(table.harness, "CACHE", tmp_path)
    monkeypatch.setattr(families, "_endpoints", endpoints)
    monkeypatch.setattr("hf_llpf.reporting.plots.plot_path", lambda *a, **k: [])  # only time: not what is tested
    values = table.settings("bert", {})
    assert values["endpoints"] == {"in_memory": "bert", "epochs": 30}  # not the key of the old refusal rows
    row = table.cell_job("bert", "linear", 0, values)
    assert row["status"] == "ok" and row["family"] == "bert" and row["endpoint_iters"] == 7
    assert row["points"] == 31 and row["sgd_iters"] == 0 and len(row["curve"]) == 31
    assert row["max_train_loss"] == max(loss for _, loss in row["curve"])
