"""Search spaces: turn a PyTorch model into per-layer compression choices."""

from spaces._space import (
    ALLOWED_BITS,
    DEFAULT_METHODS,
    MAX_SPARSITY,
    QUANT_METHODS,
    CompressionSpace,
    GroupSpec,
    LayerInfo,
    inspect_layers,
)
from spaces._sensitivity import SensitivityRow, sensitivity, sensitivity_points

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "DEFAULT_METHODS", "QUANT_METHODS", "CompressionSpace", "GroupSpec", "LayerInfo",
           "SensitivityRow", "inspect_layers", "sensitivity", "sensitivity_points"]
