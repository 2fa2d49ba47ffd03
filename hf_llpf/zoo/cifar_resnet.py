"""The CIFAR ResNet18 the paper uses: 3x3 stride-1 stem, no max-pool, four stages of basic blocks."""

from __future__ import annotations

import torch
from timm.models import register_model
from torch import nn

from hf_llpf.zoo.small import _build


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 conv + BN) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    """ResNet with a CIFAR stem. ``width`` scales every stage (64 in the paper; smaller for CPU tests)."""

    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 64,
        **_: object,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        in_planes = width
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # B, w, 32, 32
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        x = x.mean(dim=(2, 3))  # B, 8w
        return self.fc(x)


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs) -> CifarResNet:
    """ResNet18 for 32 px images (the paper's CIFAR-10 model); ``width=64`` by default."""
    kwargs.setdefault("layers", (2, 2, 2, 2))
    return _build("cifar_resnet18", CifarResNet, (3, 32, 32), dict(kwargs, pretrained=pretrained), classifier="fc")
