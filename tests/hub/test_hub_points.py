"""Choosing points of a path: ``mid`` and ``best`` by their documented criteria, the reason given, and the
subset a push publishes (ends and stage boundaries always kept)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hub_fixtures import make_run_dir

from hf_llpf.errors import ConfigError, RunDirectoryError, UnknownNameError
from hf_llpf.hub import arc_positions, choose_point, export_point, select_point, select_points
from hf_llpf.run import RunPath as LLPFPath

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("points") / "timm", kind="timm")


def _with_rows(run, tmp_path, **columns) -> LLPFPath:
    """A copy of ``run`` whose points carry the given columns (one list per column)."""
    copy = shutil.copytree(run, tmp_path / "copy")
    data = json.loads((copy / "path_metrics.json").read_text())
    for key, values in columns.items():
        for row, v in zip(data["points"], values):
            row[key] = v
    (copy / "path_metrics.json").write_text(json.dumps(data))
    return LLPFPath(copy)


def test_positions_are_computed_from_the_weights_when_not_evaluated(run):
    # The fixture's points are evenly spaced on the straight line A -> B (ticks 0, 5, ..., 20 of 20).
    assert arc_positions(LLPFPath(run)) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=1e-6)


def test_mid_is_the_middle_by_arc_length_not_by_index(run, tmp_path):
    path = _with_rows(run, tmp_path, position=[0.0, 0.1, 0.2, 0.45, 1.0])  # index 2 is the middle index
    i, reason = choose_point(path, "mid")
    assert i == 3 and "position 0.450" in reason and "arc length" in reason


def test_best_is_the_lowest_eval_train_loss_away_from_the_ends(run, tmp_path):
    # Index 1 has the lowest loss of all interior points but sits at position 0.1: next to A, not chosen.
    # Of the points in [0.25, 0.75] (indices 2 and 3) index 3 has the lower loss; test figures play no part.
    path = _with_rows(
        run,
        tmp_path,
        position=[0.0, 0.1, 0.3, 0.7, 1.0],
        eval_train_loss=[0.01, 0.02, 0.09, 0.05, 0.01],
        test_acc=[1.0, 1.0, 0.99, 0.5, 1.0],
    )
    i, reason = choose_point(path, "best")
    assert i == 3
    assert reason == (
        "best: the lowest eval_train_loss (0.05) among the 2 points with position in [0.25, 0.75] by arc length "
        "(this one at 0.700)"
    )


def test_best_without_any_loss_is_refused_with_the_way_out(run, tmp_path):
    nan = float("nan")
    path = _with_rows(run, tmp_path, train_loss=[nan] * 5)
    with pytest.raises(RunDirectoryError, match=r"hf-llpf evaluate.*point='mid'"):
        choose_point(path, "best")


def test_point_forms_and_their_errors(run):
    path = LLPFPath(run)
    assert select_point(path, "tick:15") == 3 and select_point(path, "t5") == 1
    assert select_point(path, -1) == 4 and choose_point(path, "0") == (0, "index 0, as asked")
    with pytest.raises(UnknownNameError, match=r"tick:N"):
        select_point(path, "middle")
    with pytest.raises(UnknownNameError, match=r"point tick 7.*0, 5, 10, 15, 20"):
        select_point(path, "tick:7")


def test_export_best_says_why_in_its_result_and_card(run, tmp_path):
    info = export_point(run, point="best", out_dir=tmp_path / "best")
    # No evaluation: the run's own train_loss, 0.1 + 0.2 (1 - |2t - 1|): 0.2 at t = 0.25 and 0.75, 0.3 at 0.5.
    assert info["index"] in (1, 3) and info["reason"].startswith("best: the lowest train_loss (0.2)")
    assert f"- **chosen as**: {info['reason']}" in (tmp_path / "best" / "README.md").read_text()


def test_select_points_keeps_both_ends_and_stage_boundaries(run):
    path = LLPFPath(run)  # stage boundaries at indices 0 and 4 (the fixture's ends)
    assert select_points(path) == [0, 1, 2, 3, 4]
    assert select_points(path, every=3) == [0, 3, 4]
    assert select_points(path, every=10) == [0, 4]
    assert select_points(path, points="1:3") == [0, 1, 2, 4]
    assert select_points(path, points="mid,tick:15") == [0, 2, 3, 4]
    with pytest.raises(ConfigError, match="every=0"):
        select_points(path, every=0)
    with pytest.raises(ConfigError, match="not both"):
        select_points(path, every=2, points="mid")
    with pytest.raises(UnknownNameError):
        select_points(path, points="0:2,nowhere")
