"""AutoNEB (Draxler et al. 2018): exact ends, the first band on the straight line, the nudged force, pivots
inserted where a segment rises, and a band that bends around a bump the straight line crosses."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from hf_llpf.baselines.autoneb import AutoNEBSettings, ElasticBand, check
from hf_llpf.errors import ConfigError
from hf_llpf.evaluation.recalibration import recalibrate_bn

torch.set_num_threads(1)
BUMP = torch.tensor([0.5, 0.05])  # a bump just off the straight line from (0, 0) to (1, 0)


def bump(w: torch.Tensor) -> torch.Tensor:
    """A Gaussian bump of height 1 and width 0.1 at BUMP."""
    return torch.exp(-((w - BUMP) ** 2).sum() / 0.01)


def bump_loss(model: nn.Module, batch) -> torch.Tensor:
    """The loss of a :class:`Weight` model: the bump at its weight (the input is ones, so the output is the weight)."""
    x, _ = batch
    return bump(model(x))


class Weight(nn.Module):
    """A model whose output is its weight vector: the loss landscape is a function of two numbers."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return self.w * x.reshape(-1)[:2]


def _state(w0: float, w1: float) -> dict:
    return {"w": torch.tensor([w0, w1])}


def _batches():
    return itertools.repeat((torch.ones(2), torch.zeros(1)))


def _max_along(band: ElasticBand, n: int = 201) -> float:
    with torch.no_grad():
        return max(float(bump(band.params_at(i / (n - 1)))) for i in range(n))


def test_the_ends_are_exact_and_the_first_band_is_the_straight_line():
    band = ElasticBand(Weight(), _state(0.0, 0.0), _state(1.0, 0.0))
    band.interior(3)
    assert torch.equal(band.state_at(0.0)["w"], torch.tensor([0.0, 0.0]))
    assert torch.equal(band.state_at(1.0)["w"], torch.tensor([1.0, 0.0]))
    for t in (0.1, 0.25, 0.6, 0.99):
        assert band.state_at(t)["w"] == pytest.approx(torch.tensor([t, 0.0]), abs=1e-6)
    assert band.positions() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


def test_the_force_keeps_no_gradient_along_the_band_and_the_spring_evens_the_spacing():
    band = ElasticBand(Weight(), _state(0.0, 0.0), _state(1.0, 0.0))
    band.pivots = [torch.tensor([0.0, 0.0]), torch.tensor([0.2, 0.0]), torch.tensor([1.0, 0.0])]
    along = band._force(1, torch.tensor([3.0, 0.0]), spring=0.0)
    assert along == pytest.approx(torch.tensor([0.0, 0.0]))  # no sliding down into an end
    across = band._force(1, torch.tensor([3.0, 2.0]), spring=0.0)
    assert across == pytest.approx(torch.tensor([0.0, -2.0]))
    spring = band._force(1, torch.tensor([0.0, 0.0]), spring=1.0)
    assert spring == pytest.approx(torch.tensor([0.6, 0.0]))  # (0.8 - 0.2) along the tangent, toward the middle


def test_a_pivot_is_inserted_where_a_segment_rises_and_nowhere_else():
    band = ElasticBand(Weight(), _state(0.0, 0.0), _state(1.0, 0.0))
    band.interior(2)  # pivots at 1/3 and 2/3: the bump lies inside the middle segment
    settings = AutoNEBSettings(segment_samples=3, insert_rise=0.01)
    assert band.insert([next(_batches())], settings, bump_loss) == 1
    assert len(band.pivots) == 5 and band.pivots[2] == pytest.approx(torch.tensor([0.5, 0.0]))
    capped = ElasticBand(Weight(), _state(0.0, 0.0), _state(1.0, 0.0))
    capped.interior(2)
    assert capped.insert([next(_batches())], AutoNEBSettings(pivots=2, max_pivots=2), bump_loss) == 0


def _bn_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_a_pivot_is_measured_with_its_own_batchnorm_statistics():
    """The working copy's running statistics mix every pivot's training batches; the rise that decides an
    insertion is measured with each position's statistics recomputed on the measuring batches."""
    a, b = _bn_net(0), _bn_net(1)
    band = ElasticBand(a, a.state_dict(), b.state_dict())
    band.interior(1)
    band.model.eval()  # as insert() measures
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)) for _ in range(2)]
    loss = lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1])  # noqa: E731
    clean = band._eval_loss(band.pivots[1], batches, loss)
    bn = band.model[1]
    bn.running_mean.fill_(50.0)  # statistics that belong to no position of the band
    bn.running_var.fill_(1e-3)
    assert band._eval_loss(band.pivots[1], batches, loss) == pytest.approx(clean, rel=1e-6)
    # The same figure by hand: the pivot's weights in a model of its own, its statistics from those batches.
    own = _bn_net(0)
    own.load_state_dict({**band.state_at(0.0), **band._params(band.pivots[1])})
    recalibrate_bn(own, batches)
    with torch.no_grad():
        by_hand = float(sum(loss(own.eval(), x) for x in batches)) / 2
    assert by_hand == pytest.approx(clean, rel=1e-5)


def test_the_band_bends_around_a_bump_that_the_straight_line_crosses():
    band = ElasticBand(Weight(), _state(0.0, 0.0), _state(1.0, 0.0))
    settings = AutoNEBSettings(iters=600, cycles=3, pivots=3, lr=0.002, momentum=0.9, spring=1.0)
    straight = math.exp(-(0.05**2) / 0.01)  # the straight line passes 0.05 from the top
    band.train(_batches(), [next(_batches())], settings, loss_fn=bump_loss)
    assert band.iterations <= 600
    assert torch.equal(band.pivots[0], torch.tensor([0.0, 0.0]))
    assert torch.equal(band.pivots[-1], torch.tensor([1.0, 0.0]))
    assert _max_along(band) < 0.25 * straight


def test_bad_settings_are_listed_at_once():
    with pytest.raises(ConfigError) as err:
        check(AutoNEBSettings(iters=-1, cycles=0, lr=0.0, spring=-1.0, max_pivots=1, pivots=3))
    assert [p.split("=")[0] for p in err.value.problems] == [
        "autoneb iters", "autoneb cycles", "autoneb max_pivots", "autoneb lr", "autoneb spring",
    ]  # fmt: skip
