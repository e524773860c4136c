"""CIFAR-style residual networks (He et al. 2016, ResNet-6n+2) that train in minutes on a CPU."""

from __future__ import annotations

import torch
from torch import nn

from dstcore.models import register


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """3x3 stem, three stages of ``blocks_per_stage`` blocks (16/32/64 channels), global pool."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 blocks_per_stage: int = 3, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        layers, in_planes = [], width
        for stage, planes in enumerate((width, 2 * width, 4 * width)):
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def small_resnet(input_shape: tuple[int, int, int], num_classes: int,
                 blocks_per_stage: int) -> SmallResNet:
    """ResNet-(6n+2) with n = ``blocks_per_stage`` (resnet8: n=1, resnet20: n=3)."""
    return SmallResNet(input_shape, num_classes, blocks_per_stage)


register("resnet8")(lambda shape, k: small_resnet(shape, k, blocks_per_stage=1))
register("resnet20")(lambda shape, k: small_resnet(shape, k, blocks_per_stage=3))
