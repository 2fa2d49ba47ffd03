"""MobileNetV2 and ShuffleNetV2 for 32 px images, built from torchvision's own classes.

torchvision's ImageNet models downsample by 32 (a stride-2 stem, plus a max-pool in ShuffleNetV2), which
leaves a 1x1 map from a 32 px image. The CIFAR variants the paper trains (the common CIFAR definitions)
change only the stem and the early strides:

- MobileNetV2: stem stride 1 and the second inverted-residual stage (24 channels) stride 1 instead of 2,
  so the network downsamples by 8 (a 4x4 map at 32 px);
- ShuffleNetV2: stem stride 1 and no max-pool, downsampling by 8.

Everything else (inverted residual / channel-split blocks, initialisation, last 1x1 conv, classifier) is
torchvision's code. ``width`` scales channels, ``depth`` the number of blocks per stage (tiny CPU variants).
"""

from __future__ import annotations

import math

from timm.models import register_model
from torch import nn
from torchvision.models.mobilenetv2 import MobileNetV2
from torchvision.models.shufflenetv2 import ShuffleNetV2
from torchvision.ops.misc import Conv2dNormActivation

from hf_llpf.zoo.small import _build

# (expansion t, channels c, repeats n, stride s) of MobileNetV2; the CIFAR variant's second row has s = 1.
_MOBILENETV2_CIFAR = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# ShuffleNetV2 1.0x: stem channels, the three stages' channels, the last conv's channels; repeats per stage.
_SHUFFLENETV2_CHANNELS = (24, 116, 232, 464, 1024)
_SHUFFLENETV2_REPEATS = (4, 8, 4)


def _repeats(n: int, depth: float) -> int:
    return max(1, math.ceil(n * depth))


class CifarMobileNetV2(MobileNetV2):
    """torchvision's MobileNetV2 with the CIFAR stem (stride 1) and stride-1 second stage.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels (the stem is rebuilt for them).
        width: torchvision's ``width_mult`` (1.0 in the paper); the last conv keeps at least 1280 channels.
        depth: multiplier of the blocks per stage (rounded up, at least 1).
        dropout: dropout before the classifier (torchvision's default 0.2).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        depth: float = 1.0,
        dropout: float = 0.2,
        **_: object,
    ):
        setting = [[t, c, _repeats(n, depth), s] for t, c, n, s in _MOBILENETV2_CIFAR]
        super().__init__(num_classes=num_classes, width_mult=width, inverted_residual_setting=setting, dropout=dropout)
        stem: Conv2dNormActivation = self.features[0]
        stem_out = stem[0].out_channels
        # The CIFAR stem: stride 1 (a 32 px image keeps its resolution) and any number of input channels.
        self.features[0] = Conv2dNormActivation(
            in_chans, stem_out, stride=1, norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU6
        )
        nn.init.kaiming_normal_(self.features[0][0].weight, mode="fan_out")  # torchvision's init of every conv
        self.num_classes = num_classes
        self.num_features = self.last_channel


class CifarShuffleNetV2(ShuffleNetV2):
    """torchvision's ShuffleNetV2 with the CIFAR stem: a stride-1 3x3 conv and no max-pool.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        width: multiplier of the stage channels (1.0 = ShuffleNetV2 1.0x: 116/232/464; rounded to even
            numbers, since each block splits its channels in two halves); the stem keeps 24 channels and the
            last conv 1024 unless ``width`` < 1 scales them too.
        depth: multiplier of the blocks per stage (rounded up, at least 1).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0, depth: float = 1.0, **_: object):
        stem, *stages, last = _SHUFFLENETV2_CHANNELS
        scale = min(1.0, width)  # the stem and the last conv only shrink (tiny variants), as in torchvision's 0.5x
        channels = [
            max(4, 2 * round(stem * scale / 2)),
            *(max(4, 2 * round(c * width / 2)) for c in stages),
            max(8, round(last * scale)),
        ]
        repeats = [_repeats(n, depth) for n in _SHUFFLENETV2_REPEATS]
        super().__init__(stages_repeats=repeats, stages_out_channels=channels, num_classes=num_classes)
        # The CIFAR stem: stride 1 and no max-pool, so the three stages downsample a 32 px image to 4x4.
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_chans, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.Identity()
        self.num_classes = num_classes
        self.num_features = channels[-1]


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs) -> CifarMobileNetV2:
    """MobileNetV2 for 32 px images (``width=1.0``: 2.2M parameters with 10 classes)."""
    return _build(
        "cifar_mobilenetv2",
        CifarMobileNetV2,
        (3, 32, 32),
        dict(kwargs, pretrained=pretrained),
        classifier="classifier.1",
    )


@register_model
def cifar_shufflenetv2(pretrained: bool = False, **kwargs) -> CifarShuffleNetV2:
    """ShuffleNetV2 1.0x for 32 px images (``width=1.0``: 1.3M parameters with 10 classes)."""
    return _build(
        "cifar_shufflenetv2", CifarShuffleNetV2, (3, 32, 32), dict(kwargs, pretrained=pretrained), classifier="fc"
    )
