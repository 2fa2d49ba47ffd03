"""EfficientNet-B0 and RegNetX-200MF for 32 px images, built from timm's own model classes.

timm's ImageNet definitions downsample by 32 (stride-2 stem, four or five stride-2 stages); on a 32 px
image that leaves a 1x1 map. The CIFAR variants used in the paper's experiments (the common CIFAR
definitions) keep the blocks and change only strides:

- EfficientNet-B0: stem stride 1 (downsampling by 16, a 2x2 map at 32 px); blocks, squeeze-excitation,
  swish, channel rounding and drop rate are timm's ``efficientnet_b0``;
- RegNetX-200MF: stem stride 1 and the first two stages stride 1 (downsampling by 4, an 8x8 map at 32 px);
  widths (24/56/152/368), depths (1/1/4/7) and group width 8 are timm's ``regnetx_002``. The stem keeps
  timm's 32 channels.

``width`` and ``depth`` multiply channels and blocks per stage (tiny CPU variants).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from timm.models import register_model
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.efficientnet import EfficientNet
from timm.models.regnet import RegNet, model_cfgs
from torch import nn

from hf_llpf.zoo.small import _build

# timm's efficientnet_b0 block definition (block type, repeats, kernel, stride, expansion, channels, SE ratio).
_EFFICIENTNET_B0 = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e6_c24_se0.25"],
    ["ir_r2_k5_s2_e6_c40_se0.25"],
    ["ir_r3_k3_s2_e6_c80_se0.25"],
    ["ir_r3_k5_s1_e6_c112_se0.25"],
    ["ir_r4_k5_s2_e6_c192_se0.25"],
    ["ir_r1_k3_s1_e6_c320_se0.25"],
]
_REGNETX_CIFAR_STRIDES = (1, 1, 2, 2)


class CifarEfficientNet(EfficientNet):
    """timm's EfficientNet-B0 with a stride-1 stem.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width: timm's channel multiplier (1.0 = B0; channels rounded to multiples of 8).
        depth: timm's depth multiplier (repeats per stage, rounded up).
        drop_rate: dropout before the classifier (B0's 0.2).
        drop_path_rate: stochastic depth (0 by default: the paper's CIFAR model has none).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        depth: float = 1.0,
        drop_rate: float = 0.2,
        drop_path_rate: float = 0.0,
        **_: object,
    ):
        round_chs = partial(round_channels, multiplier=width, divisor=8)
        super().__init__(
            block_args=decode_arch_def(_EFFICIENTNET_B0, depth),
            num_classes=num_classes,
            num_features=round_chs(1280),
            in_chans=in_chans,
            stem_size=32,
            round_chs_fn=round_chs,
            act_layer=nn.SiLU,  # swish
            norm_layer=nn.BatchNorm2d,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate,
        )
        # The CIFAR stem: stride 1. timm pads a 3x3 conv by 1 whatever the stride, so only the stride changes.
        self.conv_stem.stride = (1, 1)


class CifarRegNet(RegNet):
    """timm's RegNetX-200MF (``regnetx_002``) with a stride-1 stem and stride-1 first two stages.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width: multiplier of the stage widths (rounded to multiples of the group width 8).
        depth: multiplier of the blocks per stage (rounded up, at least 1).
        drop_path_rate: stochastic depth (0: none).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        depth: float = 1.0,
        drop_path_rate: float = 0.0,
        **_: object,
    ):
        # Read by _get_stage_args, which RegNet.__init__ calls before it returns.
        self._cifar_scale = (width, depth)
        super().__init__(
            model_cfgs["regnetx_002"], in_chans=in_chans, num_classes=num_classes, drop_path_rate=drop_path_rate
        )
        # timm pads a 3x3 conv by 1 whatever the stride: a stride-1 stem keeps the 32 px resolution.
        self.stem.conv.stride = (1, 1)

    def _get_stage_args(self, cfg: Any, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        per_stage, common = super()._get_stage_args(cfg, **kwargs)
        width, depth = self._cifar_scale
        for args, stride in zip(per_stage, _REGNETX_CIFAR_STRIDES, strict=True):
            gs = args["group_size"]
            args["stride"], args["dilation"] = stride, 1
            args["out_chs"] = max(gs, gs * round(args["out_chs"] * width / gs))
            args["depth"] = max(1, math.ceil(args["depth"] * depth))
            args["drop_path_rates"] = [args["drop_path_rates"][0]] * args["depth"]
        return per_stage, common


@register_model
def cifar_efficientnet_b0(pretrained: bool = False, **kwargs) -> CifarEfficientNet:
    """EfficientNet-B0 for 32 px images (``width=1.0, depth=1.0``: 4.0M parameters with 10 classes)."""
    return _build(
        "cifar_efficientnet_b0",
        CifarEfficientNet,
        (3, 32, 32),
        dict(kwargs, pretrained=pretrained),
        classifier="classifier",
    )


@register_model
def cifar_regnetx_200mf(pretrained: bool = False, **kwargs) -> CifarRegNet:
    """RegNetX-200MF for 32 px images (``width=1.0, depth=1.0``: 2.3M parameters with 10 classes)."""
    return _build(
        "cifar_regnetx_200mf", CifarRegNet, (3, 32, 32), dict(kwargs, pretrained=pretrained), classifier="head.fc"
    )
