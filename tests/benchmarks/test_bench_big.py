"""``python -m benchmarks big``: figures from a run's timing, the targets, the stages, a tiny run end to end."""

from __future__ import annotations

import json
import re

import pytest

from benchmarks import big


def test_tick_split_groups_the_profile_phases_per_tick():
    timing = {"train": 6.0, "move": 1.0, "correct": 0.5, "probe": 2.0, "write_points": 0.3, "write_checkpoint": 0.2,
              "snapshot": 0.1, "record": 0.1, "write_metrics": 0.0, "setup_data": 9.0, "probe_final": 4.0}  # fmt: skip
    split = big.tick_split(timing, ticks=2)
    assert split == {"sgd": 3.0, "moves_corrections": 0.75, "probes": 1.0, "point_writes": 0.15, "checkpoint": 0.1,
                     "rest": 0.1, "tick": 5.1, "overhead_share": round(1.0 / 5.1, 4)}  # fmt: skip


def _row(mode, peaks, imports, copies, share):
    return {"mode": mode, "peak_rss_mib": peaks, "rss_after_imports_mib": imports, "above_imports_copies": copies,
            "per_tick_s": {"moves_corrections": 0.05, "point_writes": 0.03, "checkpoint": 0.02, "tick": 1.0,
                           "overhead_share": share}}  # fmt: skip


def test_targets_say_met_or_not_with_the_figures():
    model_bytes = 100 * 2**20
    unsharded = _row("unsharded", [1000.0], [500.0], 5.0, 0.1)
    sharded = _row("sharded", [600.0, 601.0], [500.0, 500.0], 1.0, 0.11)
    (peak, met_peak, fig_peak), (copies, met_copies, fig_copies), (_, met_u, _), (_, met_s, fig_s) = big.targets(
        unsharded, sharded, model_bytes
    )
    assert (met_peak, met_copies, met_u, met_s) == (False, True, True, False)
    assert fig_peak == "601 / 1000 MiB = 0.60x"
    assert fig_copies == "500 MiB = 5.00x 100 MiB"
    assert fig_s == "0.10 s of 1.00 s a tick = 11.0%"


@pytest.mark.parametrize(("layers", "stages"), [(12, [4, 4, 4]), (3, [1, 1, 1]), (2, [1, 1])])
def test_three_stages_split_the_blocks_in_thirds(layers, stages):
    key, _, value = big.stages_override(layers).partition("=")
    got = json.loads(value)["stages"]
    assert key == "stages"
    assert [sum(p.startswith(r"^transformer\.h\.") for p in s) for s in got] == stages
    assert got[0][0] == r"^transformer\.w[tp]e" and got[-1][-1] == "ln_f"
    blocks = sorted(p for s in got for p in s if p.startswith(r"^transformer\.h\."))
    assert blocks == sorted(rf"^transformer\.h\.{i}\." for i in range(layers))


@pytest.mark.slow
def test_a_tiny_run_prints_both_rows_and_deletes_its_runs(tmp_path, capsys):
    # The whole entry on a 3-layer GPT-2 of width 32: endpoints trained and cached, one unsharded process and two
    # sharded ones under torchrun, the tables and the targets; the run directories are removed.
    argv = ["--out", str(tmp_path), "--layers", "3", "--width", "32", "--heads", "2", "--vocab", "100",
            "--steps", "3", "--no-record"]  # fmt: skip
    assert big.main(argv) == 0
    out = capsys.readouterr().out
    assert "| unsharded | 1 |" in out and "| sharded | 2 |" in out
    # Every point's final check is taken from the run's own passes: in the sharded run too, which the CLI leaves to
    # connect to read by rows (loaded whole, its final check evaluates a copy of θ_A and reuses nothing).
    (unsharded,) = [line for line in out.splitlines() if line.startswith("| unsharded | 1 |")]
    (sharded,) = [line for line in out.splitlines() if line.startswith("| sharded | 2 |")]
    points = re.search(r"\| (\d+) of \1 reused, [\d.]+ s \|$", sharded)
    assert points and f"| {points.group(1)} of {points.group(1)} reused, " in unsharded, (unsharded, sharded)
    assert sum(line.startswith(("met  ", "NOT met")) for line in out.splitlines()) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "endpoints"]
    metrics = sorted((tmp_path / "endpoints").glob("*/metrics.json"))
    assert [p.parent.name for p in metrics] == [f"gpt2-L3-E32-H2-V100-steps3-seed{s}" for s in (0, 1)]
    before = [p.stat().st_mtime_ns for p in metrics]
    big.endpoints(tmp_path, model_args={"layers": 3, "width": 32, "heads": 2, "vocab": 100}, steps=3)
    assert [p.stat().st_mtime_ns for p in metrics] == before  # cached: not trained again
