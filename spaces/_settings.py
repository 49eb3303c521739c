"""User settings of a search space: the pydantic models that validate them, and their limits."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from rayzor.compression import GROUP_SIZES, get_method, list_methods
from rayzor.errors import ConfigError
from rayzor.spaces._introspect import TINY_PARAMS, TINY_SHARE

__all__ = [
    "ACT_BITS",
    "ALLOWED_BITS",
    "CHANNEL_IMPORTANCES",
    "DEFAULT_METHODS",
    "DEFAULT_PRUNING",
    "DEFAULT_RANK_RATIO",
    "GROUP_SIZES",
    "FACTORIZATIONS",
    "MAX_SPARSITY",
    "NO_FACTORIZATION",
    "PER_CHANNEL",
    "PRUNINGS",
    "QUANT_METHODS",
    "GroupSpec",
    "SpaceSettings",
    "max_bits",
    "method_options",
    "takes_bits",
    "takes_group_size",
    "validated",
]

#: Bit-widths the engine can pack; 32 leaves the layer's weights untouched (fp32).
ALLOWED_BITS: tuple[int, ...] = (*range(2, 17), 32)
#: Activation bit-widths a space may search (``<layer>.act_bits``); 32 leaves a layer's inputs in fp32.
ACT_BITS: tuple[int, ...] = (*range(2, 17), 32)
#: Highest per-layer sparsity a space may ask for: beyond it a layer is gone.
MAX_SPARSITY = 0.95
#: Factorizations a space chooses among per layer (``<layer>.factorize``): config name -> registered method.
#: The registered names are accepted too.
FACTORIZATIONS: dict[str, str] = {"lowrank": "low_rank", "tucker2": "tucker2"}
#: Pruning criteria a space chooses among per layer (``<layer>.prune``): config name -> registered method.
PRUNINGS: dict[str, str] = {"magnitude": "magnitude_pruning", "random": "random_pruning"}
#: Channel importances a searched ChannelPruning may rank by. Taylor is left out: it needs
#: calibration batches with gradients, which a trial without fine-tuning does not load.
CHANNEL_IMPORTANCES: tuple[str, ...] = ("l1", "l2", "random")
#: The quantization methods a space chooses among by default: uniform only.
DEFAULT_METHODS: tuple[str, ...] = ("uniform_quantization",)
#: Quantize-stage methods a space can choose among, per layer.
QUANT_METHODS: tuple[str, ...] = tuple(m for m in list_methods() if get_method(m).stage == "quantize")
#: The default pruning criterion: magnitude, implied by ``sparsity`` in a plan's settings.
DEFAULT_PRUNING: tuple[str, ...] = ("magnitude_pruning",)
#: rank_ratio range of a chosen factorization when the config names none.
DEFAULT_RANK_RATIO: tuple[float, float] = (0.1, 0.5)
#: ``<layer>.group_size`` choice of one scale per output channel (no blocks): int8 Linear layers then run on
#: onnxruntime's dynamic int8 kernels under ``accuracy_level: 4``.
PER_CHANNEL = 0
#: Value of ``<layer>.factorize`` that leaves the layer whole.
NO_FACTORIZATION = "none"


def takes_bits(method: str) -> bool:
    """Whether the quantization ``method`` has a ``bits`` field (uniform, k-means; not binary, ternary, fp16)."""
    cls = get_method(method)
    assert dataclasses.is_dataclass(cls)  # register_method takes MethodConfig dataclasses only
    return "bits" in cls.__dataclass_fields__


def takes_group_size(method: str) -> bool:
    """Whether the quantization ``method`` can quantize block-wise (a ``group_size`` field: uniform, GPTQ, AWQ)."""
    cls = get_method(method)
    assert dataclasses.is_dataclass(cls)
    return "group_size" in cls.__dataclass_fields__


def max_bits(method: str) -> int:
    """The widest ``bits`` the method's config accepts (its ``max_bits``); 32 for a method without one."""
    return getattr(get_method(method), "max_bits", 32)


def canonical_names(values: Sequence[str], table: dict[str, str]) -> tuple[str, ...]:
    """Registered method names of ``values`` (config or registered names), in order, without repeats.

    Raises:
        ValueError: An unknown name; the message lists the valid ones.
    """
    known = {**table, **{v: v for v in table.values()}}
    bad = [v for v in values if v not in known]
    if bad:
        raise ValueError(f"names from {', '.join(table)} (or {', '.join(table.values())}); unknown: {bad}")
    return tuple(dict.fromkeys(known[v] for v in values))


