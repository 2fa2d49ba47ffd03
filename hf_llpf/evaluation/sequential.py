"""Time-uniform confidence bounds on a finite population's mean, from examples drawn without replacement
(docs/algorithm.md §10.5).

The bounds are the predictable-plug-in empirical-Bernstein confidence sequence of Waudby-Smith and Ramdas
("Estimating means of bounded random variables by betting", JRSS-B 2023, Theorem 2) in its sampling-without-
replacement form ("Confidence sequences for sampling without replacement", NeurIPS 2020): for values in [0, 1]
drawn in a uniformly random order from ``N`` fixed values with mean μ, the process

    M_t = prod_{i<=t} exp(λ_i (μ_i - x_i) - v_i ψ(λ_i)),   μ_i = (N μ - S_{i-1}) / (N - i + 1),

(``S_{i-1}`` the sum of the first ``i - 1`` draws, ``μ_i`` the mean of what is left, so ``E[x_i | past] = μ_i``;
``v_i = 4 (x_i - m_{i-1})²`` with the predictable mean ``m``; ``ψ(λ) = (-ln(1 - λ) - λ) / 4``; ``λ_i`` predictable
in [0, 1)) is a non-negative supermartingale, so by Ville's inequality ``M_t < 1/α`` at every ``t`` at once with
probability at least ``1 - α``. Solved for μ that reads

    μ < (Σ λ_i (x_i + S_{i-1}/(N-i+1)) + ln(1/α) + Σ v_i ψ(λ_i)) / Σ λ_i N/(N-i+1)

for every ``t`` simultaneously: the bound may be read after any batch, and a decision may stop whenever it likes.
The lower bound is the mirror image.

A decision needs less than a bound: whether the mean is under one bar. :func:`shows_below` tests exactly that with a
bettor's wealth (:func:`log_wealth`), which reaches its threshold on fewer draws than the bound, most of all when
the draws vary little. Pure tensor arithmetic in float64 on the CPU.
"""

from __future__ import annotations

import math

import torch

LAMBDA_CAP = 0.75  # the largest bet λ (Waudby-Smith and Ramdas suggest 1/2 or 3/4)
# The test's largest stake, as a share of the most a bet may stake without risking ruin on a draw of 1: near 1 the
# test grows fastest on draws far under the bar, and one draw of 1 still leaves a tenth of the wealth.
BET_CAP = 0.9


def _terms(x: torch.Tensor, population: int | None, alpha: float) -> tuple[torch.Tensor, ...]:
    """Running sums of the confidence sequence over ``x`` (values in [0, 1], in draw order)."""
    x = x.to(torch.float64)
    t = torch.arange(1, len(x) + 1, dtype=torch.float64)
    csum = torch.cumsum(x, 0)
    mean = (0.5 + csum) / (t + 1)  # m_t, the predictable centre after t draws
    prev_mean = torch.cat([torch.tensor([0.5], dtype=torch.float64), mean[:-1]])
    var = (0.25 + torch.cumsum((x - mean) ** 2, 0)) / (t + 1)
    prev_var = torch.cat([torch.tensor([0.25], dtype=torch.float64), var[:-1]])
    lam = torch.sqrt(2 * math.log(1 / alpha) / (prev_var * t * torch.log1p(t))).clamp(max=LAMBDA_CAP)
    v = 4 * (x - prev_mean) ** 2
    psi = (-torch.log1p(-lam) - lam) / 4
    before = csum - x  # S_{i-1}
    if population is None:  # with replacement (an infinite population)
        weight, shift = torch.ones_like(t), torch.zeros_like(t)
    else:
        left = population - t + 1  # N - i + 1
        weight, shift = population / left, before / left
    return (torch.cumsum(lam * (x + shift), 0), torch.cumsum(v * psi, 0), torch.cumsum(lam * weight, 0))


def upper_bound(x: torch.Tensor, *, alpha: float, population: int | None = None) -> float:
    """A (1 - α) upper confidence bound on the population mean, valid at every prefix length at once
    (the smallest of the bounds after each draw, which is as valid as each); at most 1.

    Args:
        x: the draws so far, values in [0, 1], in the order drawn (uniformly at random, without replacement).
        alpha: the error probability (over the whole sequence).
        population: the number of values drawn from (``None``: with replacement).
    """
    if len(x) == 0:
        return 1.0
    gain, penalty, weight = _terms(x, population, alpha)
    bound = (gain + math.log(1 / alpha) + penalty) / weight
    return float(bound.min().clamp(max=1.0))


def lower_bound(x: torch.Tensor, *, alpha: float, population: int | None = None) -> float:
    """The mirror of :func:`upper_bound`: a (1 - α) lower bound valid at every prefix length; at least 0."""
    if len(x) == 0:
        return 0.0
    gain, penalty, weight = _terms(x, population, alpha)
    bound = (gain - math.log(1 / alpha) - penalty) / weight
    return float(bound.max().clamp(min=0.0))


