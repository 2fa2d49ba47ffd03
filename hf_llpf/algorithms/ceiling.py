"""The loss ceiling and the repair's headroom under it: which auto ceiling fits the path's loss, and how far below
it the repair aims (docs/algorithm.md §10.1, §10.2 step 7).
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from hf_llpf.config import HEADROOM_AUTO, HEADROOM_AUTO_SPAN, HEADROOM_SET, ConnectConfig
from hf_llpf.data.task import endpoint_task
from hf_llpf.errors import ConfigError

# The auto ceiling's smallest margin above the endpoints: near-zero endpoint losses leave no room for the noise
# of a repaired point's eval-mode loss (docs/algorithm.md §10: measured spread of repaired points).
AUTO_FLOOR = 0.04
# The auto ceiling of a causal LM: a perplexity at most this multiple of the endpoints' (L + ln of it). A loss margin
# means nothing in a causal LM's units, where L is about 3.5; a perplexity ratio is what its users compare.
PERPLEXITY_RATIO = 1.5
CLIP_CEILINGS = 10.0  # certify_clip: auto, in ceilings (a larger B widens the bound; a smaller one says less)


def ceiling_rule(models: list[nn.Module], loss_fn: Any = None) -> str:
    """Which auto ceiling fits the path's loss: ``"causal-lm"`` (a causal LM scored by its own token cross-entropy),
    ``"custom"`` (a caller's ``loss_fn``: its units are unknown) or ``"classifier"``."""
    if loss_fn is not None:
        return "custom"
    return "causal-lm" if models and endpoint_task(models[0]) == "causal-lm" else "classifier"


# What each rule means, in the units a user thinks in (printed when the run starts and recorded in the summary).
CEILING_RULES = {
    "classifier": "L + max(0.04, ceiling_margin·L)",
    "causal-lm": f"L + ln {PERPLEXITY_RATIO:g}: a perplexity at most {PERPLEXITY_RATIO:g}x the endpoints'",
    "custom": "L + max(0.04, ceiling_margin·L), the classifier's rule (a custom loss_fn: set loss_ceiling when its "
    "units are not a cross-entropy's)",
}


def resolve_ceiling(config: ConnectConfig, endpoint_losses: list[float], *, rule: str = "classifier") -> float | None:
    """The run's ceiling from ``config.loss_ceiling`` and the endpoints' losses (``None``: no ceiling).

    ``auto`` follows ``rule`` (:func:`ceiling_rule`, :data:`CEILING_RULES`): a classifier's ``L + max(0.04,
    ceiling_margin·L)``; a causal LM's ``L + ln 1.5``, a perplexity at most 1.5× the endpoints' (the classifier's
    rule gave a small GPT-2 pair at L = 3.5 a ceiling of 5.3, a perplexity 5.9× theirs).

    Raises:
        ConfigError: a set ceiling below an endpoint's own loss (both numbers named), or an endpoint
            whose loss is not finite.
    """
    if config.loss_ceiling is None:
        return None
    bad = [f"{k}={v}" for k, v in zip("AB", endpoint_losses, strict=False) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"loss_ceiling: endpoint probe loss not finite ({', '.join(bad)}); check the endpoints")
    top = max(endpoint_losses)
    if config.loss_ceiling == "auto" and rule == "causal-lm":
        return top + math.log(PERPLEXITY_RATIO)
    if config.loss_ceiling == "auto":
        return top + max(AUTO_FLOOR, config.ceiling_margin * top)
    if config.loss_ceiling < top:
        which = "AB"[endpoint_losses.index(top)] if len(endpoint_losses) > 1 else "A"
        raise ConfigError(
            f"certify.loss_ceiling={config.loss_ceiling:g} is below endpoint {which}'s own probe loss {top:.4g}: no "
            f"path can stay under it (set certify.loss_ceiling >= {top:.4g}, or 'auto')"
        )
    return float(config.loss_ceiling)


def resolve_headroom(config: ConnectConfig, *, exact: bool = False) -> float:
    """The repair's headroom (:meth:`Certifier.target`): ``repair_headroom``, where ``auto`` is 0 on the exact route
    (``exact``: decisions see every training example, so there are none left to make room for),
    :data:`~hf_llpf.config.HEADROOM_SET` under a set ceiling and the smaller
    :data:`~hf_llpf.config.HEADROOM_AUTO` under the auto one, whose margin above the endpoints is most of the room
    for the examples a decision does not see."""
    if config.repair_headroom != "auto":
        return float(config.repair_headroom)
    if exact:
        return 0.0
    return HEADROOM_SET if ceiling_is_set(config) else HEADROOM_AUTO


def headroom_span(config: ConnectConfig) -> float:
    """The SGD iterations over which the repair's target relaxes from the headroom to the ceiling
    (:meth:`Certifier.target`): the whole ``repair_budget`` under a set ceiling, its first
    :data:`~hf_llpf.config.HEADROOM_AUTO_SPAN` under the auto one (where the whole budget cost families whose paths
    run near the ceiling up to 3× their iterations)."""
    whole = float(config.repair_budget)
    return whole if ceiling_is_set(config) else whole * HEADROOM_AUTO_SPAN


def clip_of(config: ConnectConfig, ceiling: float) -> float:
    """B, the loss each example is clipped at in the sequential route's confidence bound (``certify_clip``)."""
    return CLIP_CEILINGS * ceiling if config.certify_clip == "auto" else float(config.certify_clip)


def ceiling_is_set(config: ConnectConfig) -> bool:
    """Whether the user named the ceiling (a number; not ``auto``, not ``None``)."""
    return isinstance(config.loss_ceiling, float)


__all__ = [
    "AUTO_FLOOR",
    "CEILING_RULES",
    "CLIP_CEILINGS",
    "PERPLEXITY_RATIO",
    "ceiling_is_set",
    "ceiling_rule",
    "clip_of",
    "headroom_span",
    "resolve_ceiling",
    "resolve_headroom",
]
