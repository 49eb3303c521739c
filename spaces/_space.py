"""A per-layer compression search space built from a model by introspection."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from rayzor.compression import (
    ActivationQuantization,
    ChannelPruning,
    CompressionPlan,
    FinetuneConfig,
    HeadPruning,
    check_accuracy_level,
)
from rayzor.errors import ConfigError
from rayzor.spaces import _dimensions as dims
from rayzor.spaces._introspect import default_exclusions as _default_exclusions
from rayzor.spaces._introspect import inspect_layers
from rayzor.spaces._settings import (
    DEFAULT_METHODS,
    DEFAULT_PRUNING,
    DEFAULT_RANK_RATIO,
    PER_CHANNEL,
    SpaceSettings,
    as_range,
    takes_bits,
    takes_group_size,
    validated,
)
from rayzor.spaces._units import (
    ChannelUnit,
    HeadUnit,
    Unit,
    channel_units,
    head_units,
    layer_units,
    match_layers,
    no_match,
)

__all__ = ["CompressionSpace"]

#: Flat-settings keys a tied unit's layers may differ in: a structure method only some of them take (HeadPruning
#: on the queries, ChannelPruning kept per channel unit) and activation quantization (not on an Embedding).
_PER_LAYER_KEYS = frozenset(
    {
        "structure",
        "act_quant",
        *(f.name for f in dataclasses.fields(ChannelPruning)),
        *(f.name for f in dataclasses.fields(HeadPruning)),
        *(f"act_{f.name}" for f in dataclasses.fields(ActivationQuantization)),
    }
)


class CompressionSpace:
    """Per-layer compression choices of a model, sampled define-by-run through Optuna.

    Each unit (a layer, or a tied group's layers) declares its dimensions
    once (see :class:`Dimension`): ``<unit>.sparsity``, ``.prune``,
    ``.quant``, ``.bits`` (only when the chosen method takes bits),
    ``.factorize`` and ``.rank_ratio`` (only when a factorization is chosen),
    ``.act_bits``; channel and head units add ``.channels`` and ``.heads``.
    Sampling, decoding to a :class:`~rayzor.compression.CompressionPlan`,
    encoding a plan, the uniform warm-start plans and the dimension counts
    all derive from those declarations. A dimension with one value is fixed:
    never sampled nor counted.

    Args:
        layers: Names of the layers to search (as in ``model.named_modules()``).
        settings: The validated settings (e.g. a :class:`SpaceConfig`);
            None: built from ``**options``.
        finetune: Fine-tuning applied after pruning, before quantization.
        default_excluded: Layers left out unless a group's glob or ``include``
            names them, each with the reason.
        model: The model the layers belong to; needed (only read, never kept)
            when ``channels``, ``factorize``, ``heads`` or ``act_bits`` is set.
        example_input: One input batch of ``model``, traced by the channel and
            head probes; needed with ``channels`` or ``heads``.
        target: Deployment target (``"packed"`` or ``"onnxruntime"``): with the
            model, each layer is offered only the bit-widths and methods the
            target executes natively (:mod:`rayzor.spaces._targets`).
        accuracy_level: onnxruntime's ``accuracy_level`` under ``target``
            onnxruntime: at 4 the 8-bit warm start of Linear layers takes one
            scale per channel, the layout onnxruntime runs on integer GEMMs.
        **options: The fields of :class:`SpaceSettings` (``sparsity``,
            ``bits``, ``methods``, ``groups``, ``exclude``, ``include``,
            ``channels``, ``channel_importance``, ``factorize``,
            ``rank_ratio``, ``pruning``, ``heads``, ``act_bits``, ``group_size``,
            ``method_options``).

    Attributes:
        units: The sampled units in model order: one per layer, one per tied group.
        channel_units: The sampled channel ratios (empty without ``channels``).
        channels_refused: Per layer that ``channels`` asked for but gets no ratio, why.
        head_units: The sampled head ratios (empty without ``heads``).
        heads_refused: Per ``query`` layer that ``heads`` asked for but gets no ratio, why.
        group_of: Group name of each grouped layer.
        default_excluded: The layers the default exclusions left out, with the reason.
        warm_start: Params a search enqueues first; empty by default.

    Raises:
        ConfigError: A setting :class:`SpaceSettings` refuses, or one the
            model refuses (a glob matching no layer, a layer in two groups,
            a structural setting without the model or ``example_input``).
    """

    def __init__(
        self,
        layers: Sequence[str],
        settings: SpaceSettings | None = None,
        *,
        finetune: FinetuneConfig = FinetuneConfig(),
        default_excluded: Mapping[str, str] | None = None,
        model: nn.Module | None = None,
        example_input: Any = None,
        target: str = "packed",
        accuracy_level: int = 0,
        **options: Any,
    ) -> None:
        if not layers:
            raise ConfigError("layers", list(layers), "at least one Conv/Linear layer")
        check_accuracy_level(accuracy_level)
        if settings is None:
            settings = validated(options)
        elif options:
            raise TypeError(f"CompressionSpace takes settings or {sorted(options)}, not both")
        self.settings = settings
        self.sparsity, self.bits, self.methods = settings.sparsity, settings.bits, settings.methods
        self.pruning, self.channels, self.factorize = settings.pruning, as_range(settings.channels), settings.factorize
        rank_ratio = as_range(settings.rank_ratio)
        self.rank_ratio = DEFAULT_RANK_RATIO if rank_ratio is None else rank_ratio
        self.heads, self.act_bits = as_range(settings.heads), settings.act_bits
        self.channel_importance, self.groups = settings.channel_importance, settings.groups
        self.exclude, self.include = settings.exclude, settings.include
        for glob in self.include:
            if not any(fnmatch.fnmatchcase(name, glob) for name in layers):
                raise no_match("space.include", glob, list(layers))
        kept, owner = match_layers(tuple(layers), self.groups, self.exclude)
        # Explicit beats default: a layer a group's glob or `include` names is searched.
        self.default_excluded = {
            name: why
            for name, why in (default_excluded or {}).items()
            if name in kept and name not in owner and not any(fnmatch.fnmatchcase(name, g) for g in self.include)
        }
        kept = tuple(name for name in kept if name not in self.default_excluded)
        if not kept:
            left_out = ", ".join(f"{n} ({why})" for n, why in self.default_excluded.items())
            raise ConfigError(
                "space.exclude",
                list(self.exclude),
                f"globs that leave at least one of {list(layers)}"
                + (f" beside the default exclusions {left_out}; name one in space.include" if left_out else ""),
            )
        self.layers = kept
        self.finetune = finetune
        self.group_of = {name: g.name for name, g in owner.items()}
        self.target = target
        self.accuracy_level = accuracy_level
        self.units: tuple[Unit, ...] = layer_units(settings, kept, owner, model, target, accuracy_level)
        self.channel_units: tuple[ChannelUnit, ...]
        self.head_units: tuple[HeadUnit, ...]
        self.channel_units, self.channels_refused = channel_units(self.units, kept, model, example_input)
        self.head_units, self.heads_refused = head_units(self.units, model, example_input)
        self.warm_start: list[dict[str, Any]] = []

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        settings: SpaceSettings | None = None,
        *,
        default_exclusions: bool = False,
        example_input: Any = None,
        **kwargs: Any,
    ) -> CompressionSpace:
        """Search every Conv/Linear/Embedding of ``model`` (less ``exclude``, grouped by ``groups``).

        Args:
            model: The model to introspect.
            settings: As for the constructor.
            default_exclusions: Also leave out what :func:`default_exclusions`
                lists (first and last layer, tiny layers) unless a group or
                ``include`` names it. Off here, so that a space built in code
                covers every layer it names; :class:`SpaceConfig` turns it on.
            example_input: One input batch of ``model``; needed with ``channels`` or ``heads``.
            **kwargs: The constructor's other keyword arguments.
        """
        if default_exclusions:
            kwargs["default_excluded"] = _default_exclusions(model)
        return cls(
            [info.name for info in inspect_layers(model)], settings, model=model, example_input=example_input, **kwargs
        )

    def _owners(self) -> list[Unit | ChannelUnit | HeadUnit]:
        """Every unit in sampling order: a unit's channel and head ratios before its own dimensions."""
        extra: dict[str, list[ChannelUnit | HeadUnit]] = {c.prefix: [c] for c in self.channel_units}
        for h in self.head_units:
            extra.setdefault(h.prefix, []).append(h)
        return [owner for u in self.units for owner in (*extra.get(u.prefix, ()), u)]

    @property
    def dimensions(self) -> int:
        """Number of searched dimensions (fixed ones are not counted; a conditional one counts once)."""
        return sum(dims.count(owner.dims) for owner in self._owners())

    def layer_dimensions(self) -> dict[str, int]:
        """Searched dimensions per layer; a tied group's (or shared ratio's) count under each of its layers."""
        out = dict.fromkeys(self.layers, 0)
        for owner in self._owners():
            for layer in owner.layers:
                out[layer] += dims.count(owner.dims)
        return out

    def suggest(self, trial: dims.SuggestsParams) -> None:
        """Define-by-run sampling of one plan; usable as OptunaSearch's ``space``."""
        for owner in self._owners():
            dims.sample(trial, owner.prefix, owner.dims)

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan for a sampled parameter dict (fixed dimensions filled in)."""
        settings: dict[str, dict[str, Any]] = {}
        for u in self.units:
            values = dims.read(params, u.prefix, u.dims)
            flat = dims.to_settings(u.dims, values)
            if "bits" not in values or (values["quant"] != "uniform_quantization" and values["bits"] != 32):
                flat["quant"] = values["quant"]  # else implied: uniform, or fp32 (32 bits) under any method
            if values.get("bits") == 32 or "group_size" not in values or not takes_group_size(values["quant"]):
                flat.pop("group_size", None)  # a layer left fp32 has no blocks
            else:  # 0: one scale per output channel
                flat["group_size"] = int(values["group_size"]) or None
            if values.get("bits") != 32:  # a layer left fp32 has no method to configure
                flat.update(u.method_fields(values["quant"]))
            settings.update({layer: dict(flat) for layer in u.layers})
            act = values.get("act_bits", 32)
            if act != 32:  # 32: the inputs stay fp32, no method
                for layer in u.act_layers:
                    settings[layer].update(act_quant=ActivationQuantization.method, act_bits=int(act))
        ratios: list[tuple[ChannelUnit | HeadUnit, str]] = [
            *((c, ChannelPruning.method) for c in self.channel_units),
            *((h, HeadPruning.method) for h in self.head_units),
        ]
        for owner, method in ratios:
            (ratio,) = dims.read(params, owner.prefix, owner.dims).values()
            if ratio > 0.0:  # 0 removes nothing: no method, as sparsity 0 is no pruning
                for layer in owner.layers:
                    settings[layer].update(structure=method, ratio=float(ratio), importance=self.channel_importance)
        settings = {layer: settings[layer] for layer in self.layers}  # model order, whatever the units' order
        return CompressionPlan.from_settings(settings, finetune=self.finetune)

    def uniform_params(self, bits: int) -> dict[str, Any]:
        """Params of the hand-tried "``bits`` everywhere" plan, kept inside every unit's ranges.

        Each unit takes its lowest sparsity, uniform quantization where it may
        (else its first method), and its candidate bit-width nearest ``bits``.
        Structural choices stay mildest: no factorization, the lowest channel
        and head ratios, magnitude pruning where allowed, the widest activation bits.
        """
        return {k: v for owner in self._owners() for k, v in dims.uniform(owner.prefix, owner.dims, bits).items()}

    def encode(self, plan: CompressionPlan) -> dict[str, Any]:
        """The parameter dict that decodes to ``plan`` (e.g. to enqueue it)."""
        settings = plan.settings()
        if sorted(settings) != sorted(self.layers):
            raise ConfigError("plan.layers", sorted(settings), f"exactly the space's layers {list(self.layers)}")
        if plan.finetune != self.finetune:
            raise ConfigError("plan.finetune", plan.finetune, f"the space's {self.finetune}")
        structured = {layer: ChannelPruning.method for c in self.channel_units for layer in c.layers}
        structured.update({layer: HeadPruning.method for h in self.head_units for layer in h.layers})
        for layer in self.layers:
            structure = settings[layer].get("structure")
            if structure is not None and structure != structured.get(layer):
                raise ConfigError(
                    f"plan.layers[{layer!r}].structure",
                    structure,
                    [structured[layer]]
                    if layer in structured
                    else "no structure method: the space searches no channel or head pruning on this layer",
                )
        params: dict[str, Any] = {}
        for owner in self._owners():
            if isinstance(owner, Unit):
                values, field = _unit_values(owner, settings)
            else:
                name = owner.dims[0].name
                ratio = _shared(
                    owner.layers,
                    {
                        layer: settings[layer].get("ratio", 0.0) if "structure" in settings[layer] else 0.0
                        for layer in owner.layers
                    },
                    "ratio",
                    f"{name[:-1]} ratio",
                    f"{owner.prefix}.{name}",
                )
                values, field = {name: ratio}, {name: f"plan.layers[{owner.layers[0]!r}].ratio"}
            dims.check(values, owner.dims, field)
            params.update(dims.emit(owner.prefix, owner.dims, values))
        if self.decode(params) != plan:  # e.g. method fields the space does not search
            raise ConfigError("plan", plan.summary(), "a plan this space can sample (default method fields)")
        return params

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, logged with each search."""
        out: dict[str, Any] = {
            "layers": list(self.layers),
            "sparsity": list(self.sparsity),
            "bits": list(self.bits),
            "dimensions": self.dimensions,
        }
        if self.methods != DEFAULT_METHODS:
            out["methods"] = list(self.methods)
        if self.settings.method_options or any(g.method_options for g in self.groups):
            out["method_options"] = {u.prefix: {m: dict(f) for m, f in u.options} for u in self.units if u.options}
        if self.pruning != DEFAULT_PRUNING:
            out["pruning"] = list(self.pruning)
        if any(u.channels is not None for u in self.units):
            out["channels"] = None if self.channels is None else list(self.channels)
            out["channel_importance"] = self.channel_importance
            out["channel_units"] = [
                {"name": c.prefix, "layers": list(c.layers), "channels": list(c.channels)} for c in self.channel_units
            ]
            if self.channels_refused:
                out["channels_refused"] = dict(self.channels_refused)
        if any(u.heads is not None for u in self.units):
            out["heads"] = None if self.heads is None else list(self.heads)
            out["head_units"] = [
                {"name": h.prefix, "layers": list(h.layers), "heads": list(h.heads)} for h in self.head_units
            ]
            if self.heads_refused:
                out["heads_refused"] = dict(self.heads_refused)
        if any(u.act_bits for u in self.units):
            out["act_bits"] = list(self.act_bits)
            out["act_layers"] = [layer for u in self.units for layer in u.act_layers]
        if self.factorize or any(g.factorize for g in self.groups):
            out["factorize"] = list(self.factorize)
            out["rank_ratio"] = list(self.rank_ratio)
            # per unit, the factorizations that apply and each one's rank_ratio range after the cap
            out["factorizations"] = {u.prefix: {m: list(r) for m, r in u.factorize} for u in self.units if u.factorize}
        for key in ("exclude", "default_excluded", "include"):
            if getattr(self, key):
                out[key] = (dict if key == "default_excluded" else list)(getattr(self, key))
        if self.groups:
            out["groups"] = [
                {
                    "name": g.name,
                    "tie": g.tie,
                    "layers": [n for n in self.layers if self.group_of.get(n) == g.name],
                    "sparsity": list(u.sparsity),
                    "bits": list(u.bits),
                    "methods": list(u.methods),
                    **{
                        f: list(v)
                        for f in ("channels", "factorize", "rank_ratio", "pruning", "heads", "act_bits")
                        if (v := getattr(g, f)) is not None
                    },
                    "dimensions": sum(dims.count(v.dims) for v in self.units if v.group == g.name),
                }
                for g in self.groups
                for u in [next(v for v in self.units if v.group == g.name)]
            ]
        return out


def _shared(layers: Sequence[str], values: Mapping[str, Any], key: str, what: str, param: str) -> Any:
    """The one value ``layers`` share, refusing a layer whose value differs."""
    first = values[layers[0]]
    for layer in layers:
        if values[layer] != first:
            raise ConfigError(
                f"plan.layers[{layer!r}].{key}",
                values[layer],
                f"{first}, the {what} of {layers[0]!r}: they share one ({param})",
            )
    return first


def _unit_values(u: Unit, settings: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, str]]:
    """The dimension values of unit ``u`` read off a plan's flat settings, and the plan field of each."""
    first = u.layers[0]
    s = settings[first]
    core = {k: v for k, v in s.items() if k not in _PER_LAYER_KEYS}  # checked per layer here and in encode
    for layer in u.layers[1:]:
        if {k: v for k, v in settings[layer].items() if k not in _PER_LAYER_KEYS} != core:
            raise ConfigError(
                f"plan.layers[{layer!r}]",
                settings[layer],
                f"the settings of {first!r} ({s}): group {u.group!r} is tied",
            )
    for layer in u.layers:
        if layer not in u.act_layers and "act_quant" in settings[layer]:
            raise ConfigError(
                f"plan.layers[{layer!r}].act_quant",
                settings[layer]["act_quant"],
                "no activation method: the space searches no act_bits on this layer",
            )
    method = s.get("quant", "uniform_quantization")
    if method == "uniform_quantization" and method not in u.methods and s["bits"] == 32:
        method = next((m for m in u.methods if takes_bits(m)), method)  # fp32 under another bit method
    values = {**dims.from_settings(u.dims, s), "quant": method}
    sizes = next((d for d in u.dims if d.name == "group_size"), None)
    if sizes is not None:  # a layer left fp32 has no blocks: any choice decodes to it, the preferred one is kept
        if s.get("bits") == 32:
            values["group_size"] = sizes.uniform_value(32)
        else:  # None (stated, or uniform's default left out) is the per-channel choice
            values["group_size"] = s.get("group_size") or (PER_CHANNEL if sizes.contains(PER_CHANNEL) else None)
    field = {name: f"plan.layers[{first!r}].{name}" for name in values}
    if u.act_layers:
        act = {layer: settings[layer]["act_bits"] if "act_quant" in settings[layer] else 32 for layer in u.act_layers}
        values["act_bits"] = _shared(u.act_layers, act, "act_bits", "act_bits", f"{u.prefix}.act_bits")
        field["act_bits"] = f"plan.layers[{u.act_layers[0]!r}].act_bits"
    return values, field
