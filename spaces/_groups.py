"""Declarative layer groups: glob-matched layers that share settings, optionally one sampled value."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compression.errors import ConfigError

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "GroupSpec", "Unit", "match_layers"]

#: Bit-widths the engine can pack; 32 leaves the layer's weights untouched (fp32).
ALLOWED_BITS: tuple[int, ...] = (*range(2, 17), 32)
#: Highest per-layer sparsity a space may ask for: beyond it a layer is gone.
MAX_SPARSITY = 0.95


class GroupSpec(BaseModel):
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
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^\S+$", description="group name; tied parameters are <name>.<dim>")
    match: tuple[str, ...] = Field(min_length=1, description="fnmatch globs on module names")
    tie: bool = Field(False, description="one sampled value per dimension for the whole group")
    sparsity: tuple[float, float] | float | None = Field(None, description="[low, high] or a fixed value")
    bits: tuple[int, ...] | int | None = Field(None, description="candidate bit-widths or a fixed one")
    methods: tuple[str, ...] | None = Field(None, description="quantization methods chosen among")

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
    """

    prefix: str
    layers: tuple[str, ...]
    sparsity: tuple[float, float]
    bits: tuple[int, ...]
    methods: tuple[str, ...]
    group: str | None = None


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
