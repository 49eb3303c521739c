"""Search spaces: turn a PyTorch model into per-layer compression choices, sampled define-by-run by Optuna."""

from rayzor.spaces._config import SpaceConfig
from rayzor.spaces._dimensions import Dimension
from rayzor.spaces._introspect import (
    TINY_PARAMS,
    TINY_SHARE,
    LayerInfo,
    LayerReport,
    default_exclusions,
    inspect_layers,
    introspect,
    method_support,
    uncovered_params,
)
from rayzor.spaces._sensitivity import SensitivityRow, sensitivity, sensitivity_points
from rayzor.spaces._settings import (
    ACT_BITS,
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
    GroupSpec,
    SpaceSettings,
)
from rayzor.spaces._space import CompressionSpace
from rayzor.spaces._students import (
    FAMILY_KEY,
    TEACHER,
    StudentChoice,
    StudentSpace,
    student_distributions,
    suggest_student_params,
)
from rayzor.spaces._targets import DEFAULT_TARGET, RUNTIME_DEFAULTS, RUNTIME_METHODS, TARGETS, check_target
from rayzor.spaces._units import ChannelUnit, HeadUnit, Unit

__all__ = [
    "DEFAULT_TARGET",
    "RUNTIME_DEFAULTS",
    "RUNTIME_METHODS",
    "TARGETS",
    "check_target",
    "ACT_BITS",
    "ALLOWED_BITS",
    "CHANNEL_IMPORTANCES",
    "DEFAULT_METHODS",
    "DEFAULT_PRUNING",
    "DEFAULT_RANK_RATIO",
    "FACTORIZATIONS",
    "FAMILY_KEY",
    "MAX_SPARSITY",
    "NO_FACTORIZATION",
    "PRUNINGS",
    "QUANT_METHODS",
    "TEACHER",
    "TINY_PARAMS",
    "TINY_SHARE",
    "ChannelUnit",
    "CompressionSpace",
    "Dimension",
    "GroupSpec",
    "HeadUnit",
    "LayerInfo",
    "LayerReport",
    "SensitivityRow",
    "SpaceConfig",
    "SpaceSettings",
    "StudentChoice",
    "StudentSpace",
    "Unit",
    "default_exclusions",
    "inspect_layers",
    "introspect",
    "method_support",
    "sensitivity",
    "sensitivity_points",
    "student_distributions",
    "suggest_student_params",
    "uncovered_params",
]
