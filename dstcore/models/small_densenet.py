"""A DenseNet-BC-style network at CPU scale: dense blocks, every layer fed all earlier maps."""

from __future__ import annotations

import torch
from torch import nn

from dstcore.models import register


class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv (``bottleneck`` channels) -> BN -> ReLU -> 3x3 conv (``growth``);
    the output is the input with the ``growth`` new channels concatenated (Huang et al. 2017)."""

    def __init__(self, c_in: int, growth: int, bottleneck: int) -> None:
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, bottleneck, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(bottleneck), nn.ReLU()
        self.conv2 = nn.Conv2d(bottleneck, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = self.conv2(self.relu2(self.bn2(self.conv1(self.relu1(self.bn1(x))))))
        return torch.cat([x, new], 1)


class Transition(nn.Module):
    """BN -> ReLU -> 1x1 conv (``c_out``) -> 2x2 average pool."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.bn, self.relu = nn.BatchNorm2d(c_in), nn.ReLU()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class SmallDenseNet(nn.Module):
    """3x3 stem (2 x growth) and 2x2 max-pool (DenseNet's stem also downsamples), dense blocks
    of ``layers`` at half, a quarter and an eighth of the input size (growth 12, bottleneck
    48), transitions halving the channels, BN -> ReLU -> global average pool -> linear."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int,
                 layers: tuple[int, ...] = (4, 6, 6), growth: int = 12) -> None:
        super().__init__()
        channels = 2 * growth
        parts: list[nn.Module] = [nn.Conv2d(input_shape[0], channels, 3, padding=1, bias=False),
                                  nn.MaxPool2d(2)]
        for i, n in enumerate(layers):
            for _ in range(n):
                parts.append(DenseLayer(channels, growth, 4 * growth))
                channels += growth
            if i + 1 < len(layers):
                parts.append(Transition(channels, channels // 2))
                channels //= 2
        parts += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*parts)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


register("densenet_small")(SmallDenseNet)
