"""DLA (Deep Layer Aggregation) for 32 px images, as in the common CIFAR definition the paper trains.

A 3x3 stride-1 stem, two plain conv layers, then four aggregation trees of basic residual blocks whose
outputs are concatenated and merged by a 1x1 "root" conv. timm's ``dla34`` is the ImageNet network (7x7
stem, downsampling by 32); this is the smaller CIFAR network (16..512 channels, downsampling by 8).
"""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from hf_llpf.zoo.small import _build


class _Basic(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class _Root(nn.Module):
    """Aggregation node: concatenate the children's outputs, 1x1 conv + BN + ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(torch.cat(xs, 1))))


class _Tree(nn.Module):
    """A level-``level`` aggregation tree; level 1 is two blocks and a root, level n nests level n-1..1 trees."""

    def __init__(self, c_in: int, c_out: int, level: int = 1, stride: int = 1):
        super().__init__()
        self.level = level
        if level == 1:
            self.root = _Root(2 * c_out, c_out)
        else:
            self.root = _Root((level + 2) * c_out, c_out)
            self.prev_root = _Basic(c_in, c_out, stride)
            # Sub-trees read the tree's input, deepest level first (registered in that order, the order they run).
            for i in reversed(range(1, level)):
                setattr(self, f"level_{i}", _Tree(c_in, c_out, level=i, stride=stride))
        self.left_node = _Basic(c_in if level == 1 else c_out, c_out, stride if level == 1 else 1)
        self.right_node = _Basic(c_out, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = [self.prev_root(x)] if self.level > 1 else []
        for i in reversed(range(1, self.level)):
            x = getattr(self, f"level_{i}")(x)
            xs.append(x)
        x = self.left_node(x)
        xs.append(x)
        x = self.right_node(x)
        xs.append(x)
        return self.root(xs)


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


class CifarDLA(nn.Module):
    """DLA for CIFAR. ``width`` is the stem's channel count (16 in the paper; every layer scales with it)."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: int = 16, **_: object):
        super().__init__()
        self.num_classes = num_classes
        w = width
        self.base = _conv_bn_relu(in_chans, w)  # B, w, 32, 32
        self.layer1 = _conv_bn_relu(w, w)
        self.layer2 = _conv_bn_relu(w, 2 * w)
        self.layer3 = _Tree(2 * w, 4 * w, level=1, stride=1)  # B, 4w, 32, 32
        self.layer4 = _Tree(4 * w, 8 * w, level=2, stride=2)  # B, 8w, 16, 16
        self.layer5 = _Tree(8 * w, 16 * w, level=2, stride=2)  # B, 16w, 8, 8
        self.layer6 = _Tree(16 * w, 32 * w, level=1, stride=2)  # B, 32w, 4, 4
        self.num_features = 32 * w
        self.linear = nn.Linear(32 * w, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.base(x)))
        return self.layer6(self.layer5(self.layer4(self.layer3(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.forward_features(x).mean(dim=(2, 3)))  # B, 32w → B, classes


@register_model
def cifar_dla(pretrained: bool = False, **kwargs) -> CifarDLA:
    """DLA for 32 px images (``width=16``: 16.3M parameters with 10 classes)."""
    return _build("cifar_dla", CifarDLA, (3, 32, 32), dict(kwargs, pretrained=pretrained), classifier="linear")
