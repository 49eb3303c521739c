"""Search spaces: turn a PyTorch model into per-layer compression choices."""

from spaces._space import (
    ALLOWED_BITS,
    DEFAULT_METHODS,
    MAX_SPARSITY,
    QUANT_METHODS,
    CompressionSpace,
    LayerInfo,
    inspect_layers,
)

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "DEFAULT_METHODS", "QUANT_METHODS", "CompressionSpace", "LayerInfo",
           "inspect_layers"]
