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


class SelfAttention(nn.Module):
    """Multi-head self-attention laid out like transformers' BertSelfAttention (what HeadPruning expects)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.all_head_size = hidden
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, tokens, hidden) -> (batch * tokens, heads * head size)."""
        # -1 heads: pruned heads need no other change. Projections see 2-D inputs: torch-pruning 1.6 stops
        # mapping a conv's channels through flatten() once any Linear in the model outputs 3-D tensors.
        shape = (*x.shape[:-1], -1, self.attention_head_size)
        tokens = x.flatten(0, 1)
        q, k, v = (p(tokens).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value))
        return nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(0, 1).flatten(1)


class ContractNet(nn.Module):
    """conv-relu-conv-relu -> flatten -> fc-relu-fc, for 3x8x8 inputs, plus a self-attention branch over the 64
    pixels added to the logits; layers ``conv`` and ``fc`` take the methods, ``attn.query`` the head methods."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 16, 3)
        self.fc = nn.Linear(16 * 6 * 6, 24)
        self.head = nn.Linear(24, 5)
        self.embed = nn.Linear(3, 16)
        self.attn = SelfAttention(16, 2)
        self.proj = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.flatten(2).transpose(1, 2)
        attended = self.proj(self.attn(self.embed(pixels.flatten(0, 1)).view(*pixels.shape[:2], -1)))
        attended = attended.view(*pixels.shape[:2], -1).mean(1)
        x = torch.relu(self.conv(torch.relu(self.stem(x)))).flatten(1)
        return self.head(torch.relu(self.fc(x))) + attended


def contract_net(seed: int = 0) -> ContractNet:
    torch.manual_seed(seed)
    return ContractNet().eval()


def resnet18(num_labels: int = 1000) -> nn.Module:
    """transformers' ResNet-18 (the torchvision layout, 11.7 M parameters), random init."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
        num_labels=num_labels,
    )
    return ResNetForImageClassification(config).eval()


def tiny_bert(layers: int = 2) -> nn.Module:
    """A BERT encoder of ``layers`` layers, hidden 64, 4 heads, random init (seed 0)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()
