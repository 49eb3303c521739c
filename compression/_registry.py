"""Method configs and the registry that maps a method name to its handler.

Each compression method is a frozen config dataclass (a :class:`MethodConfig`
subclass) plus a handler registered for it with :func:`register_method`, in
the spirit of torchao's ``quantize_(model, Config())`` and
``register_quantize_module_handler``. The engine looks handlers up by config
class; serialised plans look config classes up by name.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

from rayzor.errors import ConfigError

__all__ = [
    "STAGES",
    "Handler",
    "MethodConfig",
    "register_method",
    "list_methods",
    "get_method",
    "get_handler",
    "build_dataclass",
    "check_int",
    "check_real",
]

#: Stages in the order the engine runs them on a layer: structure (remove
#: output channels / attention heads, every dependent layer repaired), factorize
#: (replace the module by smaller ones), sparsify (masks), then, after the optional
#: fine-tune, quantize (codes), then activation (inputs fake-quantized with
#: scales calibrated on the final weights).
STAGES: tuple[str, ...] = ("structure", "factorize", "sparsify", "quantize", "activation")

#: sparsify / quantize: ``handler(module, weight, config) -> weight``, where
#: ``weight`` is the layer's current representation and ``module`` read-only
#: context. factorize: ``handler(module, config) -> new_module``, a fresh
#: module computing (approximately) the same function. activation:
#: ``handler(module, config, stats) -> (new_module, spec)``, ``stats`` the
#: calibration statistics of the module's input. structure:
#: ``handler(context, layer, config) -> spec``, pruning ``context.model`` in
#: place (see :mod:`compression._structured`).
Handler = Callable[..., Any]

_REGISTRY: dict[str, tuple[type[MethodConfig], Handler]] = {}

C = TypeVar("C", bound=type)


class MethodConfig:
    """Base class of every method config.

    Subclasses are frozen dataclasses that set two class variables:
    ``method`` (the registry name, used in serialised plans) and ``stage``
    (one of :data:`STAGES`).
    """

    method: ClassVar[str]
    stage: ClassVar[str]

    def validate(self, layer: str, module: nn.Module) -> None:
        """Refuse this config for ``module`` before any work starts.

        Called by :meth:`compression.CompressionPlan.validate` (and so by
        :func:`compression.compress`) for every layer first, so an invalid
        combination (e.g. a rank above the layer's) fails when the plan is
        checked, not in the middle of a trial.

        Raises:
            ConfigError: Naming ``layer``, the field, the value and what is valid.
        """
        return None

    def to_dict(self) -> dict[str, Any]:
        """Return ``{"method": name, **fields}``, JSON-serialisable."""
        return {"method": self.method, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> MethodConfig:
        """Build the config named by ``d["method"]`` from its fields.

        Raises:
            ConfigError: ``d`` has no known ``method``, or unknown / missing
                fields, or invalid field values.
        """
        if not isinstance(d, Mapping):
            raise ConfigError("method config", d, "a mapping with a 'method' key")
        fields = dict(d)
        cls = get_method(fields.pop("method", None))
        return build_dataclass(cls, fields, cls.method)


def register_method(config_cls: type[MethodConfig]) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the implementation of ``config_cls``.

    Example::

        @register_method(MagnitudePruning)
        def _prune(module, weight, config): ...

    Raises:
        ConfigError: ``config_cls`` is not a frozen ``MethodConfig``
            dataclass, has an unknown stage, or its name is taken.
    """
    is_config = isinstance(config_cls, type) and issubclass(config_cls, MethodConfig)
    if not (is_config and dataclasses.is_dataclass(config_cls)):
        raise ConfigError("config_cls", config_cls, "a MethodConfig dataclass subclass")
    if not config_cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise ConfigError("config_cls", config_cls, "a frozen dataclass (plans must be hashable)")
    if getattr(config_cls, "stage", None) not in STAGES:
        raise ConfigError(f"{config_cls.__name__}.stage", getattr(config_cls, "stage", None), STAGES)
    name = getattr(config_cls, "method", None)
    if not isinstance(name, str) or not name or name in _REGISTRY:
        raise ConfigError(f"{config_cls.__name__}.method", name, f"a new method name (taken: {', '.join(_REGISTRY)})")

    def decorator(handler: Handler) -> Handler:
        _REGISTRY[name] = (config_cls, handler)
        return handler

    return decorator


def list_methods() -> list[str]:
    """Names of every registered method, in registration order."""
    return list(_REGISTRY)


def get_method(name: str) -> type[MethodConfig]:
    """Config class registered under ``name``.

    Raises:
        ConfigError: No method of that name; the message lists valid names.
    """
    try:
        return _REGISTRY[name][0]
    except (KeyError, TypeError):
        raise ConfigError("method", name, list_methods()) from None


def get_handler(config: MethodConfig) -> Handler:
    """Handler registered for ``config``'s class."""
    cls, handler = _REGISTRY.get(getattr(config, "method", None), (None, None))
    if cls is not type(config):
        raise ConfigError("method", config, list_methods())
    return handler  # type: ignore[return-value]


def build_dataclass(cls: C, fields: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``fields``, reporting bad keys as ConfigError."""
    known = [f.name for f in dataclasses.fields(cls)]
    for key in fields:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", fields[key], f"fields {', '.join(known)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    for key in required:
        if key not in fields:
            raise ConfigError(f"{prefix}.{key}", None, "a value (the field is required)")
    return cls(**fields)


def check_real(field: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``value`` as a float if it is a real number in the interval, else raise ConfigError."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(field, value, f"a number in {interval}")
    return float(value)


def check_int(field: str, value: Any, lo: int, hi: int | None = None, hint: str = "") -> int:
    """Return ``value`` as an int if it is an integer in ``[lo, hi]``, else raise ConfigError."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok:
        ok = lo <= int(value) and (hi is None or int(value) <= hi)
    if not ok:
        rng = f"an integer >= {lo}" if hi is None else f"an integer in {lo}..{hi}"
        raise ConfigError(field, value, rng + hint)
    return int(value)
