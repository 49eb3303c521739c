"""Search dimensions declared once; sampling, reading, writing and counting derive from the declarations.

As in Optuna, where every ``suggest_*`` funnels into one ``_suggest(name,
distribution)``, a dimension is a name and an Optuna distribution that owns
its rules (its values, its first value, whether it is fixed), plus the
condition under which it is sampled at all.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast

from optuna.distributions import (
    BaseDistribution,
    CategoricalChoiceType,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from rayzor.errors import ConfigError

__all__ = [
    "NEAREST_BITS",
    "Dimension",
    "Distribution",
    "SuggestsParams",
    "check",
    "count",
    "emit",
    "from_settings",
    "read",
    "sample",
    "suggest",
    "to_settings",
    "uniform",
]

#: ``Dimension.prefer`` of a bit-width: the choice nearest the bit-width a uniform plan asks for.
NEAREST_BITS = object()

#: The distributions a dimension takes: Optuna's Categorical, Int and Float.
Distribution: TypeAlias = CategoricalDistribution | IntDistribution | FloatDistribution


class SuggestsParams(Protocol):
    """What sampling asks of a trial: Optuna's public ``suggest_*`` API (an ``optuna.Trial``, or a wrapper)."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_categorical(self, name: str, choices: Sequence[CategoricalChoiceType]) -> CategoricalChoiceType: ...


def suggest(trial: SuggestsParams, name: str, distribution: BaseDistribution) -> Any:
    """Sample ``name`` from ``distribution`` through the trial's public ``suggest_*`` API.

    Raises:
        ConfigError: A distribution other than Optuna's Categorical, Int or Float.
    """
    d = distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    raise ConfigError(name, d, "an Int, Float or Categorical Optuna distribution")


@dataclass(frozen=True)
class Dimension:
    """One per-unit choice, ``<prefix>.<name>``.

    Attributes:
        name: Parameter name after the unit's prefix.
        distribution: Its values; a single one (one choice, equal range ends)
            makes the dimension fixed: never sampled nor counted.
        when: ``(name, values)``: sampled only while that earlier dimension of
            the unit takes one of ``values``; None = always.
        prefer: The value a uniform plan takes when it is a choice (else the
            first value); :data:`NEAREST_BITS` = the choice nearest its bits;
            a callable of the bits = values in order of preference (the
            bits the unit took, once its ``bits`` dimension has a value).
        note: Appended to the valid range in errors (e.g. ``" for low_rank"``).
        setting: The key of a layer's flat plan settings that holds the value
            (see :meth:`~rayzor.compression.CompressionPlan.from_settings`);
            None: the space maps the value itself.
        implied: The value a plan states by leaving ``setting`` out.
    """

    name: str
    distribution: Distribution
    when: tuple[str, tuple[Any, ...]] | None = None
    prefer: Any = None
    note: str = ""
    setting: str | None = None
    implied: Any = None

    @property
    def fixed(self) -> bool:
        return self.distribution.single()

    @property
    def first(self) -> Any:
        """The value of a fixed dimension, and of one a parameter dict leaves out."""
        d = self.distribution
        return d.choices[0] if isinstance(d, CategoricalDistribution) else d.low

    def active(self, values: Mapping[str, Any]) -> bool:
        return self.when is None or (self.when[0] in values and values[self.when[0]] in self.when[1])

    def contains(self, value: Any) -> bool:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return value in d.choices
        return isinstance(value, (int, float)) and not isinstance(value, bool) and d.low <= value <= d.high

    @property
    def valid(self) -> Any:
        d = self.distribution
        if isinstance(d, CategoricalDistribution) and not self.note:
            return list(d.choices)
        shown = list(d.choices) if isinstance(d, CategoricalDistribution) else [d.low, d.high]
        return f"within {shown}{self.note}"

    def plain(self, value: Any) -> Any:
        """``value`` as a plan stores it: a float of a float range, a Python int of an integer."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(self.distribution, FloatDistribution):
            return float(value)
        return int(value) if isinstance(value, numbers.Integral) else value

    def uniform_value(self, bits: int) -> Any:
        d = self.distribution
        if self.prefer is NEAREST_BITS and isinstance(d, CategoricalDistribution):
            # NEAREST_BITS is the preference of a bits dimension only, whose choices are bit-widths
            choices = cast("Sequence[int]", d.choices)
            return min(choices, key=lambda b: (abs(b - bits), b))
        if callable(self.prefer):
            return next((v for v in self.prefer(bits) if self.contains(v)), self.first)
        if self.prefer is not None and self.contains(self.prefer):
            return self.prefer
        return self.first


def sample(trial: SuggestsParams, prefix: str, dims: Sequence[Dimension]) -> dict[str, Any]:
    """Define-by-run: each active dimension's value, sampled unless fixed."""
    values: dict[str, Any] = {}
    for d in dims:
        if d.active(values):
            values[d.name] = d.first if d.fixed else suggest(trial, f"{prefix}.{d.name}", d.distribution)
    return values


def read(params: Mapping[str, Any], prefix: str, dims: Sequence[Dimension]) -> dict[str, Any]:
    """Each active dimension's value in ``params`` (its first value where left out).

    Raises:
        ConfigError: A value outside its dimension, as ``params['<prefix>.<name>']``.
    """
    values: dict[str, Any] = {}
    for d in dims:
        if d.active(values):
            key = f"{prefix}.{d.name}"
            value = params.get(key, d.first)
            if not d.contains(value):
                raise ConfigError(f"params[{key!r}]", value, d.valid)
            values[d.name] = value
    return values


def check(values: Mapping[str, Any], dims: Sequence[Dimension], field: Mapping[str, str]) -> None:
    """Refuse a value (e.g. read off a plan) outside its active dimension, named ``field[name]``."""
    for d in dims:
        if d.active(values) and not d.contains(values.get(d.name)):
            raise ConfigError(field[d.name], values.get(d.name), d.valid)


def emit(prefix: str, dims: Sequence[Dimension], values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``values``: those of active, sampled (not fixed) dimensions."""
    return {f"{prefix}.{d.name}": values[d.name] for d in dims if not d.fixed and d.name in values and d.active(values)}


def uniform(prefix: str, dims: Sequence[Dimension], bits: int) -> dict[str, Any]:
    """The parameters of the uniform plan at ``bits``: each dimension at its preferred value.

    Dimensions after the unit's own ``bits`` prefer by the bit-width it took
    (its candidate nearest ``bits``), e.g. the block size of those codes.
    """
    values: dict[str, Any] = {}
    for d in dims:
        if d.active(values):
            values[d.name] = d.uniform_value(values.get("bits", bits))
    return emit(prefix, dims, values)


def to_settings(dims: Sequence[Dimension], values: Mapping[str, Any]) -> dict[str, Any]:
    """The flat plan settings of the values of dimensions that declare a ``setting`` (implied ones left out)."""
    return {
        d.setting: d.plain(values[d.name])
        for d in dims
        if d.setting is not None and d.name in values and values[d.name] != d.implied
    }


def from_settings(dims: Sequence[Dimension], flat: Mapping[str, Any]) -> dict[str, Any]:
    """The values of dimensions that declare a ``setting``, read off one layer's flat plan settings."""
    return {d.name: d.plain(flat.get(d.setting, d.implied)) for d in dims if d.setting is not None}


def count(dims: Iterable[Dimension]) -> int:
    """Searched dimensions: fixed ones are not counted, one declared per condition counts once."""
    return len({d.name for d in dims if not d.fixed})
