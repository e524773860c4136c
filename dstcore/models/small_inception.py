"""A GoogLeNet-style network at CPU scale: Inception blocks (four branches, concatenated)."""

from __future__ import annotations

import torch
from torch import nn

from dstcore.models import register


def conv_bn_relu(c_in: int, c_out: int, kernel: int) -> nn.Sequential:
    """Conv (same padding, no bias) -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class Inception(nn.Module):
    """GoogLeNet's block (Szegedy et al. 2015): 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool ->
    1x1; the four outputs concatenated along channels (``out_channels`` = their sum)."""

    def __init__(self, c_in: int, c1: int, c3_reduce: int, c3: int, c5_reduce: int, c5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.branch1 = conv_bn_relu(c_in, c1, 1)
        self.branch3 = nn.Sequential(conv_bn_relu(c_in, c3_reduce, 1),
                                     conv_bn_relu(c3_reduce, c3, 3))
        self.branch5 = nn.Sequential(conv_bn_relu(c_in, c5_reduce, 1),
                                     conv_bn_relu(c5_reduce, c5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1),
                                         conv_bn_relu(c_in, pool_proj, 1))
        self.out_channels = c1 + c3 + c5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch5(x),
                          self.branch_pool(x)], 1)


class SmallInception(nn.Module):
    """3x3 stem (32) and max-pool (GoogLeNet's stem also downsamples), two Inceptions at half
    the input size, max-pool, two at a quarter, global average pool, linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(input_shape[0], 32, 3), nn.MaxPool2d(2))
        blocks = [Inception(32, 16, 24, 32, 4, 8, 8),                 # 64 channels
                  Inception(64, 32, 32, 48, 8, 16, 16), nn.MaxPool2d(2),  # 112
                  Inception(112, 48, 48, 64, 12, 24, 24),              # 160
                  Inception(160, 64, 64, 96, 16, 32, 32)]              # 224
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(blocks[-1].out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


register("inception_small")(SmallInception)
