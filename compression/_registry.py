"""Method configs and the registry that maps a method name to its handler.

Each compression method is a frozen config dataclass (a :class:`MethodConfig`
subclass) plus a handler registered for it with :func:`register_method`, in
the spirit of torchao's ``quantize_(model, Config())`` and
``register_quantize_module_handler``. The engine looks handlers up by config
class; serialised plans look config classes up by name. The registry imports
no method: each method module registers itself, and listings are sorted, so
nothing depends on the order modules are imported in.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

from torch import nn

from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = [
    "STAGES",
    "Handler",
    "StructureHandler",
    "FactorizeHandler",
    "SparsifyHandler",
    "QuantizeHandler",
    "ActivationHandler",
    "HANDLER_PROTOCOLS",
    "MethodConfig",
    "register_method",
    "unregister_method",
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

#: A handler of any stage; :data:`HANDLER_PROTOCOLS` gives each stage's calling convention.
Handler = Callable[..., Any]


class StructureHandler(Protocol):
    """``structure`` stage: prune ``context.model`` in place and return the replayable spec.

    ``context`` is a :class:`compression._structured.StructureContext` (the
    model, its dependency graph and the example input).
    """

    def __call__(self, context: Any, layer: str, config: MethodConfig, /) -> dict[str, Any]: ...


class FactorizeHandler(Protocol):
    """``factorize`` stage: a fresh module computing (approximately) the same function, and its spec."""

    def __call__(self, module: nn.Module, config: MethodConfig, /) -> tuple[nn.Module, dict[str, Any]]: ...


class SparsifyHandler(Protocol):
    """``sparsify`` stage: the layer's weight with a mask; ``module`` is read-only context."""

    def __call__(self, module: nn.Module, weight: CompressedWeight, config: MethodConfig, /) -> CompressedWeight: ...


class QuantizeHandler(Protocol):
    """``quantize`` stage: the layer's weight as codes; ``module`` is read-only context.

    ``stats`` is the layer's :class:`compression.LayerStats` (input second
    moments from calibration data) when the config class sets
    ``calibrated = True``, else None.
    """

    def __call__(
        self, module: nn.Module, weight: CompressedWeight, config: MethodConfig, stats: Any, /
    ) -> CompressedWeight: ...


class ActivationHandler(Protocol):
    """``activation`` stage: the module wrapped to quantize its input, and its spec.

    ``stats`` are the calibration statistics of the module's input.
    """

    def __call__(self, module: nn.Module, config: MethodConfig, stats: Any, /) -> tuple[nn.Module, dict[str, Any]]: ...


#: The calling convention of each stage's handlers, checked by :func:`register_method`.
HANDLER_PROTOCOLS: dict[str, type] = {
    "structure": StructureHandler,
    "factorize": FactorizeHandler,
    "sparsify": SparsifyHandler,
    "quantize": QuantizeHandler,
    "activation": ActivationHandler,
}

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
    #: A quantize-stage method that needs the layer's calibration statistics (GPTQ, AWQ, SmoothQuant).
    calibrated: ClassVar[bool] = False

    def rounding(self) -> MethodConfig:
        """The data-free config a calibrated method rounds like where no statistics exist (QAT steps); itself here."""
        return self

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


def _expected_parameters(stage: str) -> list[inspect.Parameter]:
    """Positional parameters of the stage's protocol ``__call__`` (without ``self``)."""
    return list(inspect.signature(HANDLER_PROTOCOLS[stage].__call__).parameters.values())[1:]


def _check_handler(config_cls: type[MethodConfig], handler: Any) -> None:
    """Refuse a handler that cannot be called the way the engine calls its stage's handlers."""
    expected = _expected_parameters(config_cls.stage)
    wanted = f"a {config_cls.stage} handler ({', '.join(p.name for p in expected)})"
    name = f"handler of {config_cls.__name__}"
    if not callable(handler):
        raise ConfigError(name, handler, wanted)
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return
    label = f"{getattr(handler, '__qualname__', handler)}{signature}"
    try:
        signature.bind(*expected)  # the engine passes exactly these, positionally
    except TypeError:
        raise ConfigError(f"{name} {getattr(handler, '__qualname__', handler)!s}", label, wanted) from None


def register_method(config_cls: type[MethodConfig]) -> Callable[[Handler], Handler]:
    """Register the decorated handler as the implementation of ``config_cls``.

    The handler must take the positional arguments of its stage's protocol
    (:data:`HANDLER_PROTOCOLS`, e.g. :class:`SparsifyHandler`).

    Example::

        @register_method(MagnitudePruning)
        def _prune(module, weight, config): ...

    Raises:
        ConfigError: ``config_cls`` is not a frozen ``MethodConfig``
            dataclass, has an unknown stage, or its name is taken; or the
            handler's parameters do not match its stage's protocol.
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
        raise ConfigError(
            f"{config_cls.__name__}.method", name, f"a new method name (taken: {', '.join(list_methods())})"
        )

    def decorator(handler: Handler) -> Handler:
        _check_handler(config_cls, handler)
        _REGISTRY[name] = (config_cls, handler)
        return handler

    return decorator


def unregister_method(config_cls: type[MethodConfig]) -> None:
    """Remove ``config_cls`` from the registry (e.g. a method a test registered).

    Raises:
        ConfigError: ``config_cls`` is not the class registered under its name.
    """
    name = getattr(config_cls, "method", None)
    if _REGISTRY.get(name, (None,))[0] is not config_cls:
        raise ConfigError("config_cls", config_cls, "a registered MethodConfig class")
    del _REGISTRY[name]


def list_methods(stage: str | None = None) -> list[str]:
    """Names of the registered methods, sorted by stage (in :data:`STAGES` order), then name.

    Args:
        stage: Only the methods of this stage; ``None`` for all.

    Raises:
        ConfigError: ``stage`` is not one of :data:`STAGES`.
    """
    if stage is not None and stage not in STAGES:
        raise ConfigError("stage", stage, STAGES)
    entries = [
        (STAGES.index(cls.stage), name) for name, (cls, _) in _REGISTRY.items() if stage is None or cls.stage == stage
    ]
    return [name for _, name in sorted(entries)]


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
    """Handler registered for ``config``'s class, callable as its stage's protocol says.

    Raises:
        ConfigError: ``config``'s class is not registered.
    """
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
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
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