def as_range(v: tuple[float, float] | float | None) -> tuple[float, float] | None:
    """A validated range setting (``channels``, ``heads``, ``rank_ratio``), typed as validation leaves it.

    Its field's validator turns one number into ``(v, v)``: a validated model holds a pair or None there, the
    field's annotation keeps ``float`` only as an input it accepts.
    """
    return cast("tuple[float, float] | None", v)


def _fraction_range(v: Sequence[float] | float, what: str) -> tuple[float, float]:
    """``(low, high)`` fractions of ``what`` removed, from a range or one number, with ``0 <= low <= high < 1``."""
    values = (v, v) if isinstance(v, (int, float)) else tuple(v)
    low, high = (float(x) for x in values) if len(values) == 2 else (float("nan"),) * 2
    if not 0.0 <= low <= high < 1.0:  # nan fails it too
        raise ValueError(f"[low, high] with 0 <= low <= high < 1 (fractions of {what} removed), or one number")
    return (low, high)


def channel_range(v: Sequence[float] | float) -> tuple[float, float]:
    """``(low, high)`` of a channels setting (a range or one number), each a fraction of output channels removed.

    Raises:
        ValueError: Outside ``0 <= low <= high < 1`` (removing every channel removes the layer).
    """
    return _fraction_range(v, "output channels")


def head_range(v: Sequence[float] | float) -> tuple[float, float]:
    """``(low, high)`` of a heads setting (a range or one number), each a fraction of attention heads removed.

    Raises:
        ValueError: Outside ``0 <= low <= high < 1`` (HeadPruning keeps at least one head).
    """
    return _fraction_range(v, "attention heads")


def act_bits_tuple(v: Sequence[int] | int) -> tuple[int, ...]:
    """Sorted candidate activation bit-widths of an act_bits setting (a list or one number); empty = off.

    Raises:
        ValueError: A value outside 2..16 and 32, or not an integer.
    """
    values = (v,) if isinstance(v, int) else tuple(v)
    if any(isinstance(b, bool) or not isinstance(b, int) or b not in ACT_BITS for b in values):
        raise ValueError("a list of activation bit-widths from 2..16 and 32 (32 = fp32 inputs), or [] for none")
    return tuple(sorted(set(values)))


def rank_range(v: Sequence[float] | float) -> tuple[float, float]:
    """``(low, high)`` of a rank_ratio setting (a range or one number), fractions of each layer's full rank.

    Raises:
        ValueError: Outside ``0 < low <= high <= 1``.
    """
    values = (v, v) if isinstance(v, (int, float)) else tuple(v)
    low, high = (float(x) for x in values) if len(values) == 2 else (float("nan"),) * 2
    if not 0.0 < low <= high <= 1.0:  # nan fails it too
        raise ValueError("[low, high] with 0 < low <= high <= 1 (fractions of the full rank), or one number")
    return (low, high)