def log_wealth(x: torch.Tensor, *, bar: float | torch.Tensor, population: int | None = None) -> torch.Tensor:
    """The log-wealth, after each draw, of a bettor against "the population mean is at least ``bar``".

    The test of Waudby-Smith and Ramdas (JRSS-B 2023, §4, with the aGRAPA bet; without replacement as in their
    NeurIPS 2020 paper): ``K_t = prod_{i<=t} (1 + λ_i (b_i - x_i))`` with ``b_i = (N bar - S_{i-1}) / (N - i + 1)``,
    the least mean the examples not yet drawn can have if the population's is at least ``bar``, and ``λ_i`` in
    ``[0, BET_CAP / (1 - b_i)]`` chosen from the draws before ``i`` only. Under that hypothesis ``K`` is a
    non-negative supermartingale, so it ever reaches ``1/α`` with probability at most ``α`` (Ville's inequality).

    Args:
        x: the draws so far, values in [0, 1], in the order drawn (uniformly at random, without replacement).
        bar: the mean tested against, in (0, 1); or a 1-d tensor of them (one row of log-wealth per bar).
        population: the number of values drawn from (``None``: with replacement).
    """
    x = x.to(torch.float64)
    b = torch.as_tensor(bar, dtype=torch.float64).reshape(-1, 1)  # one row per bar
    t = torch.arange(1, len(x) + 1, dtype=torch.float64)
    before = torch.cumsum(x, 0) - x  # S_{i-1}
    least = b.expand(-1, len(x)) if population is None else (population * b - before) / (population - t + 1)
    # The bet's predictable mean and variance: a pseudo-draw of bar/2 with variance (bar/2)² before the first.
    mean = torch.cat([b / 2, (b / 2 + torch.cumsum(x, 0)) / (t + 1)], 1)[:, :-1]
    spread = (b / 2) ** 2 + torch.cumsum((x - mean) ** 2, 1)
    var = torch.cat([(b / 2) ** 2, spread / (t + 1)], 1)[:, :-1]
    gap = least - mean
    lam = (gap / (var + gap**2)).clamp(min=0)  # aGRAPA: the growth-optimal bet to second order
    lam = torch.minimum(lam, BET_CAP / (1 - least).clamp(min=1e-12))
    lam = torch.where((least <= 0) | (least >= 1), torch.zeros_like(lam), lam)  # nothing left to bet on
    wealth = torch.cumsum(torch.log1p(lam * (least - x)), 1)
    return wealth if isinstance(bar, torch.Tensor) else wealth[0]


def shows_below(x: torch.Tensor, *, bar: float, alpha: float, population: int | None = None) -> bool:
    """Whether the draws ``x`` (in [0, 1]) show, at error probability ``α`` valid after any number of draws, that
    the population mean is under ``bar``: the bettor of :func:`log_wealth` has multiplied its wealth by ``1/α``."""
    if len(x) == 0 or bar <= 0:
        return False
    if bar >= 1:
        return True  # every value is at most 1
    return bool(log_wealth(x, bar=bar, population=population).max() >= math.log(1 / alpha))


def betting_upper_bound(x: torch.Tensor, *, alpha: float, population: int | None = None, grid: int = 200) -> float:
    """A (1 - α) upper confidence bound on the population mean from :func:`shows_below`, valid at every prefix
    length at once: the smallest of ``grid`` geometric bars in (0, 1] such that the test shows the mean under it
    and under every larger one. (If the mean μ were above that bar, the test of the largest grid bar not above μ,
    whose hypothesis is true, would have said "below": probability at most α.) Far tighter than
    :func:`upper_bound` for a share of rare events none of which was drawn; at most 1.

    Args:
        x: the draws so far, values in [0, 1], in the order drawn (uniformly at random, without replacement).
        alpha: the error probability (over the whole sequence).
        population: the number of values drawn from (``None``: with replacement).
        grid: the number of bars tried, from 1e-6 to 1.
    """
    if len(x) == 0:
        return 1.0
    bars = torch.logspace(-6, 0, grid, dtype=torch.float64)[:-1]  # every value is at most 1: the last bar holds
    below = log_wealth(x, bar=bars, population=population).amax(1) >= math.log(1 / alpha)
    held = torch.flip(torch.cumprod(torch.flip(below, [0]).to(torch.int64), 0), [0]).bool()  # it and all above
    return float(bars[held].min()) if bool(held.any()) else 1.0


def spent(delta: float, k: int) -> float:
    """The error probability of the ``k``-th decision (from 1): ``δ / (k (k + 1))``, which sums to δ over all
    decisions, so every accepted point holds at once with probability at least ``1 - δ``."""
    return delta / (k * (k + 1))


__all__ = [
    "BET_CAP",
    "LAMBDA_CAP",
    "betting_upper_bound",
    "log_wealth",
    "lower_bound",
    "shows_below",
    "spent",
    "upper_bound",
]
