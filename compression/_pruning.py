"""Pruning methods (the ``sparsify`` stage): masks of weights to drop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from rayzor.compression._registry import MethodConfig, check_int, check_real, register_method
from rayzor.compression._weights import CompressedWeight

__all__ = ["MagnitudePruning", "RandomPruning"]


@dataclass(frozen=True)
class MagnitudePruning(MethodConfig):
    """Unstructured, layer-wise magnitude pruning.

    Zeroes the ``round(sparsity * numel)`` weights of smallest absolute value
    (Han et al. 2015, "Learning both Weights and Connections for Efficient
    Neural Networks", https://arxiv.org/abs/1506.02626; the pruning step of
    Deep Compression, https://arxiv.org/abs/1510.00149). Ties are broken by
    position (lower flat index pruned first) so masks are reproducible.

    Args:
        sparsity: Fraction of the layer's weights to zero, ``0 <= s < 1``.
    """

    method: ClassVar[str] = "magnitude_pruning"
    stage: ClassVar[str] = "sparsify"

    sparsity: float

    def __post_init__(self) -> None:
        value = check_real(f"{self.method}.sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        object.__setattr__(self, "sparsity", value)  # normalise numpy scalars / ints for JSON and ==


@register_method(MagnitudePruning)
def _magnitude_prune(module: nn.Module, weight: CompressedWeight, config: MagnitudePruning) -> CompressedWeight:
    k = round(config.sparsity * weight.numel)
    if k == 0:
        return weight
    return _mask_of_lowest(weight, weight.dense().flatten().abs(), k)


def _mask_of_lowest(weight: CompressedWeight, score: torch.Tensor, k: int) -> CompressedWeight:
    """Prune the ``k`` lowest ``score`` positions (flat; already-pruned ones count towards ``k`` and stay pruned)."""
    w = weight.dense().flatten()
    if weight.mask is not None:
        score[~weight.mask.flatten()] = -1.0
    # Stable sort: among equal scores the lower flat index is pruned first.
    pruned = torch.argsort(score, stable=True)[:k]
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[pruned] = False
    mask = mask.reshape(weight.shape)
    if weight.mask is not None:
        mask &= weight.mask
    return CompressedWeight.from_dense(w.reshape(weight.shape), mask)


@dataclass(frozen=True)
class RandomPruning(MethodConfig):
    """Unstructured random pruning: the baseline every pruning criterion has to beat.

    Zeroes ``round(sparsity * numel)`` weights drawn uniformly at random
    from a generator seeded with ``seed``, so a plan always prunes the same
    weights. Liu et al. 2022, "The Unreasonable Effectiveness of Random
    Pruning", https://arxiv.org/abs/2202.02643, show how strong this
    baseline is with retraining at moderate sparsity.

    Args:
        sparsity: Fraction of the layer's weights to zero, ``0 <= s < 1``.
        seed: Seed of the draw, >= 0.
    """

    method: ClassVar[str] = "random_pruning"
    stage: ClassVar[str] = "sparsify"

    sparsity: float
    seed: int = 0

    def __post_init__(self) -> None:
        value = check_real(f"{self.method}.sparsity", self.sparsity, 0.0, 1.0, hi_open=True)
        object.__setattr__(self, "sparsity", value)
        object.__setattr__(self, "seed", check_int(f"{self.method}.seed", self.seed, 0))


@register_method(RandomPruning)
def _random_prune(module: nn.Module, weight: CompressedWeight, config: RandomPruning) -> CompressedWeight:
    k = round(config.sparsity * weight.numel)
    if k == 0:
        return weight
    generator = torch.Generator().manual_seed(config.seed)
    return _mask_of_lowest(weight, torch.rand(weight.numel, generator=generator), k)