class _Fields(BaseModel):
    """Validators of the fields :class:`GroupSpec` and :class:`SpaceSettings` share: each setting checked here only."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: How a message says that one number fixes a range or list (a group's settings accept one).
    _one: ClassVar[str] = ""

    @field_validator("sparsity", check_fields=False)
    @classmethod
    def _sparsity_range(cls, v: tuple[float, float] | float | None) -> tuple[float, float] | None:
        if v is None:
            return None
        low, high = (float(v), float(v)) if isinstance(v, (int, float)) else v
        if not (0.0 <= low <= high <= MAX_SPARSITY):
            raise ValueError(f"[low, high] with 0 <= low <= high <= {MAX_SPARSITY}{cls._one and ', ' + cls._one}")
        return (low, high)

    @field_validator("bits", check_fields=False)
    @classmethod
    def _bits_tuple(cls, v: tuple[int, ...] | int | None) -> tuple[int, ...] | None:
        if v is None:
            return None
        bits = (v,) if isinstance(v, int) else v
        if not bits or any(b not in ALLOWED_BITS for b in bits):
            raise ValueError(f"a non-empty list of bit-widths from 2..16 and 32{cls._one and ', ' + cls._one}")
        return tuple(sorted(set(bits)))

    @field_validator("methods", check_fields=False)
    @classmethod
    def _methods_known(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (not v or any(m not in QUANT_METHODS for m in v)):
            raise ValueError(f"a non-empty list of {', '.join(QUANT_METHODS)}")
        return None if v is None else tuple(dict.fromkeys(v))

    @field_validator("method_options", check_fields=False)
    @classmethod
    def _method_options(cls, v: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        return None if v is None else method_options(v)

    @field_validator("group_size", check_fields=False)
    @classmethod
    def _group_sizes(cls, v: tuple[int, ...] | int | None) -> tuple[int, ...] | None:
        if v is None:
            return None
        sizes = (v,) if isinstance(v, int) else v
        if any(isinstance(g, bool) or g not in (PER_CHANNEL, *GROUP_SIZES) for g in sizes):
            raise ValueError(
                f"a list of block sizes from {', '.join(map(str, GROUP_SIZES))}, or 0 for one scale per output "
                f"channel as a choice ([] = per channel only){cls._one and ', ' + cls._one}"
            )
        return tuple(sorted(set(sizes)))

    @field_validator("channels", check_fields=False)
    @classmethod
    def _channels_range(cls, v: tuple[float, float] | float | None) -> tuple[float, float] | None:
        return None if v is None else channel_range(v)

    @field_validator("rank_ratio", check_fields=False)
    @classmethod
    def _rank_range(cls, v: tuple[float, float] | float | None) -> tuple[float, float] | None:
        return None if v is None else rank_range(v)

    @field_validator("heads", check_fields=False)
    @classmethod
    def _heads_range(cls, v: tuple[float, float] | float | None) -> tuple[float, float] | None:
        return None if v is None else head_range(v)

    @field_validator("act_bits", mode="before", check_fields=False)
    @classmethod
    def _act_bits(cls, v: object) -> tuple[int, ...] | None:
        # before pydantic's coercion, so that 8.0 or "8" is refused like a bad width
        return None if v is None else act_bits_tuple(v)  # type: ignore[arg-type]

    @field_validator("factorize", check_fields=False)
    @classmethod
    def _factorizations(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else canonical_names(v, FACTORIZATIONS)

    @field_validator("pruning", check_fields=False)
    @classmethod
    def _prunings(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError(f"a non-empty list of {', '.join(PRUNINGS)}")
        return None if v is None else canonical_names(v, PRUNINGS)


class GroupSpec(_Fields):
    """One group of layers in a space config (``space.groups`` in YAML).

    Layers whose name matches one of ``match`` (``fnmatch`` globs on
    ``model.named_modules()`` names) take the group's settings instead of
    the space-wide ones; a setting left out is inherited. A number instead of
    a range or list fixes that dimension (it is not searched).

    Attributes:
        name: Group name; a tied group's parameters are ``<name>.sparsity``,
            ``<name>.bits`` and ``<name>.quant``.
        match: Globs, e.g. ``encoder.layer.*.attention.*``.
        tie: One sampled value per dimension for the whole group, instead
            of one per layer.
        sparsity: ``[low, high]`` or a fixed sparsity.
        bits: Candidate bit-widths or a fixed one.
        methods: Quantization methods chosen among, from :data:`QUANT_METHODS`.
        channels: ``[low, high]`` or a fixed fraction of output channels
            removed (ChannelPruning); 0 = none.
        factorize: Factorizations chosen among with ``"none"``
            (``lowrank``, ``tucker2``); ``[]`` = none in this group.
        rank_ratio: ``[low, high]`` or a fixed rank_ratio of a chosen factorization.
        pruning: Pruning criteria chosen among (``magnitude``, ``random``).
        heads: ``[low, high]`` or a fixed fraction of attention heads removed
            (HeadPruning) on the group's BERT-style ``query`` layers; 0 = none.
        act_bits: Candidate activation bit-widths (ActivationQuantization; 32 =
            fp32 inputs) or a fixed one; ``[]`` = none in this group.
        group_size: Candidate block sizes of block-wise quantization or a
            fixed one; ``[]`` = one scale per output channel.
        method_options: Fixed fields of the quantization methods in this
            group, e.g. ``{uniform_quantization: {symmetric: false}}``.
    """

    name: str = Field(min_length=1, pattern=r"^\S+$", description="group name; tied parameters are <name>.<dim>")
    match: tuple[str, ...] = Field(min_length=1, description="fnmatch globs on module names")
    tie: bool = Field(False, description="one sampled value per dimension for the whole group")
    sparsity: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed value")
    bits: tuple[int, ...] | int | None = Field(None, description="candidate bit-widths or a fixed one")
    methods: tuple[str, ...] | None = Field(None, description="quantization methods chosen among")
    channels: tuple[float, float] | float | None = Field(
        None, description="[low, high] or a fixed fraction of output channels removed"
    )
    factorize: tuple[str, ...] | None = Field(None, description="factorizations chosen among with 'none'")
    rank_ratio: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed rank_ratio")
    pruning: tuple[str, ...] | None = Field(None, description="pruning criteria chosen among")
    heads: tuple[float, float] | float | None = Field(
        None, description="[low, high] or a fixed fraction of attention heads removed"
    )
    act_bits: tuple[int, ...] | int | None = Field(None, description="candidate activation bit-widths or a fixed one")
    group_size: tuple[int, ...] | int | None = Field(None, description="candidate block sizes or a fixed one")
    method_options: dict[str, dict[str, Any]] | None = Field(
        None, description="fixed fields of the quantization methods in this group"
    )

    _one: ClassVar[str] = "or one of them"


class SpaceSettings(_Fields):
    """What a search space asks for, validated: the fields of :class:`SpaceConfig` (YAML ``space:``)."""

    sparsity: tuple[float, float] = Field((0.0, MAX_SPARSITY), description="[low, high] per-layer sparsity")
    bits: tuple[int, ...] = Field((2, 3, 4, 5, 6, 8, 16, 32), description="candidate weight bit-widths; 32 = fp32")
    methods: tuple[str, ...] = Field(
        DEFAULT_METHODS,
        description=f"quantization methods chosen among per layer (<layer>.quant); from {', '.join(QUANT_METHODS)}",
    )
    groups: tuple[GroupSpec, ...] = Field(
        (),
        description="layer groups (fnmatch globs on module names) with their own "
        "settings; tie: true shares one sampled value per dimension",
    )
    exclude: tuple[str, ...] = Field((), description="globs of layers left out of the search (never compressed)")
    default_exclusions: bool = Field(
        True,
        description="also leave out the first and last layer (unless an Embedding) and tiny layers "
        f"(< {TINY_PARAMS} weights and < {TINY_SHARE:.0%} of the compressible ones); a group's glob or include keeps one",
    )
    include: tuple[str, ...] = Field((), description="globs of layers searched even where a default exclusion applies")
    channels: tuple[float, float] | float | None = Field(
        None,
        description="[low, high] (or a fixed) fraction of output channels removed per layer (<layer>.channels, "
        "ChannelPruning), only on layers whose channels can go without changing the model's output; off by default",
    )
    channel_importance: Literal[CHANNEL_IMPORTANCES] = Field(  # type: ignore[valid-type]
        "l1", description="how channel and head pruning rank channels / heads: l1, l2 (group weight norms) or random"
    )
    factorize: tuple[str, ...] = Field(
        (),
        description="factorizations chosen among with 'none' per layer (<layer>.factorize), where they apply: "
        f"{', '.join(FACTORIZATIONS)}; off by default",
    )
    rank_ratio: tuple[float, float] | float | None = Field(
        None,
        description="[low, high] (or a fixed) rank_ratio of a chosen factorization (<layer>.rank_ratio, sampled "
        f"only then), capped per layer where the rank stops saving parameters; default {list(DEFAULT_RANK_RATIO)}",
    )
    pruning: tuple[str, ...] = Field(
        DEFAULT_PRUNING,
        description="pruning criteria chosen among per layer "
        f"(<layer>.prune when more than one): {', '.join(PRUNINGS)}",
    )
    heads: tuple[float, float] | float | None = Field(
        None,
        description="[low, high] (or a fixed) fraction of attention heads removed (<layer>.heads, HeadPruning) "
        "on the query Linear of each BERT-style self-attention where a probe prune succeeds; off by default",
    )
    act_bits: tuple[int, ...] = Field(
        (),
        description="candidate activation bit-widths per Linear / Conv layer (<layer>.act_bits, "
        "ActivationQuantization calibrated on a few training batches; 32 = fp32 inputs); off by default",
    )

    group_size: tuple[int, ...] = Field(
        (),
        description="candidate block sizes of block-wise weight quantization (<layer>.group_size, with uniform, "
        "gptq and awq: one fp16 scale per block of inputs); 0 = one scale per output channel, as a choice; "
        "[] = per channel only",
    )
    method_options: dict[str, dict[str, Any]] = Field(
        {},
        description="fixed (not searched) fields of the quantization methods, per method, e.g. "
        "{uniform_quantization: {symmetric: false, clipping: mse}}; the searched ones (bits, group_size) are refused",
    )

    @model_validator(mode="after")
    def _combinations(self) -> SpaceSettings:
        """Settings valid alone but not together: two groups of one name, bits too wide for a method, rank_ratio
        without factorize."""
        errors = []
        names = [g.name for g in self.groups]
        errors += [
            _error(("groups", i, "name"), name, "a name no other group has")
            for i, name in enumerate(names)
            if name in names[:i]
        ]
        rank_ratio = as_range(self.rank_ratio)
        if rank_ratio is not None and not self.factorize and not any(g.factorize for g in self.groups):
            errors.append(
                _error(
                    ("rank_ratio",),
                    list(rank_ratio),
                    "a range only with space.factorize (or a "
                    "group's factorize): it is sampled only for layers that choose a factorization",
                )
            )
        # a group's one bit-width is validated into a tuple as well (see _bits_tuple)
        scopes: list[tuple[tuple[str | int, ...], tuple[int, ...], tuple[str, ...]]] = [((), self.bits, self.methods)]
        scopes += [
            (("groups", i), cast("tuple[int, ...]", g.bits or self.bits), g.methods or self.methods)
            for i, g in enumerate(self.groups)
        ]
        for i, (loc, bits, methods) in enumerate(scopes):
            group = None if i == 0 else self.groups[i - 1]
            # a group's one block size is validated into a tuple as well (see _group_sizes)
            sizes = cast(
                "tuple[int, ...]", self.group_size if group is None or group.group_size is None else group.group_size
            )
            wide = [b for b in bits if 8 < b < 32]
            if any(sizes) and wide and any(takes_group_size(m) for m in methods):
                errors.append(
                    _error(
                        (*loc, "bits"),
                        list(bits),
                        f"bit-widths up to 8 (and 32) with a group_size: block-wise codes are 2..8 bits; {wide} are too wide",
                    )
                )
            for m in methods:
                too_wide = [b for b in bits if b != 32 and b > max_bits(m)]
                if takes_bits(m) and too_wide:
                    errors.append(
                        _error(
                            (*loc, "bits"),
                            list(bits),
                            f"bit-widths up to {max_bits(m)} (and 32) with "
                            f"{m} among the methods; {too_wide} are too wide",
                        )
                    )
                    break
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors[:1])
        return self

    def resolved(self, group: GroupSpec | None) -> SpaceSettings:
        """The settings of ``group`` (None: the space's), each one it leaves out inherited from the space."""
        if group is None:
            return self
        own = {
            f: v
            for f in GroupSpec.model_fields
            if f in type(self).model_fields and (v := getattr(group, f)) is not None
        }
        return self.model_copy(update=own)


#: Method fields a space searches itself, so ``method_options`` cannot fix them.
_SEARCHED_FIELDS: frozenset[str] = frozenset({"bits", "group_size"})


def method_options(options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``space.method_options`` checked: quantization methods, each with fields its config has and accepts.

    Each method's options are tried on its config (at 8 bits, the widest
    block-wise width), so a bad value is refused with the config's own rule
    before any trial runs.

    Raises:
        ValueError: The first unknown method, unknown or searched field, or bad value.
    """
    out: dict[str, dict[str, Any]] = {}
    for method, fields in options.items():
        if method not in QUANT_METHODS:
            raise ValueError(f"keys from {', '.join(QUANT_METHODS)}; got {method!r}")
        if not isinstance(fields, Mapping):
            raise ValueError(f"{method}: a mapping of its config fields to values; got {fields!r}")
        config = get_method(method)
        every = {f.name for f in dataclasses.fields(cast(Any, config))}  # method configs are frozen dataclasses
        names = every - _SEARCHED_FIELDS
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(
                f"{method}: fields from {', '.join(sorted(names))} (bits and group_size are searched); got {unknown}"
            )
        try:
            config(**({"bits": 8} if "bits" in every else {}), **fields)
        except ConfigError as e:
            raise ValueError(str(e)) from None  # names the method's field, the value and what is valid
        out[method] = dict(fields)
    return out


def _error(loc: tuple[Any, ...], value: Any, valid: str) -> InitErrorDetails:
    return InitErrorDetails(
        type=PydanticCustomError("space_combination", "{valid}", {"valid": valid}), loc=loc, input=value
    )


def validated(data: Mapping[str, Any], prefix: str = "space") -> SpaceSettings:
    """``data`` validated into :class:`SpaceSettings`.

    Raises:
        ConfigError: The first error, with the field as ``space.<field>``
            (a group as ``space.groups[<name>]``) and the value as given.
    """
    try:
        return SpaceSettings.model_validate(dict(data))
    except ValidationError as exc:
        error = exc.errors()[0]
    loc = tuple(error["loc"])
    parts = [prefix]
    for prev, part in zip((None, *loc), loc):
        if isinstance(part, int):
            if prev == "groups":  # name the group, as the model-dependent errors do
                group = list(data["groups"])[part]
                name = (
                    group.name
                    if isinstance(group, GroupSpec)
                    else (group.get("name") if isinstance(group, Mapping) else None)
                )
                parts[-1] += f"[{name if isinstance(name, str) and name else part}]"
            continue
        parts.append(str(part))
    value = error.get("input")
    value = list(value) if isinstance(value, tuple) else value
    valid = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
    raise ConfigError(".".join(parts), value, valid) from None
