"""Declarative layer groups: glob-matched layers that share settings, optionally one sampled value."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayzor.errors import ConfigError

__all__ = ["ACT_BITS", "ALLOWED_BITS", "CHANNEL_IMPORTANCES", "FACTORIZATIONS", "MAX_SPARSITY", "PRUNINGS",
           "ChannelUnit", "GroupSpec", "HeadUnit", "Unit", "act_bits_tuple", "canonical_names", "channel_range",
           "head_range", "match_layers", "rank_range"]

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


class RangeFields(BaseModel):
    """The optional ratio-range fields that :class:`GroupSpec` and ``search.SpaceConfig`` share, validated once."""

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


class GroupSpec(RangeFields):
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
        methods: Quantization methods chosen among.
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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^\S+$", description="group name; tied parameters are <name>.<dim>")
    match: tuple[str, ...] = Field(min_length=1, description="fnmatch globs on module names")
    tie: bool = Field(False, description="one sampled value per dimension for the whole group")
    sparsity: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed value")
    bits: tuple[int, ...] | int | None = Field(None, description="candidate bit-widths or a fixed one")
    methods: tuple[str, ...] | None = Field(None, description="quantization methods chosen among")
    channels: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed fraction of "
                                                        "output channels removed")
    factorize: tuple[str, ...] | None = Field(None, description="factorizations chosen among with 'none'")
    rank_ratio: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed rank_ratio")
    pruning: tuple[str, ...] | None = Field(None, description="pruning criteria chosen among")
    heads: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed fraction of "
                                                     "attention heads removed")
    act_bits: tuple[int, ...] | int | None = Field(None, description="candidate activation bit-widths or a fixed one")

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: tuple[float, float] | float | None) -> tuple[float, float] | None:
        if v is None:
            return None
        low, high = (float(v), float(v)) if isinstance(v, (int, float)) else v
        if not (0.0 <= low <= high <= MAX_SPARSITY):
            raise ValueError(f"[low, high] with 0 <= low <= high <= {MAX_SPARSITY}, or one number in that range")
        return (low, high)

    @field_validator("bits")
    @classmethod
    def _bits_tuple(cls, v: tuple[int, ...] | int | None) -> tuple[int, ...] | None:
        # Widths too wide for a method (k-means: 8) are refused with the methods, by CompressionSpace.
        if v is None:
            return None
        bits = (v,) if isinstance(v, int) else v
        if not bits or any(b not in ALLOWED_BITS for b in bits):
            raise ValueError("a non-empty list of bit-widths from 2..16 and 32, or one of them")
        return tuple(sorted(set(bits)))

    @field_validator("act_bits", mode="before")
    @classmethod
    def _act_bits(cls, v: object) -> tuple[int, ...] | None:
        # before pydantic's coercion, so that 8.0 or "8" is refused like a bad width
        return None if v is None else act_bits_tuple(v)  # type: ignore[arg-type]

    @field_validator("factorize")
    @classmethod
    def _factorizations(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if v is None else canonical_names(v, FACTORIZATIONS)

    @field_validator("pruning")
    @classmethod
    def _prunings(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and not v:
            raise ValueError(f"a non-empty list of {', '.join(PRUNINGS)}")
        return None if v is None else canonical_names(v, PRUNINGS)


@dataclass(frozen=True)
class Unit:
    """One set of sampled dimensions: a single layer, or a tied group's layers.

    Attributes:
        prefix: Parameter-name prefix (the layer name, or the tied group's name).
        layers: The layers that take the sampled values.
        sparsity: ``(low, high)``; equal ends = fixed.
        bits: Candidate bit-widths; one = fixed.
        methods: Quantization methods; one = fixed.
        group: The group's name, or None for a layer outside every group.
        pruning: Pruning methods (registered names); one = fixed.
        factorize: Per factorization that applies to every layer of the unit,
            its ``(low, high)`` rank_ratio range, capped where the rank stops
            saving parameters; empty = no ``<prefix>.factorize`` dimension.
        channels: The requested ``(low, high)`` fraction of output channels
            removed, or None; what is searched is a :class:`ChannelUnit`'s.
        heads: The requested ``(low, high)`` fraction of attention heads
            removed, or None; what is searched is a :class:`HeadUnit`'s.
        act_bits: Candidate activation bit-widths of ``act_layers``; empty =
            no activation quantization, one = fixed.
        act_layers: The unit's layers whose inputs ``act_bits`` quantizes
            (Linear / Conv: not an Embedding, whose inputs are token ids).
    """

    prefix: str
    layers: tuple[str, ...]
    sparsity: tuple[float, float]
    bits: tuple[int, ...]
    methods: tuple[str, ...]
    group: str | None = None
    pruning: tuple[str, ...] = ("magnitude_pruning",)
    factorize: tuple[tuple[str, tuple[float, float]], ...] = ()
    channels: tuple[float, float] | None = None
    heads: tuple[float, float] | None = None
    act_bits: tuple[int, ...] = ()
    act_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelUnit:
    """One sampled channel-pruning ratio, ``<prefix>.channels``.

    Layers whose output channels are removed together: one layer, a tied
    group, or layers DepGraph couples (a residual addition makes two convs
    lose the same channels, so they take one ratio).

    Attributes:
        prefix: Parameter-name prefix: that of the unit holding the first layer.
        layers: The layers that take the ratio, in model order.
        channels: ``(low, high)``; equal ends = fixed.
    """

    prefix: str
    layers: tuple[str, ...]
    channels: tuple[float, float]


@dataclass(frozen=True)
class HeadUnit:
    """One sampled head-pruning ratio, ``<prefix>.heads``: a unit's BERT-style ``query`` layers.

    Attributes:
        prefix: Parameter-name prefix: the unit's (a layer or a tied group).
        layers: The ``query`` layers HeadPruning takes the ratio on, in model order.
        heads: ``(low, high)`` fraction of heads removed; equal ends = fixed.
    """

    prefix: str
    layers: tuple[str, ...]
    heads: tuple[float, float]


def _no_match(field: str, glob: str, names: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(glob, names, n=4, cutoff=0.4) or list(names[:4])
    return ConfigError(field, glob, f"a glob matching a compressible layer; close layer names: {', '.join(close)}")


def match_layers(layers: Sequence[str], groups: Sequence[GroupSpec], exclude: Sequence[str]
                 ) -> tuple[tuple[str, ...], dict[str, GroupSpec]]:
    """Apply ``exclude`` then assign each remaining layer to at most one group.

    Returns:
        The kept layers (in model order) and, per grouped layer, its group.

    Raises:
        ConfigError: A glob that matches no layer (the message lists close
            names), two groups with one name, or a layer matched by two groups.
    """
    for glob in exclude:
        if not any(fnmatch.fnmatchcase(name, glob) for name in layers):
            raise _no_match("space.exclude", glob, layers)
    kept = tuple(name for name in layers if not any(fnmatch.fnmatchcase(name, g) for g in exclude))
    owner: dict[str, GroupSpec] = {}
    seen: set[str] = set()
    for group in groups:
        field = f"space.groups[{group.name}]"
        if group.name in seen:
            raise ConfigError(f"{field}.name", group.name, "a name no other group has")
        if group.name in layers:  # a tied group's <name>.bits would clash with the layer's own
            raise ConfigError(f"{field}.name", group.name, "a name that is not a layer name")
        seen.add(group.name)
        for glob in group.match:
            matched = [name for name in kept if fnmatch.fnmatchcase(name, glob)]
            if not matched:
                raise _no_match(f"{field}.match", glob, kept)
            for name in matched:
                other = owner.get(name)
                if other is not None and other.name != group.name:
                    raise ConfigError(f"{field}.match", glob, f"globs of layers in no other group; {name!r} is "
                                      f"already in group {other.name!r}")
                owner[name] = group
    return kept, owner
