"""Pruning methods (the ``sparsify`` stage): masks of weights to drop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compression._registry import MethodConfig, check_real, register_method
from compression._weights import CompressedWeight

__all__ = ["MagnitudePruning"]


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
    w = weight.dense().flatten()
    k = round(config.sparsity * w.numel())
    if k == 0:
        return weight
    score = w.abs()
    if weight.mask is not None:
        score[~weight.mask.flatten()] = -1.0  # already pruned: counts towards k, stays pruned
    # Stable sort: among equal magnitudes the lower flat index is pruned first.
    pruned = torch.argsort(score, stable=True)[:k]
    mask = torch.ones(w.numel(), dtype=torch.bool)
    mask[pruned] = False
    mask = mask.reshape(weight.shape)
    if weight.mask is not None:
        mask &= weight.mask
    return CompressedWeight.from_dense(w.reshape(weight.shape), mask)
