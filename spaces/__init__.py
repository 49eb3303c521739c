"""Search spaces: turn a PyTorch model into per-layer compression choices."""

from rayzor.spaces._introspect import (
    TINY_PARAMS,
    TINY_SHARE,
    LayerReport,
    default_exclusions,
    introspect,
    method_support,
    uncovered_params,
)
from rayzor.spaces._space import (
    ALLOWED_BITS,
    CHANNEL_IMPORTANCES,
    DEFAULT_METHODS,
    DEFAULT_PRUNING,
    DEFAULT_RANK_RATIO,
    FACTORIZATIONS,
    MAX_SPARSITY,
    NO_FACTORIZATION,
    PRUNINGS,
    QUANT_METHODS,
    CompressionSpace,
    GroupSpec,
    LayerInfo,
    inspect_layers,
)
from rayzor.spaces._sensitivity import SensitivityRow, sensitivity, sensitivity_points
from rayzor.spaces._students import (FAMILY_KEY, TEACHER, StudentChoice, StudentSpace, student_distributions,
                                     suggest_student_params)

__all__ = ["FAMILY_KEY", "TEACHER", "StudentChoice", "StudentSpace", "ALLOWED_BITS", "MAX_SPARSITY", "DEFAULT_METHODS", "QUANT_METHODS",
           "CHANNEL_IMPORTANCES", "DEFAULT_PRUNING", "DEFAULT_RANK_RATIO", "FACTORIZATIONS", "NO_FACTORIZATION", "PRUNINGS", "TINY_PARAMS", "TINY_SHARE",
           "CompressionSpace", "GroupSpec", "LayerInfo", "LayerReport", "SensitivityRow", "default_exclusions",
           "inspect_layers", "introspect", "method_support", "sensitivity", "sensitivity_points", "student_distributions",
           "suggest_student_params", "uncovered_params"]
