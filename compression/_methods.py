"""Built-in compression methods, imported in registration order.

``list_methods()`` lists them in this order: pruning, quantization, then
low-rank factorisation.
"""

from __future__ import annotations

from rayzor.compression._pruning import MagnitudePruning
from rayzor.compression._quantization import (
    BinaryQuantization,
    HalfPrecision,
    KMeansQuantization,
    TernaryQuantization,
    UniformQuantization,
)
from rayzor.compression._lowrank import LowRank

__all__ = [
    "MagnitudePruning",
    "UniformQuantization",
    "KMeansQuantization",
    "BinaryQuantization",
    "TernaryQuantization",
    "HalfPrecision",
    "LowRank",
]
