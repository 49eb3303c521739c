"""Units: the sets of layers that share sampled values, built from a space's settings and its model."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from rayzor.compression import GROUP_SIZES, ActivationQuantization, HeadPruning, get_method
from rayzor.errors import ConfigError
from rayzor.spaces._dimensions import NEAREST_BITS, Dimension
from rayzor.spaces._introspect import method_support
from rayzor.spaces._probes import channel_support, head_refusal, layer_of, model_for, rank_caps
from rayzor.spaces._settings import (
    DEFAULT_RANK_RATIO,
    NO_FACTORIZATION,
    GroupSpec,
    SpaceSettings,
    as_range,
    takes_bits,
    takes_group_size,
)
from rayzor.spaces._targets import int8_kernels as int8_kernels_of
from rayzor.spaces._targets import runtime_bits, runtime_methods

__all__ = ["ChannelUnit", "HeadUnit", "Unit", "channel_units", "head_units", "layer_units", "match_layers", "no_match"]


def baseline_methods(bits: int) -> tuple[str, ...]:
    """Methods of the hand-tried "``bits`` everywhere" plan, preferred first.

    Below 8 bits the field's baseline is GPTQ (else AWQ): there rounding to
    nearest loses most (MiniLM, int4 g128 everywhere: cosine 0.977 with GPTQ
    on the Linear layers, 0.931 all uniform). At 8 bits uniform rounding is
    near lossless and needs no calibration.
    """
    return ("gptq", "awq", "uniform_quantization") if bits < 8 else ("uniform_quantization",)


def baseline_group_sizes(bits: int, int8_kernels: bool = False) -> tuple[int, ...]:
    """Block sizes of the hand-tried "``bits`` everywhere" plan, preferred first (0 = one scale per channel).

    From 3 bits up the largest block keeps the scales cheapest at little
    cost (int4 g128 is the field's default). Four levels cannot follow a
    block of 128 weights: 2-bit codes take the smallest block (MiniLM's
    2-bit g32 vocabulary table: cosine 0.962 with GPTQ int4 g128 Linear
    layers, 0.953 at g128), as published 2-bit results do (HQQ: g16-g64).

    With ``int8_kernels`` (a Linear layer under onnxruntime's ``accuracy_level``
    4) 8-bit codes take one scale per channel first: that is the layout
    onnxruntime runs on its integer GEMMs, its fastest CPU path (MiniLM,
    batch 1: 1.8x the fp32 file, where MatMulNBits int8 g128 runs at 0.8x).
    """
    blocks = sorted(GROUP_SIZES)
    if int8_kernels and bits == 8:
        return (0, *reversed(blocks))
    return (*blocks, 0) if bits <= 2 else (*reversed(blocks), 0)


def int8_kernel_group_sizes(bits: int) -> tuple[int, ...]:
    """:func:`baseline_group_sizes` of a unit whose per-channel int8 codes run on integer kernels."""
    return baseline_group_sizes(bits, int8_kernels=True)


@dataclass(frozen=True)
class Unit:
    """One set of sampled dimensions (:attr:`dims`): a single layer, or a tied group's layers.

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
        group_sizes: Candidate block sizes of the block-wise methods; empty =
            one scale per output channel, one = fixed.
        options: Fixed config fields per quantization method of the unit
            (``space.method_options``), as ``(method, ((field, value), ...))``.
        int8_kernels: The runtime runs the unit's symmetric per-channel int8
            codes on integer GEMMs (Linear layers under onnxruntime at
            ``accuracy_level`` 4): its 8-bit warm start takes that layout.
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
    group_sizes: tuple[int, ...] = ()
    options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    int8_kernels: bool = False

    def method_fields(self, method: str) -> dict[str, Any]:
        """The fixed config fields of ``method`` in this unit."""
        return dict(dict(self.options).get(method, ()))

    @property
    def dims(self) -> tuple[Dimension, ...]:
        """The unit's dimensions, in sampling order: each per-layer choice is declared here only."""
        dims = []
        if self.factorize:
            dims.append(
                Dimension(
                    "factorize",
                    CategoricalDistribution((NO_FACTORIZATION, *dict(self.factorize))),
                    setting="factorize",
                    implied=NO_FACTORIZATION,
                )
            )
            dims += [
                Dimension(
                    "rank_ratio",
                    FloatDistribution(*r),
                    when=("factorize", (m,)),
                    note=f" for {m}",
                    setting="rank_ratio",
                )
                for m, r in self.factorize
            ]
        dims.append(Dimension("sparsity", FloatDistribution(*self.sparsity), setting="sparsity"))
        # the criterion of a unit that prunes nothing is no choice; magnitude is what a bare sparsity means
        dims.append(
            Dimension(
                "prune",
                CategoricalDistribution(self.pruning if self.sparsity[1] > 0.0 else self.pruning[:1]),
                prefer="magnitude_pruning",
                setting="prune",
                implied="magnitude_pruning",
            )
        )
        # the plan names the method only where bits alone do not say it (see CompressionSpace.decode)
        dims.append(Dimension("quant", CategoricalDistribution(self.methods), prefer=baseline_methods))
        with_bits = tuple(m for m in self.methods if takes_bits(m))
        if with_bits:
            dims.append(
                Dimension(
                    "bits",
                    CategoricalDistribution(self.bits),
                    when=("quant", with_bits),
                    prefer=NEAREST_BITS,
                    setting="bits",
                )
            )
        blockwise = tuple(m for m in self.methods if takes_group_size(m))
        if blockwise and self.group_sizes:  # dropped from the plan where the bits leave the layer fp32
            dims.append(
                Dimension(
                    "group_size",
                    CategoricalDistribution(self.group_sizes),
                    when=("quant", blockwise),
                    # a module-level function, not a partial: dimensions compare equal across rebuilt spaces
                    prefer=int8_kernel_group_sizes if self.int8_kernels else baseline_group_sizes,
                )
            )
        if self.act_bits:  # on act_layers only, as ActivationQuantization (see CompressionSpace.decode)
            dims.append(Dimension("act_bits", CategoricalDistribution(self.act_bits), prefer=max(self.act_bits)))
        return tuple(dims)


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

    @property
    def dims(self) -> tuple[Dimension, ...]:
        return (Dimension("channels", FloatDistribution(*self.channels)),)


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

    @property
    def dims(self) -> tuple[Dimension, ...]:
        return (Dimension("heads", FloatDistribution(*self.heads)),)


def no_match(field: str, glob: str, names: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(glob, names, n=4, cutoff=0.4) or list(names[:4])
    return ConfigError(field, glob, f"a glob matching a compressible layer; close layer names: {', '.join(close)}")


def match_layers(
    layers: Sequence[str], groups: Sequence[GroupSpec], exclude: Sequence[str]
) -> tuple[tuple[str, ...], dict[str, GroupSpec]]:
    """Apply ``exclude`` then assign each remaining layer to at most one group.

    Returns:
        The kept layers (in model order) and, per grouped layer, its group.

    Raises:
        ConfigError: A glob that matches no layer (the message lists close
            names), a group named like a layer, or a layer matched by two groups.
    """
    for glob in exclude:
        if not any(fnmatch.fnmatchcase(name, glob) for name in layers):
            raise no_match("space.exclude", glob, layers)
    kept = tuple(name for name in layers if not any(fnmatch.fnmatchcase(name, g) for g in exclude))
    owner: dict[str, GroupSpec] = {}
    for group in groups:
        field = f"space.groups[{group.name}]"
        if group.name in layers:  # a tied group's <name>.bits would clash with the layer's own
            raise ConfigError(f"{field}.name", group.name, "a name that is not a layer name")
        for glob in group.match:
            matched = [name for name in kept if fnmatch.fnmatchcase(name, glob)]
            if not matched:
                raise no_match(f"{field}.match", glob, kept)
            for name in matched:
                other = owner.get(name)
                if other is not None and other.name != group.name:
                    raise ConfigError(
                        f"{field}.match",
                        glob,
                        f"globs of layers in no other group; {name!r} is already in group {other.name!r}",
                    )
                owner[name] = group
    return kept, owner


def layer_units(
    settings: SpaceSettings,
    layers: Sequence[str],
    owner: Mapping[str, GroupSpec],
    model: nn.Module | None,
    target: str = "packed",
    accuracy_level: int = 0,
) -> tuple[Unit, ...]:
    """One unit per layer, one per tied group (where its first layer is), in model order.

    With the model, each unit offers only the quantization methods every one of its layers accepts (AWQ takes
    Linear layers only), and under a runtime ``target`` only the bit-widths and methods that runtime executes
    natively on them (see :mod:`rayzor.spaces._targets`). Under onnxruntime at ``accuracy_level`` 4 a unit of
    Linear layers marks itself :attr:`Unit.int8_kernels`, so its 8-bit warm start takes the integer-GEMM layout.
    """
    resolved: dict[str | None, SpaceSettings] = {
        None: settings,
        **{g.name: settings.resolved(g) for g in settings.groups},
    }
    members: list[tuple[str, tuple[str, ...], str | None]] = []
    done: set[str] = set()
    for layer in layers:
        group = owner.get(layer)
        if group is None:
            members.append((layer, (layer,), None))
        elif not group.tie:
            members.append((layer, (layer,), group.name))
        elif group.name not in done:
            done.add(group.name)
            members.append((group.name, tuple(n for n in layers if owner.get(n) is group), group.name))
    wants_factorize = [layer for _, names, g in members if resolved[g].factorize for layer in names]
    caps = (
        rank_caps(
            model_for("factorize", list(settings.factorize), model),
            wants_factorize,
            {layer: resolved[g].factorize for _, names, g in members for layer in names},
        )
        if wants_factorize
        else {}
    )
    wants_act = [layer for _, names, g in members if resolved[g].act_bits for layer in names]
    act_ok: set[str] = set()
    if wants_act:
        act_model = model_for("act_bits", list(settings.act_bits), model)
        # ActivationQuantization's own validate() decides: Linear / Conv, not an Embedding or inside MultiheadAttention
        act_ok = {
            layer
            for layer in wants_act
            if ActivationQuantization.method in method_support(layer, *layer_of(act_model, layer))[0]
        }
    units = []
    for prefix, names, g in members:
        r = resolved[g]
        rank = as_range(r.rank_ratio)
        rank_ratio = DEFAULT_RANK_RATIO if rank is None else rank
        factorize = []
        for method in r.factorize:
            cap = min((caps[layer].get(method, 0.0) for layer in names), default=0.0)
            if cap > 0.0:  # applies to every layer of the unit
                factorize.append((method, (min(rank_ratio[0], cap), min(rank_ratio[1], cap))))
        act_layers = tuple(layer for layer in names if layer in act_ok)
        bits, methods, group_sizes = r.bits, r.methods, r.group_size
        int8_kernels = False
        if model is not None:
            modules = [layer_of(model, layer) for layer in names]
            int8_kernels = all(int8_kernels_of(target, accuracy_level, m) for m, _ in modules)
            for module, _parent in modules:
                bits = runtime_bits(target, module, bits)
                methods = runtime_methods(target, module, methods)
                if isinstance(module, (nn.Conv1d, nn.Conv2d)) and target != "packed":
                    group_sizes = ()  # int8 convolutions are per output channel
                if isinstance(module, nn.Embedding) and target != "packed":
                    # GatherBlockQuantized is block-wise: per-channel (0) would leave the table fp32
                    group_sizes = tuple(g for g in group_sizes if g) or (128,)
            calibrated = [m for m in methods if get_method(m).calibrated]
            if calibrated:
                refused = {
                    m
                    for (module, parent), layer in zip(modules, names)
                    for m in calibrated
                    if m not in method_support(layer, module, parent)[0]
                }
                methods = tuple(m for m in methods if m not in refused) or ("uniform_quantization",)
        units.append(
            Unit(
                prefix,
                names,
                r.sparsity,
                bits,
                methods,
                group=g,
                pruning=r.pruning,
                factorize=tuple(factorize),
                channels=as_range(r.channels),
                heads=as_range(r.heads),
                act_bits=r.act_bits if act_layers else (),
                act_layers=act_layers,
                group_sizes=group_sizes,
                options=tuple(
                    (m, tuple(sorted(fields.items())))
                    for m, fields in sorted(r.method_options.items())
                    if m in methods and fields
                ),
                int8_kernels=int8_kernels,
            )
        )
    return tuple(units)


def channel_units(
    units: Sequence[Unit], layers: Sequence[str], model: nn.Module | None, example_input: Any
) -> tuple[tuple[ChannelUnit, ...], dict[str, str]]:
    """One sampled ratio per set of units whose output channels go together (tied, or coupled by DepGraph).

    Returns:
        The channel units, and per layer asked for that gets no ratio, why.
    """
    # the channel range of each unit that asks for one, in model order
    ranges = {u.prefix: u.channels for u in units if u.channels is not None and u.channels[1] > 0.0}
    asked = [u for u in units if u.prefix in ranges]
    refused_layers: dict[str, str] = {}
    if not asked:
        return (), refused_layers
    model = model_for("channels", list(ranges[asked[0].prefix]), model)
    if example_input is None:
        raise ConfigError(
            "example_input",
            None,
            "one input batch of the model (e.g. the task's example_input): "
            "space.channels traces which layers' output channels can go",
        )
    coupled, refused = channel_support(
        model, {layer: ranges[u.prefix][1] for u in asked for layer in u.layers}, example_input
    )
    unit_of = {layer: u for u in units for layer in u.layers}
    root = {u.prefix: u.prefix for u in units}

    def find(prefix: str) -> str:
        while root[prefix] != prefix:
            prefix = root[prefix] = root[root[prefix]]
        return prefix

    asked_prefixes = {u.prefix for u in asked}
    blocked: dict[str, str] = {}  # unit prefix -> why its channels are not searched
    for u in asked:
        for layer in u.layers:
            if layer in refused:
                blocked[u.prefix] = refused[layer] if len(u.layers) == 1 else f"tied with {layer!r}: {refused[layer]}"
                continue
            for other in coupled[layer]:
                if other not in unit_of:
                    blocked[u.prefix] = f"its output channels go with those of {other!r}, which is not searched"
                else:
                    root[find(unit_of[other].prefix)] = find(u.prefix)
    components: dict[str, list[Unit]] = {}
    for u in units:  # model order, so each component's first unit comes first
        components.setdefault(find(u.prefix), []).append(u)
    out = []
    for members in components.values():
        if not any(u.prefix in asked_prefixes for u in members):
            continue
        silent = next((u for u in members if u.prefix not in asked_prefixes), None)
        why = next((blocked[u.prefix] for u in members if u.prefix in blocked), None)
        if why is None and silent is not None:
            why = f"its output channels go with those of {silent.layers[0]!r}, whose settings search no channel pruning"
        if why is not None:
            refused_layers.update({layer: why for u in members if u.prefix in asked_prefixes for layer in u.layers})
            continue
        # every member asks for channels here (a silent one refused the component above)
        low, high = max(ranges[u.prefix][0] for u in members), min(ranges[u.prefix][1] for u in members)
        if low > high:
            u = members[-1]
            raise ConfigError(
                f"space.groups[{u.group}].channels" if u.group else "space.channels",
                list(ranges[u.prefix]),
                f"a range overlapping {list(ranges[members[0].prefix])} of "
                f"{members[0].prefix!r}, whose output channels go with those of {u.layers[0]!r}",
            )
        shared = tuple(layer for layer in layers if unit_of[layer] in members)
        out.append(ChannelUnit(members[0].prefix, shared, (low, high)))
    return tuple(out), refused_layers


def head_units(
    units: Sequence[Unit], model: nn.Module | None, example_input: Any
) -> tuple[tuple[HeadUnit, ...], dict[str, str]]:
    """One sampled head ratio per unit holding ``query`` layers whose heads can go.

    Returns:
        The head units, and per ``query`` layer asked for that gets no ratio, why.
    """
    asked = [(u, u.heads) for u in units if u.heads is not None and u.heads[1] > 0.0]
    refused: dict[str, str] = {}
    if not asked:
        return (), refused
    model = model_for("heads", list(asked[0][1]), model)
    if example_input is None:
        raise ConfigError(
            "example_input",
            None,
            "one input batch of the model (e.g. the task's example_input): "
            "space.heads traces which attention heads can go",
        )
    out = []
    for u, heads in asked:
        queries = []
        for layer in u.layers:
            module, parent = layer_of(model, layer)
            if HeadPruning.method not in method_support(layer, module, parent)[0]:
                continue  # not a query Linear: head pruning is no choice here, as Tucker-2 is none on a Linear
            why = head_refusal(model, layer, parent, heads[1], example_input)
            if why is None:
                queries.append(layer)
            else:
                refused[layer] = why
        if queries:
            out.append(HeadUnit(u.prefix, tuple(queries), heads))
    return tuple(out), refused
