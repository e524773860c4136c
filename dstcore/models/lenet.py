"""LeNet-5: two 5x5 convolutions and three fully connected layers, with ReLU and max-pooling."""

from __future__ import annotations

import torch
from torch import nn

from dstcore.models import register


class LeNet5(nn.Module):
    """Classic LeNet-5 (conv 6@5x5 -> pool -> conv 16@5x5 -> pool -> fc 120 -> 84 -> classes).

    The first convolution is padded so its output is 28x28 for 28x28 inputs (416,520 MACs per
    image at 1x28x28, 10 classes) and unpadded for 32x32 inputs; an adaptive pool before the
    classifier makes any larger input size work (it is a no-op at 28x28 and 32x32).
    """

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, _ = input_shape
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=2 if height < 32 else 0)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.squeeze = nn.AdaptiveMaxPool2d((5, 5))
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))
        x = self.squeeze(self.pool(self.relu(self.conv2(x))))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


register("lenet5")(LeNet5)
