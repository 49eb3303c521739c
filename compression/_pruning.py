"""Pruning methods (the ``sparsify`` stage): masks of weights to drop."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from rayzor.compression._layers import compressible_layers
from rayzor.compression._registry import MethodConfig, check_int, check_real, register_method
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

if TYPE_CHECKING:
    from rayzor.compression._plan import CompressionPlan

__all__ = ["MagnitudePruning", "RandomPruning", "global_magnitude_plan"]


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


def global_magnitude_plan(model: nn.Module, sparsity: float, layers: Iterable[str] | None = None) -> CompressionPlan:
    """One magnitude threshold across layers, as per-layer :class:`MagnitudePruning`.

    The ``round(sparsity * total)`` weights of smallest absolute value over
    all ``layers`` together are pruned, so layers with many small weights
    lose more of them than others (global magnitude pruning, the strong
    simple baseline of Blalock et al. 2020, "What is the State of Neural
    Network Pruning?", https://arxiv.org/abs/2003.03033). Ties are broken
    by position: layer order, then flat index, lower first, which is also
    :class:`MagnitudePruning`'s rule, so each layer's mask is exactly its
    share of the global selection.

    Args:
        model: The model whose weights set the threshold.
        sparsity: Global fraction of the weights to zero, ``0 <= s < 1``.
        layers: Compressible layer names; default every compressible layer.

    Returns:
        A plan with ``MagnitudePruning(s_l)`` for every layer (``s_l`` may be 0).

    Raises:
        ConfigError: ``sparsity`` out of range, an unknown layer, or a
            threshold that would prune a whole layer (leave it out, or lower
            ``sparsity``).
    """
    from rayzor.compression._plan import CompressionPlan  # _plan imports the methods of this module

    sparsity = check_real("sparsity", sparsity, 0.0, 1.0, hi_open=True)
    available = compressible_layers(model)
    names = list(available) if layers is None else list(dict.fromkeys(layers))
    for name in names:
        if name not in available:
            raise ConfigError("layers", name, list(available))
    if not names:
        raise ConfigError("layers", [], "at least one compressible layer")
    magnitudes = [available[n].weight.detach().abs().flatten().cpu() for n in names]
    sizes = [m.numel() for m in magnitudes]
    k = round(sparsity * sum(sizes))
    pruned = torch.zeros(sum(sizes), dtype=torch.bool)
    pruned[torch.argsort(torch.cat(magnitudes), stable=True)[:k]] = True
    plan = {}
    for name, part, size in zip(names, pruned.split(sizes), sizes, strict=True):
        count = int(part.sum())
        if count == size:
            raise ConfigError("sparsity", sparsity, f"a value whose global threshold keeps some of {name!r} "
                                                    f"(or leave {name!r} out of layers)")
        plan[name] = (MagnitudePruning(count / size),)
    return CompressionPlan(plan)
