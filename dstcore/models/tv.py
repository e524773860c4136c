"""torchvision ResNet/GoogLeNet/DenseNet with stems adapted to the input size.

ImageNet-size inputs keep torchvision's 7x7 stride-2 stem and max-pool. Small inputs
(height <= 64: CIFAR's 32x32, MNIST's 28x28) get the usual CIFAR stem, a 3x3 stride-1
convolution with no max-pool; the stem takes as many channels as the input has.
"""

from __future__ import annotations

from torch import nn

from dstcore.models import register

# torchvision is imported inside the builders: importing it costs about a second per process,
# and most pipeline jobs (LeNet5, ResNet-8/20) never need it.

SMALL_INPUT = 64  # inputs at most this high get the CIFAR stem


def _small(shape: tuple[int, int, int]) -> bool:
    return shape[1] <= SMALL_INPUT


def tv_resnet(name: str, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision ResNet ``name`` (resnet18/34/50)."""
    import torchvision.models as tvm

    model = getattr(tvm, name)(weights=None, num_classes=num_classes)
    if _small(shape):
        model.conv1 = nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif shape[0] != 3:
        model.conv1 = nn.Conv2d(shape[0], 64, 7, 2, 3, bias=False)
    return model


def googlenet(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision GoogLeNet without auxiliary classifiers."""
    import torchvision.models as tvm
    from torchvision.models.googlenet import BasicConv2d

    model = tvm.googlenet(weights=None, num_classes=num_classes, aux_logits=False,
                          init_weights=True, transform_input=False)
    if _small(shape):
        model.conv1 = BasicConv2d(shape[0], 64, kernel_size=3, stride=1, padding=1)
        model.maxpool1 = nn.Identity()
        model.maxpool2 = nn.Identity()
    elif shape[0] != 3:
        model.conv1 = BasicConv2d(shape[0], 64, kernel_size=7, stride=2, padding=3)
    return model


def tv_densenet(shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision DenseNet-121."""
    import torchvision.models as tvm

    model = tvm.densenet121(weights=None, num_classes=num_classes)
    if _small(shape):
        model.features.conv0 = nn.Conv2d(shape[0], 64, 3, 1, 1, bias=False)
        model.features.pool0 = nn.Identity()
    elif shape[0] != 3:
        model.features.conv0 = nn.Conv2d(shape[0], 64, 7, 2, 3, bias=False)
    return model


for _name in ("resnet18", "resnet34", "resnet50"):
    register(_name)(lambda shape, k, _name=_name: tv_resnet(_name, shape, k))
register("googlenet")(googlenet)
register("densenet121")(tv_densenet)
