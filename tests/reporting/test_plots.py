"""The plots' scale choices: a log loss axis when the baseline dwarfs the path, a variance colour scale not
set by constant tensors, and a visible band for a one-point phase (the "end" of every path)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from hf_llpf.reporting.plots import (
    DWARF_RATIO,
    VARIANCE_FLOOR,
    _curve_figure,
    _shade,
    _visible_span,
    _wants_log,
    variance_limits,
)


def _data(path_losses: list[float], linear_losses: list[float]) -> dict:
    n = len(path_losses)
    phases = ["start", *["m2m"] * (n - 2), "end"]
    points = [
        {"position": i / (n - 1), "eval_train_loss": v, "test_loss": v * 1.1, "eval_train_acc": 1.0, "test_acc": 1.0}
        | {"stage": i * 2 // n, "phase": phases[i]}
        for i, v in enumerate(path_losses)
    ]
    m = len(linear_losses)
    linear = [
        {"t": i / (m - 1), "eval_train_loss": v, "test_loss": v, "eval_train_acc": 0.5, "test_acc": 0.5}
        for i, v in enumerate(linear_losses)
    ]
    return {"points": points, "linear": linear}


def _yscale(data: dict) -> str:
    fig = _curve_figure(Path("run"), data, metric="loss")
    try:
        return fig.axes[0].get_yscale()
    finally:
        plt.close(fig)


def test_a_baseline_that_dwarfs_the_path_turns_the_loss_axis_logarithmic():
    # The case: endpoints at 0.03, the path under 0.05, the linear baseline peaking at 2.35. The values
    # span 2.35 / 0.03 = 78 < 100, so only the ratio of peaks (47 > 10) makes the axis logarithmic.
    path = [0.03, 0.04, 0.048, 0.045, 0.03]
    linear = [0.03, 1.2, 2.35, 1.1, 0.03]
    assert max(linear) / min(path) < 100 and max(linear) / max(path) > DWARF_RATIO
    assert _wants_log(path, linear) and not _wants_log(path + linear)
    assert _yscale(_data(path, linear)) == "log"


def test_a_baseline_of_the_path_s_size_keeps_a_linear_axis():
    path = [0.03, 0.04, 0.05, 0.04, 0.03]
    linear = [0.03, 0.2, 0.3, 0.2, 0.03]  # peak ratio 6, span 10
    assert not _wants_log(path, linear)
    assert _yscale(_data(path, linear)) == "linear"
    # A zero loss cannot go on a log axis: linear, whatever the ratio.
    assert not _wants_log([0.0, 0.01, 0.0], [0.0, 2.0, 0.0])


def test_constant_tensors_do_not_set_the_variance_colour_scale():
    table = torch.tensor([[-1.0, -1.2, -1.5], [-2.0, -2.5, -3.0], [-15.0, -15.0, -30.0]])  # tensors x points
    lo, hi, clipped = variance_limits(table)
    assert (lo, hi, clipped) == (-3.0, -1.0, True)  # the constant row (1e-15, 0 clamped to 1e-30) is grey
    assert VARIANCE_FLOOR > -15.0
    lo, hi, clipped = variance_limits(table[:2])
    assert (lo, hi, clipped) == (-3.0, -1.0, False)


def test_an_outlier_cell_far_below_the_rest_is_clipped_by_the_percentile():
    table = torch.full((10, 20), -2.0)
    table[:, ::2] = -1.0
    table[0, 0] = -9.0  # one cell in 200, seven decades under the rest (and above the floor)
    lo, hi, clipped = variance_limits(table)
    assert lo == pytest.approx(-2.0) and hi == -1.0 and clipped
    assert variance_limits(torch.full((2, 3), -4.0)) == (-4.5, -3.5, False)


def test_the_one_point_end_phase_gets_a_visible_band():
    assert _visible_span(0.9987, 1.0, lo=0.0, hi=1.0) == pytest.approx((0.988, 1.0))
    assert _visible_span(0.0, 0.001, lo=0.0, hi=1.0) == pytest.approx((0.0, 0.012))
    assert _visible_span(0.2, 0.5, lo=0.0, hi=1.0) == (0.2, 0.5)
    data = _data([0.03] * 30, [0.03, 2.0, 0.03])
    points = data["points"]
    pos = [p["position"] for p in points]
    pos[-2] = 0.9987  # the demo's last segment: 0.13% of the axis
    fig, ax = plt.subplots()
    handles = _shade(ax, points, pos)
    end = next(h for h in handles if h.get_label() == "phase: end").get_facecolor()
    bands = [p for p in ax.patches if p.get_facecolor() == end]
    plt.close(fig)
    assert len(bands) == 1
    left, width = bands[0].get_x(), bands[0].get_width()  # data coordinates on x (axvspan)
    assert left + width == pytest.approx(1.0) and width == pytest.approx(0.012)


def test_the_loss_plot_draws_the_certified_ceiling_and_the_endpoints_level():
    data = _data([0.002, 0.03, 0.041, 0.003], [0.002, 2.0, 0.003])
    data["summary"] = {"run": {"certification": {"ceiling": 0.04218, "certified": True}}}
    fig = _curve_figure(Path("run"), data, metric="loss")
    try:
        levels = {line.get_label(): line.get_ydata()[0] for line in fig.axes[0].lines if len(line.get_ydata()) == 2}
    finally:
        plt.close(fig)
    assert levels == {
        "endpoints' train loss (higher end) 0.003": pytest.approx(0.003),
        "loss ceiling 0.04218 (certified)": pytest.approx(0.04218),
    }
    data["summary"]["run"]["certification"]["certified"] = False
    fig = _curve_figure(Path("run"), data, metric="loss")
    labels = [line.get_label() for line in fig.axes[0].lines]
    plt.close(fig)
    assert "loss ceiling 0.04218 (NOT certified)" in labels


def test_the_stages_plot_draws_one_bar_per_stage_and_the_ceiling(tmp_path):
    from hf_llpf.reporting.plots import _stages_plot

    stages = [
        {"phase": "m2m", "stage": i, "ticks": 3, "sgd_iters": 10 * i, "backtracks": i % 2, "max_probe_loss": 0.01 * i,
         "max_segment_loss": None if i == 0 else 0.005 * i, "first_tick": 3 * i, "last_tick": 3 * i + 2}
        for i in range(5)
    ]  # fmt: skip
    run = {"stages": stages, "certification": {"ceiling": 0.042}}
    captured = {}
    original = plt.close

    def keep(fig):
        captured["fig"] = fig

    plt.close = keep
    try:
        out = _stages_plot(Path(tmp_path / "run"), run, out=tmp_path / "stages.png")
    finally:
        plt.close = original
    left, right = captured["fig"].axes
    assert out.stat().st_size > 5_000
    assert [round(b.get_height(), 6) for b in left.patches] == [0.0, 0.01, 0.02, 0.03, 0.04]
    assert [b.get_height() for b in right.patches] == [0, 10, 20, 30, 40]
    assert any(line.get_label() == "loss ceiling 0.042" for line in left.lines)
    plt.close(captured["fig"])
