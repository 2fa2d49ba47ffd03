"""BatchNorm folded into its convolution in the eval view: only where the traced graph allows, same loss."""

import copy

import pytest
import torch
from conftest import image_batches, plain_eval_loss
from torch import nn

from hf_llpf.evaluation import layout
from hf_llpf.evaluation.folding import fold_batchnorm
from hf_llpf.evaluation.probe import ProbeSet
from hf_llpf.evaluation.scoring import score
from hf_llpf.zoo.small import SmallCNN

torch.set_num_threads(1)


def _trained_statistics(model, seed=1):
    """BatchNorm layers with statistics and affine weights far from their defaults (a fold of the defaults
    barely changes the weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 3 + 0.1)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def _folds(model, data):
    layout.eval_view(model, data[0])
    view = layout._VIEWS[model]
    return None if view is None else [(f.conv, f.bn) for f in view.folds]


def test_small_cnn_folds_every_pair_and_keeps_its_loss_and_the_scorers():
    torch.manual_seed(0)
    model, data = _trained_statistics(SmallCNN(in_chans=3)), image_batches()
    assert _folds(model, data) == [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
    probe = ProbeSet(data).loss(model)
    assert probe == score(model, data)["loss"]  # one view, one sum
    assert probe == pytest.approx(plain_eval_loss(model, data), rel=1e-6)
    assert model.conv1.bias is None and isinstance(model.bn1, nn.BatchNorm2d)  # the model itself is untouched


def test_the_folded_weights_follow_the_models_state():
    torch.manual_seed(0)
    model, data = _trained_statistics(SmallCNN(in_chans=1)), image_batches(channels=1)
    probe = ProbeSet(data)
    before = probe.loss(model)
    with torch.no_grad():
        model.conv2.weight.mul_(0.5)
        model.bn2.running_var.mul_(4.0)
        model.bn3.bias.add_(1.0)
    after = probe.loss(model)
    assert after != before and after == pytest.approx(plain_eval_loss(model, data), rel=1e-6)


class _PreNormResidual(nn.Module):
    """The convolution's output feeds both its BatchNorm and a residual sum: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(3)
        self.norm_free = nn.BatchNorm2d(3, track_running_stats=False)  # batch statistics even in eval mode
        self.conv2 = nn.Conv2d(3, 3, 1)
        self.head = nn.Linear(3, 10)

    def forward(self, x):
        h = self.conv(x)
        h = self.bn(h) + h
        h = self.norm_free(self.conv2(h))
        return self.head(h.mean(dim=(2, 3)))


def test_a_convolution_with_another_consumer_or_batch_statistics_is_not_folded():
    torch.manual_seed(0)
    model, data = _trained_statistics(_PreNormResidual()), image_batches()
    assert fold_batchnorm(copy.deepcopy(model))[1] == []  # the graph's rule, not the view's agreement check
    assert _folds(model, data) == []
    assert ProbeSet(data).loss(model) == pytest.approx(plain_eval_loss(model, data), rel=1e-6)


class _Branches(nn.Module):
    """Control flow on a tensor's value: fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        h = self.bn(self.conv(x))
        if h.sum() > 1e9:
            h = h * 0
        return self.head(h.mean(dim=(2, 3)))


def test_a_model_that_does_not_trace_runs_channels_last_unfolded():
    torch.manual_seed(0)
    model, data = _trained_statistics(_Branches()), image_batches()
    runner, folds = fold_batchnorm(model)
    assert runner is model and folds == []
    assert _folds(model, data) == []  # a view without folds, still channels-last
    runner, fast = layout.eval_view(model, data[0])
    assert fast and runner.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert ProbeSet(data).loss(model) == pytest.approx(plain_eval_loss(model, data), rel=1e-6)


def test_a_conv_with_bias_in_a_sequential_folds_exactly_to_rounding():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )  # fmt: skip
    model, data = _trained_statistics(model), image_batches()
    assert _folds(model, data) == [("0", "1")]
    assert ProbeSet(data).loss(model) == pytest.approx(plain_eval_loss(model, data), rel=1e-6)


def test_a_convolution_sharing_its_weight_is_not_folded():
    torch.manual_seed(0)
    first, second = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
    second.weight = first.weight  # one weight, two convolutions: a fold would change both
    model = nn.Sequential(first, nn.BatchNorm2d(3), second, nn.BatchNorm2d(3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 10))  # fmt: skip
    model, data = _trained_statistics(model), image_batches()
    assert fold_batchnorm(copy.deepcopy(model))[1] == []
    assert ProbeSet(data).loss(model) == pytest.approx(plain_eval_loss(model, data), rel=1e-6)
