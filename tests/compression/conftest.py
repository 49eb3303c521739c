from __future__ import annotations

import pytest
import torch

from tests.compression.tiny_models import trained_tiny_net


@pytest.fixture
def model():
    return trained_tiny_net()


@pytest.fixture
def inputs():
    return torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def loader():
    g = torch.Generator().manual_seed(2)
    return [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(4)]
