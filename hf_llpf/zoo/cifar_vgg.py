"""VGG11 with BatchNorm for 32 px images: eight 3x3 convs, five max-pools, one linear classifier.

The CIFAR variant (as in the widely used CIFAR VGG of the paper's experiments) drops ImageNet VGG's 7x7
average pool and its two 4096-wide linear layers: after five pools a 32 px image is 1x1, so one linear
layer reads the last conv's channels. torchvision's ``make_layers`` hard-codes 3 input channels, hence
this small definition.
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from hf_llpf.zoo.small import _build

# Channels of each 3x3 conv, "M" a 2x2 max-pool (VGG "A" configuration = VGG11), for width 64.
_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class CifarVGG(nn.Module):
    """VGG11-BN for CIFAR. ``width`` is the first conv's channel count (64 in the paper; the rest scale with it)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 64, **_: object):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c_in = in_chans
        for item in _VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = max(1, item * width // 64)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.head = nn.Linear(c_in, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # B, 8w, H/32, W/32 (1x1 at 32 px)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean(dim=(2, 3))  # B, 8w; the mean also accepts inputs above 32 px
        return self.head(x)


@register_model
def cifar_vgg11_bn(pretrained: bool = False, **kwargs) -> CifarVGG:
    """VGG11-BN for 32 px images (``width=64``: 9.2M parameters with 10 classes)."""
    return _build("cifar_vgg11_bn", CifarVGG, (3, 32, 32), dict(kwargs, pretrained=pretrained))
