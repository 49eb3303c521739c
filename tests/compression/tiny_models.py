"""Tiny models for the compression tests; ``tiny_net`` is the packed-file arch factory."""

from __future__ import annotations

import torch
from torch import nn

FACTORY = "tests.compression.tiny_models:tiny_net"


class TinyNet(nn.Module):
    """conv-bn-relu -> conv-relu -> pool -> fc-relu -> fc, for 1x8x8 inputs."""

    def __init__(self, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(2 * width * 4, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def tiny_net(width: int = 8, num_classes: int = 10) -> TinyNet:
    return TinyNet(width, num_classes)


def trained_tiny_net(seed: int = 0) -> TinyNet:
    """A TinyNet with non-default BN statistics, so a lost buffer shows up in outputs."""
    torch.manual_seed(seed)
    model = tiny_net()
    with torch.no_grad():
        model.bn1.running_mean.uniform_(-0.5, 0.5)
        model.bn1.running_var.uniform_(0.5, 2.0)
        model.bn1.weight.uniform_(0.5, 1.5)
    return model.eval()


CONTRACT_FACTORY = "tests.compression.tiny_models:contract_net"


class ContractNet(nn.Module):
    """conv-relu-conv-relu -> flatten -> fc-relu-fc, for 3x8x8 inputs; layers ``conv`` and ``fc`` take the methods."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16 * 6 * 6, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(torch.relu(self.stem(x)))).flatten(1)
        return self.head(torch.relu(self.fc(x)))


def contract_net(seed: int = 0) -> ContractNet:
    torch.manual_seed(seed)
    return ContractNet().eval()
