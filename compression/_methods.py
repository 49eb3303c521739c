"""Built-in compression methods: magnitude pruning and uniform quantization."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from compression._registry import MethodConfig, check_int, check_real, register_method
from compression._weights import CompressedWeight

__all__ = ["MagnitudePruning", "UniformQuantization"]


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


@dataclass(frozen=True)
class UniformQuantization(MethodConfig):
    """Symmetric, per-output-channel uniform quantization of the weights.

    Each output channel ``c`` gets ``scale_c = max|w_c| / qmax`` with
    ``qmax = 2**(bits-1) - 1`` and codes ``clamp(round(w / scale_c), -qmax,
    qmax)`` (Jacob et al. 2018, "Quantization and Training of Neural Networks
    for Efficient Integer-Arithmetic-Only Inference",
    https://arxiv.org/abs/1712.05877; symmetric, so no zero point). Pruned
    weights are not coded and stay exactly zero.

    Args:
        bits: Bits per code, 2..16. Full precision (32) is expressed by not
            quantizing the layer at all.
    """

    method: ClassVar[str] = "uniform_quantization"
    stage: ClassVar[str] = "quantize"

    bits: int

    def __post_init__(self) -> None:
        value = check_int(f"{self.method}.bits", self.bits, 2, 16,
                          " (leave the layer unquantized for 32-bit floats)")
        object.__setattr__(self, "bits", value)


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


@register_method(UniformQuantization)
def _uniform_quantize(module: nn.Module, weight: CompressedWeight, config: UniformQuantization) -> CompressedWeight:
    qmax = 2 ** (config.bits - 1) - 1
    w = weight.dense().reshape(weight.shape[0], -1)
    absmax = w.abs().amax(dim=1) if w.numel() else torch.zeros(w.shape[0])
    scale = absmax / qmax
    # An all-zero (or denormal) channel would divide by zero; any positive scale codes it as 0.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax).to(torch.int32).flatten()
    if weight.mask is not None:
        codes = codes[weight.mask.flatten()]
    return CompressedWeight(weight.shape, weight.mask, config.bits, codes=codes, scale=scale.contiguous())
