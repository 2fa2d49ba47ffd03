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
The lower bound is the mirror image. Pure tensor arithmetic in float64 on the CPU.
"""

from __future__ import annotations

import math

import torch

LAMBDA_CAP = 0.75  # the largest bet λ (Waudby-Smith and Ramdas suggest 1/2 or 3/4)


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


def spent(delta: float, k: int) -> float:
    """The error probability of the ``k``-th decision (from 1): ``δ / (k (k + 1))``, which sums to δ over all
    decisions, so every accepted point holds at once with probability at least ``1 - δ``."""
    return delta / (k * (k + 1))


__all__ = ["LAMBDA_CAP", "lower_bound", "spent", "upper_bound"]
