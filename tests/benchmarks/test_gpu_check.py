"""``python -m benchmarks gpu check``: the parts' lines, the budget's skips and failures, and the smoke run itself."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import harness
from benchmarks.gpu import check

LINE = re.compile(
    r"^\[(\d)/4\] (\S+): ([\d.]+) s, (\d+) ticks, ([\d.]+) ticks/s, (\d+) SGD iterations, (peak GPU memory|peak RSS "
    r"\(CPU, no GPU\)) ([\d,]+) MiB, outside SGD ([\d.]+)% of a tick \(moves\+corr\.\+writes\+ckpt ([\d.]+)%\); "
    r"endpoints ([\d.]+) s$",
    re.M,
)  # a finished part's printed line


def test_figures_and_the_printed_line():
    timing = {"train": 3.0, "move": 0.5, "correct": 0.5, "probe": 1.0, "write_points": 0.5, "write_checkpoint": 0.0,
              "snapshot": 0.5, "setup_data": 9.0}  # fmt: skip
    got = check.figures({"ticks": 4, "sgd_iters": 12, "timing": timing}, wall_s=8.0)
    assert (got["ticks"], got["sgd_iters"], got["ticks_per_s"], got["wall_s"]) == (4, 12, 0.5, 8.0)
    assert got["outside_sgd"] == pytest.approx(1 - 0.75 / 1.5)  # SGD 3 s of the ticks' 6 s (the set-up is outside)
    assert got["overhead_share"] == pytest.approx(0.375 / 1.5, abs=1e-4)  # moves, corrections, point writes
    row = {"part": "demo", **got, "peak_label": "peak GPU memory", "peak_mib": 1536.4, "endpoints_s": 2.04}
    text = check.line(1, 4, row)
    assert text == ("[1/4] demo: 8.0 s, 4 ticks, 0.500 ticks/s, 12 SGD iterations, peak GPU memory 1,536 MiB, "
                    "outside SGD 50.0% of a tick (moves+corr.+writes+ckpt 25.0%); endpoints 2.0 s")  # fmt: skip
    assert LINE.fullmatch(text)


def test_a_part_over_the_budget_is_skipped_and_a_failing_one_printed(capsys):
    ran = []

    def fine(ctx):
        ran.append(ctx["left_s"])
        figures = {"ticks": 1, "sgd_iters": 0, "wall_s": 1.0, "ticks_per_s": 1.0, "outside_sgd": 1.0}
        return {**figures, "overhead_share": 0.5, "peak_label": "peak GPU memory", "peak_mib": 10.0, "endpoints_s": 0}

    def broken(ctx):
        raise RuntimeError("first line\nthe reason")

    parts = [check.Part("a", "", 5, fine), check.Part("b", "", 500, fine), check.Part("c", "", 5, broken),
             check.Part("d", "", 5, fine)]  # fmt: skip
    recorded = []
    rows = check.run_parts(parts, {"smoke": True}, budget_s=60, record=lambda r: recorded.append(r) or r)
    lines = capsys.readouterr().out.splitlines()
    assert len(ran) == 2 and all(50 < left <= 60 for left in ran)  # b never ran
    assert lines[1] == "[2/4] b: skipped (estimated 500 s, 60 s left of the budget)"
    assert lines[2] == "[3/4] c: FAILED (RuntimeError: the reason)"
    assert lines[0].startswith("[1/4] a: 1.0 s, 1 ticks") and lines[3].startswith("[4/4] d: 1.0 s")
    assert recorded == rows and [r["part"] for r in rows] == ["a", "b", "c", "d"]
    assert [bool(r.get("skipped")) for r in rows] == [False, True, False, False] and rows[0]["smoke"] is True
    # The GPT-2 parts add the pair's making to their estimate where no earlier part made it (GPU estimates).
    gpu_parts = check.parts(smoke=False)
    assert [p.name for p in gpu_parts] == ["demo", "resnet18", "gpt2-124m", "gpt2-124m-fsdp1"]
    assert [p.estimate({}) for p in gpu_parts] == [60, 90, 60, 75]
    assert [p.estimate({"gpt2": {}}) for p in gpu_parts] == [60, 90, 30, 45]


def test_a_missing_dependency_is_named_before_any_import(monkeypatch, capsys):
    from benchmarks import gpu

    assert gpu.missing_packages() == []  # this environment has hf_llpf's dependencies
    monkeypatch.setattr(gpu, "NEEDED", ("torch", "no_such_package_xyz"))
    monkeypatch.setattr(gpu, "parser", lambda: pytest.fail("the parser imports the runs: not reached"))
    assert gpu.main(["check", "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("benchmarks gpu: this Python lacks no_such_package_xyz (hf_llpf's dependencies)"), err
    assert 'docs/benchmarks.md, "The GPU check"' in err


@pytest.mark.slow
def test_the_smoke_check_prints_each_part_with_its_figures(tmp_path, monkeypatch, capsys):
    # The whole check at smoke sizes on the CPU (about a minute): the demo pair, resnet18, the GPT-2 pair unsharded
    # and under torchrun --nproc_per_node 1 with sharding=fsdp; every endpoint and run under tmp_path.
    monkeypatch.setattr(check, "OUT", tmp_path / "check")
    monkeypatch.setattr(harness, "CACHE", tmp_path / "cache")
    from benchmarks import gpu

    assert gpu.main(["check", "--smoke", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu check: device cpu (CPU), budget 300 s, smoke sizes\n")
    found = LINE.findall(out)
    assert [(int(i), name) for i, name, *_ in found] == list(
        enumerate(["demo", "resnet18", "gpt2-124m", "gpt2-124m-fsdp1"], 1)
    )
    parts = {}
    for _, name, wall, ticks, per_s, sgd, label, mib, outside, overhead, _ in found:
        wall, ticks, per_s = float(wall), int(ticks), float(per_s)
        assert ticks > 0 and ticks / (wall + 0.1) <= per_s + 1e-3 and per_s - 1e-3 <= ticks / max(wall - 0.1, 1e-9)
        assert label == "peak RSS (CPU, no GPU)" and 100 < float(mib.replace(",", "")) < 20_000
        assert 0 <= float(overhead) <= float(outside) <= 100
        parts[name] = (ticks, int(sgd), float(outside))
    assert parts["demo"][0] <= 6 and parts["resnet18"][0] <= 5  # max_ticks 5 and 4, and the final snap onto θ_B
    # The sharded code path over one process walks the unsharded run's ticks with its SGD iterations (no ceiling:
    # one a tick), so less than the whole tick is outside SGD.
    assert parts["gpt2-124m"][:2] == parts["gpt2-124m-fsdp1"][:2] and parts["gpt2-124m"][1] > 0
    assert parts["gpt2-124m"][2] < 100 and parts["gpt2-124m-fsdp1"][2] < 100
    rows = [r["row"] for r in harness.read_results(tmp_path / "results" / "gpu.jsonl")]
    assert [(r["run"], r["part"], r["smoke"]) for r in rows] == [
        ("check", name, True) for name in ("demo", "resnet18", "gpt2-124m", "gpt2-124m-fsdp1")
    ]
    assert rows[3]["processes"] == 1 and rows[3]["sharding"].startswith("fsdp")
    assert sorted(p.name for p in (tmp_path / "check").iterdir()) == ["demo", "gpt2", "resnet18"]  # GPT-2 runs removed
    demo = json.loads((tmp_path / "check" / "demo" / "path_metrics.json").read_text())
    assert demo["summary"]["run"]["method"] == "m2m"
