"""Small CNNs for the built-in data: the demo's ``small_cnn`` and the paper's ``lenet5``."""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, register_model
from torch import nn


def _cfg(architecture: str, input_size: tuple[int, int, int], num_classes: int, classifier: str) -> dict:
    # The pretrained_cfg timm records in config.json; mean/std are those of hf_llpf.data.bundle's normalisation.
    return {
        "architecture": architecture,
        "input_size": input_size,
        "num_classes": num_classes,
        "mean": (0.5,) * input_size[0],
        "std": (0.5,) * input_size[0],
        "classifier": classifier,
        "first_conv": "conv1",
    }


class SmallCNN(nn.Module):
    """Three 3x3 conv layers with BatchNorm, global average pooling and a linear head.

    Works on any input of at least 4x4 pixels (8x8 digits, 28x28 MNIST, 32x32 CIFAR).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 16, **_: object):
        super().__init__()
        self.num_classes = num_classes
        w = width
        self.conv1 = nn.Conv2d(in_chans, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * w)
        self.conv3 = nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * w)
        self.pool = nn.MaxPool2d(2)
        self.num_features = 4 * w
        self.head = nn.Linear(4 * w, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # B, w, H, W
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))  # B, 2w, H/2, W/2
        x = torch.relu(self.bn3(self.conv3(x)))  # B, 4w, H/2, W/2
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x).mean(dim=(2, 3))  # B, 4w
        return self.head(x)


class LeNet5(nn.Module):
    """LeNet-5 (two 5x5 convs, three linear layers), as the paper's MNIST experiments use it.

    The convolutions pad so that 8x8, 28x28 and 32x32 inputs all work; the first linear layer
    reads a 4x4 map after adaptive pooling.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, **_: object):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.num_features = 84
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))  # B, 6, H, W
        x = torch.max_pool2d(x, 2) if x.shape[-1] >= 16 else x
        x = torch.relu(self.conv2(x))  # B, 16, H', W'
        x = self.pool(x).flatten(1)  # B, 256
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.head(x)


def _build(
    name: str, cls: type[nn.Module], default_size: tuple[int, int, int], kwargs: dict, classifier: str = "head"
) -> nn.Module:
    """Build ``cls`` through timm's builder, so ``pretrained=True`` loads weights from ``hf-hub:``/``local-dir:``."""
    pretrained = kwargs.pop("pretrained", False)
    in_chans = kwargs.get("in_chans", default_size[0])
    num_classes = kwargs.get("num_classes", 10)
    kwargs.setdefault("num_classes", num_classes)
    cfg = kwargs.pop("pretrained_cfg", None)
    if cfg is None:
        cfg = _cfg(name, (in_chans, *default_size[1:]), num_classes, classifier)
    return build_model_with_cfg(cls, name, pretrained, pretrained_cfg=cfg, **kwargs)


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    """The demo model: 3 conv + BN layers, 16/32/64 channels by default (``width=16``)."""
    return _build("small_cnn", SmallCNN, (1, 8, 8), dict(kwargs, pretrained=pretrained))


@register_model
def lenet5(pretrained: bool = False, **kwargs) -> LeNet5:
    """LeNet-5 for 1-channel images (MNIST, digits)."""
    return _build("lenet5", LeNet5, (1, 28, 28), dict(kwargs, pretrained=pretrained))
