"""Built-in architectures, registered with timm so that ``timm.create_model(name)`` builds them.

Importing :mod:`hf_llpf` imports this package, so every name below is available to timm afterwards:
``small_cnn`` (the demo model), ``lenet5``, and the paper's CIFAR architectures with 32 px stems:
``cifar_resnet18``, ``cifar_vgg11_bn``, ``cifar_mobilenetv2``, ``cifar_shufflenetv2``,
``cifar_efficientnet_b0``, ``cifar_regnetx_200mf``, ``cifar_dla`` and ``cct_7_3x1``. Each takes
``num_classes``, ``in_chans`` and width (and most a depth) arguments for tiny CPU variants.
"""

from hf_llpf.zoo.cct import CCT, cct_7_3x1
from hf_llpf.zoo.cifar_dla import CifarDLA, cifar_dla
from hf_llpf.zoo.cifar_mobile import CifarMobileNetV2, CifarShuffleNetV2, cifar_mobilenetv2, cifar_shufflenetv2
from hf_llpf.zoo.cifar_resnet import CifarResNet, cifar_resnet18
from hf_llpf.zoo.cifar_timm import CifarEfficientNet, CifarRegNet, cifar_efficientnet_b0, cifar_regnetx_200mf
from hf_llpf.zoo.cifar_vgg import CifarVGG, cifar_vgg11_bn
from hf_llpf.zoo.small import LeNet5, SmallCNN, lenet5, small_cnn

BUILTIN_MODELS = (
    "small_cnn",
    "lenet5",
    "cifar_resnet18",
    "cifar_vgg11_bn",
    "cifar_mobilenetv2",
    "cifar_shufflenetv2",
    "cifar_efficientnet_b0",
    "cifar_regnetx_200mf",
    "cifar_dla",
    "cct_7_3x1",
)

# The class each built-in name builds: its constructor's named arguments are the model_args a user may pass.
MODEL_CLASSES = {
    "small_cnn": SmallCNN,
    "lenet5": LeNet5,
    "cifar_resnet18": CifarResNet,
    "cifar_vgg11_bn": CifarVGG,
    "cifar_mobilenetv2": CifarMobileNetV2,
    "cifar_shufflenetv2": CifarShuffleNetV2,
    "cifar_efficientnet_b0": CifarEfficientNet,
    "cifar_regnetx_200mf": CifarRegNet,
    "cifar_dla": CifarDLA,
    "cct_7_3x1": CCT,
}

__all__ = [
    "BUILTIN_MODELS",
    "MODEL_CLASSES",
    "CCT",
    "CifarDLA",
    "CifarEfficientNet",
    "CifarMobileNetV2",
    "CifarRegNet",
    "CifarResNet",
    "CifarShuffleNetV2",
    "CifarVGG",
    "LeNet5",
    "SmallCNN",
    "cct_7_3x1",
    "cifar_dla",
    "cifar_efficientnet_b0",
    "cifar_mobilenetv2",
    "cifar_regnetx_200mf",
    "cifar_resnet18",
    "cifar_shufflenetv2",
    "cifar_vgg11_bn",
    "lenet5",
    "small_cnn",
]
