"""Eval-mode passes of conv models run channels-last on a view: same numbers in probe and scorer, model untouched."""

import pytest
import torch
from conftest import image_batches, plain_eval_loss
from torch import nn

from hf_llpf.evaluation.layout import eval_view
from hf_llpf.evaluation.probe import ProbeSet
from hf_llpf.evaluation.scoring import score
from hf_llpf.zoo.small import SmallCNN

torch.set_num_threads(1)


def test_probe_and_scorer_agree_exactly_and_with_the_plain_pass_to_rounding():
    torch.manual_seed(0)
    model, data = SmallCNN(in_chans=3).eval(), image_batches()
    view, fast = eval_view(model, data[0])
    assert fast and view is not model
    assert view.conv2.weight.is_contiguous(memory_format=torch.channels_last)
    assert model.conv2.weight.is_contiguous() and not model.conv2.weight.is_contiguous(
        memory_format=torch.channels_last
    )  # the model itself is never converted
    probe, scored = ProbeSet(data).loss(model), score(model, data)
    assert probe == scored["loss"]  # the same layout, the same sum in the same order
    assert probe == pytest.approx(plain_eval_loss(model, data), rel=1e-6)


def test_the_view_follows_the_models_state_and_mode():
    torch.manual_seed(0)
    model, data = SmallCNN(in_chans=1).eval(), image_batches(channels=1)
    probe = ProbeSet(data)
    before = probe.loss(model)
    with torch.no_grad():
        model.conv1.weight.mul_(0.5)
        model.bn2.running_var.mul_(4.0)
    after = probe.loss(model)
    assert after != before and after == pytest.approx(plain_eval_loss(model, data), rel=1e-6)
    model.train()
    assert eval_view(model, data[0]) == (model, False)  # train mode (BatchNorm statistics) runs as it is
    assert model.training  # and the probe restores the mode it found
    probe.loss(model)
    assert model.training


class _Flattens(nn.Module):
    """A conv model whose ``.view()`` cannot read a channels-last activation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.head(h.view(h.shape[0], -1))


def test_a_model_that_cannot_run_channels_last_runs_as_it_is():
    torch.manual_seed(0)
    model, data = _Flattens().eval(), image_batches()
    assert eval_view(model, data[0]) == (model, False)
    assert ProbeSet(data).loss(model) == score(model, data)["loss"] == pytest.approx(plain_eval_loss(model, data))


def test_models_without_convolutions_or_images_run_as_they_are():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10)).eval()
    data = image_batches()
    assert eval_view(linear, data[0]) == (linear, False)
    conv = SmallCNN(in_chans=3).eval()
    tokens = (torch.randint(0, 5, (4, 8)), torch.zeros(4, dtype=torch.long))
    assert eval_view(conv, tokens) == (conv, False)  # no 4-D floating input


def test_stage_records_say_where_the_work_went():
    from hf_llpf.run.records import stage_records

    ticks = [
        {"tick": 1, "stage": 0, "iters": 5, "repair_rounds": 1, "probe_loss": 0.01, "segment_loss": 0.02},
        {"tick": 2, "stage": 0, "iters": 7, "repair_rounds": 4, "probe_loss": 0.03, "backtracks": 2},
        {"tick": 3, "stage": 1, "iters": 0, "probe_loss": 0.02, "segment_loss": None, "backtracks": 2},
        {"tick": 4, "stage": 1, "iters": 9, "probe_loss": float("nan"), "backtracks": 3},
        {"tick": 5, "stage": -1, "iters": 4, "phase": "m2o", "backtracks": 1},  # a phase counting from zero
    ]
    m2m0, m2m1, m2o = stage_records(ticks)
    assert m2m0 == {"phase": "m2m", "stage": 0, "first_tick": 1, "last_tick": 2, "ticks": 2, "sgd_iters": 12,
                    "repair_rounds": 5, "backtracks": 2, "max_probe_loss": 0.03, "max_segment_loss": 0.02}  # fmt: skip
    assert (m2m1["ticks"], m2m1["sgd_iters"], m2m1["repair_rounds"], m2m1["backtracks"]) == (2, 9, 0, 1)
    assert m2m1["max_probe_loss"] != m2m1["max_probe_loss"]  # a NaN probe is the worst, never hidden
    assert (m2o["phase"], m2o["backtracks"], m2o["max_probe_loss"]) == ("m2o", 1, None)
