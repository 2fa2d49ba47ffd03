"""The sequential decisions' mathematics: time-uniform confidence bounds without replacement, and the decider."""

import math

import torch

from hf_llpf.evaluation.decisions import Decider
from hf_llpf.evaluation.sequential import betting_upper_bound, lower_bound, shows_below, spent, upper_bound

torch.set_num_threads(1)


def _population(n, seed):
    """Skewed values in [0, 1]: most near zero, a few large (as per-example losses of a good classifier, clipped)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.distributions.Beta(0.3, 6.0).sample((n,)).double() * 0.2
    heavy = torch.rand(n, generator=g, dtype=torch.float64) < 0.02
    return torch.where(heavy, torch.rand(n, generator=g, dtype=torch.float64), base)


def test_the_bounds_cover_the_mean_at_every_prefix_at_least_as_often_as_promised():
    torch.manual_seed(0)
    alpha, runs, n = 0.1, 300, 1000
    missed_upper = missed_lower = missed_bet = 0
    for r in range(runs):
        pop = _population(n, r)
        mu = float(pop.mean())
        draws = pop[torch.randperm(n)][:700]
        # Read after every batch of a decision (32, 64, 128, ...): the bound is the smallest over all prefixes.
        missed_upper += mu > upper_bound(draws, alpha=alpha, population=n)
        missed_lower += mu < lower_bound(draws, alpha=alpha, population=n)
        missed_bet += mu > betting_upper_bound(draws, alpha=alpha, population=n)
    # Ville's inequality: each at most alpha; the empirical-Bernstein bound is conservative (measured well below).
    assert missed_upper / runs <= alpha and missed_lower / runs <= alpha and missed_bet / runs <= alpha


def test_without_replacement_is_tighter_and_a_far_point_needs_few_examples():
    pop = _population(1437, 0)
    draws = pop[torch.randperm(1437, generator=torch.Generator().manual_seed(1))]
    mu = float(pop.mean())
    assert upper_bound(draws[:1024], alpha=0.01, population=1437) < upper_bound(draws[:1024], alpha=0.01)
    # A bar ten times the mean is passed on the first 128 draws; one just above it is not, on 256.
    assert upper_bound(draws[:128], alpha=0.01, population=1437) <= 10 * mu
    assert upper_bound(draws[:256], alpha=0.01, population=1437) > 1.05 * mu


def test_the_error_budget_sums_to_delta():
    assert math.isclose(sum(spent(0.05, k) for k in range(1, 200001)), 0.05, rel_tol=1e-4)
    assert spent(0.05, 1) == 0.025


class _Fixed(torch.nn.Module):
    """A 'model' whose per-example loss is a fixed number per example (its input holds the example's index)."""

    def __init__(self, losses):
        super().__init__()
        self.losses = losses
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        # Logits whose cross-entropy against label 0 is the example's loss: log-softmax[0] = -loss.
        p0 = torch.exp(-self.losses[x.long()])
        return torch.log(torch.stack([p0, 1 - p0], 1).clamp_min(1e-30))


def _decider(losses, exact_max=10_000, seed=0):
    n = len(losses)
    batches = [(torch.arange(i, min(i + 64, n)).float(), torch.zeros(min(64, n - i), dtype=torch.long))
               for i in range(0, n, 64)]  # fmt: skip
    return Decider(batches, n, loss_fn=None, delta=0.05, exact_max=exact_max, seed=seed), _Fixed(losses)


def test_a_decision_accepts_exactly_when_its_value_is_under_the_bar_and_is_exact_on_all_examples():
    losses = torch.rand(600, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.02
    losses[:6] = 3.0  # 1% of the examples far above: the mean is about 0.04
    mean = float(losses.mean())
    decider, model = _decider(losses)
    far = decider.decide(model, 20 * mean, clip=40 * mean)
    assert far.accepted and far.value <= 20 * mean and far.examples <= 128
    near = decider.decide(model, mean * 1.0001, clip=10.0)
    assert near.accepted and near.exact and near.examples == 600 and math.isclose(near.value, mean, rel_tol=1e-6)
    above = decider.decide(model, mean * 0.9999, clip=10.0)
    assert not above.accepted and above.value > mean * 0.9999
    assert decider.log == [far.examples, near.examples, above.examples] and decider.k == 3


def test_a_decision_over_many_examples_stops_undecided_at_its_cap_and_resumes_the_same_draws():
    losses = torch.full((3000,), 0.05, dtype=torch.float64)
    decider, model = _decider(losses, exact_max=500)
    capped = decider.decide(model, 0.0501, clip=1.0)  # under by a hair: no bound on 500 of 3000 shows it
    assert not capped.accepted and capped.examples == 500 and capped.value > 0.0501
    state = decider.state_dict()
    again, _ = _decider(losses, exact_max=500, seed=7)
    again.load_state_dict(state)
    assert torch.equal(torch.randperm(3000, generator=again.generator),
                       torch.randperm(3000, generator=decider.generator))  # fmt: skip
    assert again.k == decider.k == 1


def test_the_betting_test_says_below_for_a_mean_at_the_bar_at_most_as_often_as_promised():
    # Populations whose mean is at the bar or just over it: two-point ones (the hardest for a bounded test: a few
    # values at the clip carry the mean) and skewed ones. A "below" on any prefix is a false certificate.
    alpha, runs, n = 0.1, 300, 800
    wrong = 0
    for r in range(runs):
        if r % 2:
            pop = torch.zeros(n, dtype=torch.float64)
            pop[: 8 + r % 5] = 1.0
        else:
            pop = _population(n, r)
        bar = float(pop.mean()) * (1 - 1e-9)  # the hypothesis "mean >= bar" holds
        draws = pop[torch.randperm(n, generator=torch.Generator().manual_seed(r))]
        wrong += shows_below(draws, bar=bar, alpha=alpha, population=n)
    assert wrong / runs <= alpha


def test_the_betting_test_needs_fewer_draws_than_the_bound_for_a_point_far_under_the_bar():
    # Losses that vary little at a quarter of the bar, clipped at ten bars (the auto clip): the decision's case.
    g = torch.Generator().manual_seed(3)
    pop = (0.025 + 0.002 * torch.rand(2400, generator=g, dtype=torch.float64)).clamp(max=1.0)
    draws = pop[torch.randperm(2400, generator=g)]
    alpha = spent(0.05, 45) / 2

    def first(ok):
        return next(t for t in range(8, 2401, 8) if ok(draws[:t]))

    bet = first(lambda x: shows_below(x, bar=0.1, alpha=alpha, population=2400))
    bound = first(lambda x: upper_bound(x, alpha=alpha, population=2400) <= 0.1)
    assert bet <= 0.85 * bound and bet <= 176
    assert not shows_below(draws[: bet - 8], bar=0.1, alpha=alpha, population=2400)
    assert shows_below(draws[:1], bar=1.0, alpha=alpha) and not shows_below(draws[:0], bar=0.1, alpha=alpha)


def test_the_betting_bound_on_a_share_of_rare_events_none_drawn_is_tighter_than_the_empirical_bernstein_one():
    alpha = spent(0.05, 45) / 2
    for n in (64, 160, 500):
        none = torch.zeros(n, dtype=torch.float64)
        bet, bound = (
            betting_upper_bound(none, alpha=alpha, population=2400),
            upper_bound(none, alpha=alpha, population=2400),
        )
        # No test can do better than the binomial floor: no hit in n draws is likely up to a share of ln(1/α)/n.
        assert math.log(1 / alpha) / n * 0.9 <= bet <= 0.9 * bound
