"""Built-in architectures, registered with timm so that ``timm.create_model(name)`` builds them.

Importing :mod:`hf_llpf` imports this package, so every name below is available to timm afterwards:
``small_cnn`` (the demo model), ``lenet5`` and ``cifar_resnet18`` (3x3 stem, no max-pool, as in the paper).
"""

from hf_llpf.zoo.cifar_resnet import CifarResNet, cifar_resnet18
from hf_llpf.zoo.small import LeNet5, SmallCNN, lenet5, small_cnn

BUILTIN_MODELS = ("small_cnn", "lenet5", "cifar_resnet18")

__all__ = ["BUILTIN_MODELS", "CifarResNet", "LeNet5", "SmallCNN", "cifar_resnet18", "lenet5", "small_cnn"]
