"""Search spaces: turn a PyTorch model into per-layer compression choices."""

from spaces._space import ALLOWED_BITS, MAX_SPARSITY, CompressionSpace, LayerInfo, inspect_layers

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "CompressionSpace", "LayerInfo", "inspect_layers"]
