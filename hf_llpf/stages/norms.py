"""The normalisation-kind table: which modules are norm layers, found by module type, never by name."""

from __future__ import annotations

from torch import nn

__all__ = ["NORM_KINDS", "norm_kind"]

NORM_KINDS = ("batchnorm", "layernorm", "rmsnorm", "groupnorm")


def _norm_classes() -> list[tuple[type, str]]:
    """(class, kind) pairs, most specific first; timm's own norm classes are added when timm is installed."""
    pairs: list[tuple[type, str]] = [
        (nn.modules.batchnorm._BatchNorm, "batchnorm"),
        (nn.LayerNorm, "layernorm"),
        (nn.GroupNorm, "groupnorm"),
        # InstanceNorm is GroupNorm with one channel per group and no running stats unless asked for.
        (nn.modules.instancenorm._InstanceNorm, "groupnorm"),
    ]
    if hasattr(nn, "RMSNorm"):
        pairs.append((nn.RMSNorm, "rmsnorm"))
    try:
        import timm.layers as tl
    except Exception:  # timm missing or broken: torch classes are enough
        return pairs
    for cls_name, kind in (
        ("RmsNorm", "rmsnorm"),
        ("RmsNorm2d", "rmsnorm"),
        ("SimpleNorm", "rmsnorm"),
        ("SimpleNorm2d", "rmsnorm"),
        ("LayerNorm2d", "layernorm"),
        ("LayerNormAct", "layernorm"),
        ("LayerNormAct2d", "layernorm"),
    ):
        cls = getattr(tl, cls_name, None)
        if isinstance(cls, type):
            pairs.append((cls, kind))
    return pairs


_NORM_CLASSES: list[tuple[type, str]] | None = None


def norm_kind(module: nn.Module) -> str | None:
    """Normalisation kind of a module by its type: one of ``NORM_KINDS`` or ``None``.

    torch's BatchNorm*/SyncBatchNorm, LayerNorm, GroupNorm, InstanceNorm* (reported as ``"groupnorm"``) and
    RMSNorm, their subclasses (timm's ``BatchNormAct2d``, ``LayerNorm2d``, ...), timm's ``RmsNorm`` family,
    and transformers' per-model RMSNorm classes (a class defined in ``transformers`` whose class name ends in
    ``RMSNorm``: transformers defines one per architecture with no common base class).

    Args:
        module: the module.

    Returns:
        The kind, or ``None`` for a module that is not a normalisation layer.
    """
    global _NORM_CLASSES
    if _NORM_CLASSES is None:
        _NORM_CLASSES = _norm_classes()
    for cls, kind in _NORM_CLASSES:
        if isinstance(module, cls):
            return kind
    for cls in type(module).__mro__:
        if cls.__module__.startswith("transformers.") and cls.__name__.endswith("RMSNorm"):
            return "rmsnorm"
    return None
