"""A ResNet50-style network at CPU scale: bottleneck residual blocks (1x1 -> 3x3 -> 1x1)."""

from __future__ import annotations

import torch
from torch import nn

from dstcore.models import register

EXPANSION = 4  # output channels of a block / its 3x3 width (ResNet50's)


class Bottleneck(nn.Module):
    """1x1 (``planes``) -> 3x3 (``planes``, ``stride``) -> 1x1 (``EXPANSION x planes``), each
    conv-BN, ReLU after the first two and after the sum with the identity or 1x1 projection."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        out = EXPANSION * planes
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class BottleneckResNet(nn.Module):
    """3x3 stem (16) and 2x2 max-pool (ResNet50's stem also downsamples), three stages of
    ``blocks`` bottlenecks (widths 16/32/64, outputs 64/128/256, stride 2 at the start of
    stages 2 and 3), global average pool, linear; depth 9 x blocks + 2 (3: ResNet-29)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 blocks: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.stem_pool = nn.MaxPool2d(2)
        layers, c_in = [], 16
        for stage, planes in enumerate((16, 32, 64)):
            for block in range(blocks):
                layers.append(Bottleneck(c_in, planes, 2 if stage > 0 and block == 0 else 1))
                c_in = EXPANSION * planes
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem_pool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


register("resnet29_bottleneck")(BottleneckResNet)
