"""A per-layer compression search space built from a model by introspection."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from rayzor.compression import (ActivationQuantization, ChannelPruning, CompressionPlan, FinetuneConfig, HeadPruning,
                         compressible_layers, get_method, list_methods)
from rayzor.compression._structured import prune_structure
from rayzor.errors import ConfigError
from rayzor.spaces._groups import (ACT_BITS, ALLOWED_BITS, CHANNEL_IMPORTANCES, FACTORIZATIONS, MAX_SPARSITY, PRUNINGS,
                            ChannelUnit, GroupSpec, HeadUnit, Unit, _no_match, act_bits_tuple, canonical_names,
                            channel_range, head_range, match_layers, rank_range)
from rayzor.spaces._introspect import LayerInfo, inspect_layers, method_support
from rayzor.spaces._introspect import default_exclusions as _default_exclusions

__all__ = ["ACT_BITS", "ALLOWED_BITS", "CHANNEL_IMPORTANCES", "DEFAULT_PRUNING", "DEFAULT_RANK_RATIO", "FACTORIZATIONS",
           "MAX_SPARSITY", "DEFAULT_METHODS", "NO_FACTORIZATION", "PRUNINGS", "QUANT_METHODS", "CompressionSpace",
           "GroupSpec", "LayerInfo", "inspect_layers"]

#: The quantization methods a space chooses among by default: today's uniform-only space.
DEFAULT_METHODS: tuple[str, ...] = ("uniform_quantization",)
#: Quantize-stage methods a space can choose among, per layer.
QUANT_METHODS: tuple[str, ...] = tuple(m for m in list_methods() if get_method(m).stage == "quantize")
#: Highest bit-width each bit-taking method accepts (their lowest is <= 2).
_MAX_BITS = {"uniform_quantization": 16, "kmeans_quantization": 8}
#: The pruning criterion of today's space: magnitude, implied by ``sparsity`` in a plan's settings.
DEFAULT_PRUNING: tuple[str, ...] = ("magnitude_pruning",)
#: rank_ratio range of a chosen factorization when the config names none.
DEFAULT_RANK_RATIO: tuple[float, float] = (0.1, 0.5)
#: Value of ``<layer>.factorize`` that leaves the layer whole.
NO_FACTORIZATION = "none"
#: Flat-settings keys a tied unit's layers may differ in: a structure method only some of them take (HeadPruning
#: on the queries, ChannelPruning kept per channel unit) and activation quantization (not on an Embedding).
_PER_LAYER_KEYS = frozenset({"structure", "act_quant", *(f.name for f in dataclasses.fields(ChannelPruning)),
                             *(f.name for f in dataclasses.fields(HeadPruning)),
                             *(f"act_{f.name}" for f in dataclasses.fields(ActivationQuantization))})
#: rank_ratio resolution of the per-layer cap (the largest ratio whose rank still saves parameters).
_RANK_STEPS = 1000


def _takes_bits(method: str) -> bool:
    return any(f == "bits" for f in get_method(method).__dataclass_fields__)


@dataclass(frozen=True)
class _Settings:
    """What the space or one group asks for, validated: the ranges a unit starts from."""

    sparsity: tuple[float, float]
    bits: tuple[int, ...]
    methods: tuple[str, ...]
    pruning: tuple[str, ...]
    channels: tuple[float, float] | None
    factorize: tuple[str, ...]
    rank_ratio: tuple[float, float]
    heads: tuple[float, float] | None = None
    act_bits: tuple[int, ...] = ()


class CompressionSpace:
    """Per-layer sparsity, quantization method and bit-width, sampled define-by-run through Optuna.

    Each layer gets ``<layer>.sparsity`` (a float in ``sparsity``), and, when
    more than one method is allowed, ``<layer>.quant`` (a choice among
    ``methods``), then ``<layer>.bits`` (a choice among ``bits``; 32 leaves
    the weights in fp32) only if the chosen method takes bits (uniform,
    k-means; not binary, ternary or half precision). With the default
    ``methods`` the space is rayzor 0.1's: sparsity and uniform bits. A
    sampled parameter dict decodes into a
    :class:`~compression.CompressionPlan`, which rebuilds the same model.

    Structural choices, all off by default (they need the ``model``, so
    build such a space with :meth:`from_model`):

    - ``channels``: ``<layer>.channels``, the fraction of output channels
      :class:`~compression.ChannelPruning` removes (0 = none), only on layers
      whose channels can go: the method's ``validate()`` accepts the layer and
      a probe prune of a copy of the model on ``example_input`` succeeds
      (never a layer whose outputs are the model's outputs). Layers whose
      channels go together (DepGraph couples the convs of a residual
      addition) share one ratio, named after the first one's unit.
    - ``factorize``: ``<layer>.factorize``, a choice among ``"none"`` and the
      factorizations whose ``validate()`` accepts the layer (Tucker-2 only on
      convs with a kernel larger than 1x1, where it is not a worse low-rank),
      then ``<layer>.rank_ratio`` only when one was chosen (define-by-run).
      Its range is ``rank_ratio`` capped, per layer and factorization, at the
      largest ratio whose rank still saves parameters, so no sampled value is
      refused.
    - ``pruning``: ``<layer>.prune``, a choice among pruning criteria
      (magnitude, random) when more than one is allowed.
    - ``heads``: ``<layer>.heads``, the fraction of attention heads
      :class:`~compression.HeadPruning` removes (0 = none), only on the
      ``query`` Linears of BERT-style self-attentions where a probe prune of
      a copy of the model on ``example_input`` succeeds; a tied group's
      queries share ``<group>.heads``.
    - ``act_bits``: ``<layer>.act_bits``, a choice among activation
      bit-widths: :class:`~compression.ActivationQuantization` of the layer's
      input at that width, 32 = inputs left in fp32; only Linear and Conv
      layers (an Embedding's inputs are token ids). Compressing such a plan
      needs ``calibration_data``.

    Args:
        layers: Names of the layers to search (as in ``model.named_modules()``).
        sparsity: ``(low, high)`` per-layer sparsity range, within [0, 0.95].
        bits: Candidate bit-widths, from :data:`ALLOWED_BITS`; each must suit
            every bit-taking method in ``methods`` (k-means: at most 8).
        finetune: Fine-tuning applied after pruning, before quantization.
        methods: Quantization methods to choose among, from :data:`QUANT_METHODS`.
        groups: Layer groups (:class:`GroupSpec` or their dicts) whose settings
            override the space-wide ones; a tied group samples one value per
            dimension for all its layers, named ``<group>.sparsity`` etc.
        exclude: Globs of layers left out of the space (and uncompressed).
        default_excluded: Layers left out unless a group's glob or ``include``
            names them, each with the reason (from :func:`~spaces.default_exclusions`,
            which :meth:`from_model` passes with ``default_exclusions=True``).
        include: Globs of layers searched even where ``default_excluded``
            lists them; ``exclude`` still wins.
        channels: ``(low, high)`` fraction of output channels removed, in
            ``[0, 1)``; None (default) searches no channel pruning.
        channel_importance: How ChannelPruning ranks channels, from
            :data:`~spaces.CHANNEL_IMPORTANCES`.
        factorize: Factorizations to choose among with ``"none"``
            (``lowrank`` / ``low_rank``, ``tucker2``); empty (default) = none.
        rank_ratio: ``(low, high)`` rank_ratio of a chosen factorization, in
            ``(0, 1]``; default :data:`DEFAULT_RANK_RATIO`.
        pruning: Pruning criteria to choose among (``magnitude``, ``random``).
        heads: ``(low, high)`` fraction of attention heads removed, in
            ``[0, 1)``; None (default) searches no head pruning. Heads are
            ranked by ``channel_importance``.
        act_bits: Candidate activation bit-widths, from :data:`ACT_BITS` (32 =
            fp32 inputs); empty (default) searches no activation quantization.
        model: The model the layers belong to; needed (and only read, never
            kept) when ``channels``, ``factorize``, ``heads`` or ``act_bits``
            is set, by a group too.
        example_input: One input batch of ``model``, traced by the channel
            and head probes; needed with ``channels`` or ``heads``.

    Attributes:
        units: The sampled units in model order: one per layer, one per tied group.
        channel_units: The sampled channel ratios (empty without ``channels``).
        channels_refused: Per searched layer that ``channels`` asked for but
            gets no channel ratio, why.
        head_units: The sampled head ratios (empty without ``heads``).
        heads_refused: Per ``query`` layer that ``heads`` asked for but gets
            no head ratio, why.
        group_of: Group name of each grouped layer.
        default_excluded: The layers the default exclusions left out, with the reason.
        warm_start: Params a search enqueues first (e.g. from
            :func:`~spaces.sensitivity_points`); empty by default.
    """

    def __init__(
        self,
        layers: Sequence[str],
        *,
        sparsity: tuple[float, float] = (0.0, MAX_SPARSITY),
        bits: Iterable[int] = (2, 3, 4, 5, 6, 8, 16, 32),
        finetune: FinetuneConfig = FinetuneConfig(),
        methods: Iterable[str] = DEFAULT_METHODS,
        groups: Sequence[GroupSpec | Mapping[str, Any]] = (),
        exclude: Sequence[str] = (),
        default_excluded: Mapping[str, str] | None = None,
        include: Sequence[str] = (),
        channels: tuple[float, float] | float | None = None,
        channel_importance: str = "l1",
        factorize: Iterable[str] = (),
        rank_ratio: tuple[float, float] | float | None = None,
        pruning: Iterable[str] = DEFAULT_PRUNING,
        heads: tuple[float, float] | float | None = None,
        act_bits: Iterable[int] | int = (),
        model: nn.Module | None = None,
        example_input: Any = None,
    ) -> None:
        if not layers:
            raise ConfigError("layers", list(layers), "at least one Conv/Linear layer")
        self.sparsity, self.bits, self.methods = _checked("space", sparsity, bits, methods)
        self.channels, self.factorize, self.rank_ratio, self.pruning = _checked_structure(
            "space", channels, factorize, rank_ratio, pruning)
        self.heads, self.act_bits = _checked_heads_act("space", heads, act_bits)
        if channel_importance not in CHANNEL_IMPORTANCES:
            raise ConfigError("space.channel_importance", channel_importance, list(CHANNEL_IMPORTANCES))
        self.channel_importance = channel_importance
        self.groups = tuple(g if isinstance(g, GroupSpec) else GroupSpec.model_validate(g) for g in groups)
        if rank_ratio is not None and not self.factorize and not any(g.factorize for g in self.groups):
            raise ConfigError("space.rank_ratio", list(self.rank_ratio), "a range only with space.factorize (or a "
                              "group's factorize): it is sampled only for layers that choose a factorization")
        self.exclude = tuple(exclude)
        self.include = tuple(include)
        for glob in self.include:
            if not any(fnmatch.fnmatchcase(name, glob) for name in layers):
                raise _no_match("space.include", glob, list(layers))
        kept, owner = match_layers(tuple(layers), self.groups, self.exclude)
        # Explicit beats default: a layer a group's glob or `include` names is searched.
        self.default_excluded = {
            name: why for name, why in (default_excluded or {}).items()
            if name in kept and name not in owner and not any(fnmatch.fnmatchcase(name, g) for g in self.include)
        }
        kept = tuple(name for name in kept if name not in self.default_excluded)
        if not kept:
            left_out = ", ".join(f"{n} ({why})" for n, why in self.default_excluded.items())
            raise ConfigError("space.exclude", list(self.exclude), f"globs that leave at least one of {list(layers)}"
                              + (f" beside the default exclusions {left_out}; name one in space.include" if left_out else ""))
        self.layers = kept
        self.finetune = finetune
        self.group_of = {name: g.name for name, g in owner.items()}
        self.channels_refused: dict[str, str] = {}
        self.heads_refused: dict[str, str] = {}
        self.units = self._units(owner, model)
        self.channel_units = self._channel_units(model, example_input)
        self.head_units = self._head_units(model, example_input)
        self.warm_start: list[dict[str, Any]] = []

    def _resolved(self, group: GroupSpec | None) -> _Settings:
        """The settings of ``group`` (None: the space's), each left out inherited from the space."""
        if group is None:
            return _Settings(self.sparsity, self.bits, self.methods, self.pruning, self.channels, self.factorize,
                             self.rank_ratio, self.heads, self.act_bits)
        field = f"space.groups[{group.name}]"

        def pick(mine: Any, space: Any) -> Any:
            return space if mine is None else mine

        base = _checked(field, pick(group.sparsity, self.sparsity), pick(group.bits, self.bits),
                        pick(group.methods, self.methods))
        channels, factorize, rank_ratio, pruning = _checked_structure(
            field, pick(group.channels, self.channels), pick(group.factorize, self.factorize),
            pick(group.rank_ratio, self.rank_ratio), pick(group.pruning, self.pruning))
        heads, act_bits = _checked_heads_act(field, pick(group.heads, self.heads), pick(group.act_bits, self.act_bits))
        return _Settings(*base, pruning, channels, factorize, rank_ratio, heads, act_bits)

    def _units(self, owner: Mapping[str, GroupSpec], model: nn.Module | None) -> tuple[Unit, ...]:
        # In model order; a tied group sits where its first layer is.
        resolved: dict[str | None, _Settings] = {None: self._resolved(None)}
        for group in self.groups:
            resolved[group.name] = self._resolved(group)
        members: list[tuple[str, tuple[str, ...], str | None]] = []
        done: set[str] = set()
        for layer in self.layers:
            group = owner.get(layer)
            if group is None:
                members.append((layer, (layer,), None))
            elif not group.tie:
                members.append((layer, (layer,), group.name))
            elif group.name not in done:
                done.add(group.name)
                members.append((group.name, tuple(n for n in self.layers if owner.get(n) is group), group.name))
        wants_factorize = [layer for _, layers, g in members if resolved[g].factorize for layer in layers]
        caps = _rank_caps(_model_for("factorize", list(self.factorize), model), wants_factorize,
                          {layer: resolved[g].factorize for _, layers, g in members for layer in layers}
                          ) if wants_factorize else {}
        wants_act = [layer for _, layers, g in members if resolved[g].act_bits for layer in layers]
        act_model = _model_for("act_bits", list(self.act_bits), model) if wants_act else None
        # ActivationQuantization's own validate() decides: Linear / Conv, not an Embedding or inside MultiheadAttention
        act_ok = {layer for layer in wants_act
                  if ActivationQuantization.method in method_support(layer, *_layer(act_model, layer))[0]}
        units = []
        for prefix, layers, g in members:
            r = resolved[g]
            factorize = []
            for method in r.factorize:
                cap = min((caps[layer].get(method, 0.0) for layer in layers), default=0.0)
                if cap > 0.0:  # applies to every layer of the unit
                    factorize.append((method, (min(r.rank_ratio[0], cap), min(r.rank_ratio[1], cap))))
            act_layers = tuple(layer for layer in layers if layer in act_ok)
            units.append(Unit(prefix, layers, r.sparsity, r.bits, r.methods, group=g, pruning=r.pruning,
                              factorize=tuple(factorize), channels=r.channels, heads=r.heads,
                              act_bits=r.act_bits if act_layers else (), act_layers=act_layers))
        return tuple(units)

    def _channel_units(self, model: nn.Module | None, example_input: Any) -> tuple[ChannelUnit, ...]:
        """One sampled ratio per set of units whose output channels go together (tied, or coupled by DepGraph)."""
        asked = [u for u in self.units if u.channels is not None and u.channels[1] > 0.0]
        if not asked:
            return ()
        model = _model_for("channels", list(asked[0].channels), model)
        if example_input is None:
            raise ConfigError("example_input", None, "one input batch of the model (e.g. the task's example_input): "
                              "space.channels traces which layers' output channels can go")
        coupled, refused = _channel_support(model, {layer: u.channels[1] for u in asked for layer in u.layers},
                                            example_input)
        unit_of = {layer: u for u in self.units for layer in u.layers}
        root = {u.prefix: u.prefix for u in self.units}

        def find(prefix: str) -> str:
            while root[prefix] != prefix:
                prefix = root[prefix] = root[root[prefix]]
            return prefix

        asked_prefixes = {u.prefix for u in asked}
        blocked: dict[str, str] = {}  # unit prefix -> why its channels are not searched
        for u in asked:
            for layer in u.layers:
                if layer in refused:
                    blocked[u.prefix] = (refused[layer] if len(u.layers) == 1
                                         else f"tied with {layer!r}: {refused[layer]}")
                    continue
                for other in coupled[layer]:
                    if other not in unit_of:
                        blocked[u.prefix] = f"its output channels go with those of {other!r}, which is not searched"
                    else:
                        root[find(unit_of[other].prefix)] = find(u.prefix)
        components: dict[str, list[Unit]] = {}
        for u in self.units:  # model order, so each component's first unit comes first
            components.setdefault(find(u.prefix), []).append(u)
        out = []
        for members in components.values():
            if not any(u.prefix in asked_prefixes for u in members):
                continue
            silent = next((u for u in members if u.prefix not in asked_prefixes), None)
            why = next((blocked[u.prefix] for u in members if u.prefix in blocked), None)
            if why is None and silent is not None:
                why = (f"its output channels go with those of {silent.layers[0]!r}, whose settings search no channel "
                       "pruning")
            if why is not None:
                self.channels_refused.update({layer: why for u in members if u.prefix in asked_prefixes
                                              for layer in u.layers})
                continue
            low, high = max(u.channels[0] for u in members), min(u.channels[1] for u in members)
            if low > high:
                u = members[-1]
                raise ConfigError(f"space.groups[{u.group}].channels" if u.group else "space.channels",
                                  list(u.channels), f"a range overlapping {list(members[0].channels)} of "
                                  f"{members[0].prefix!r}, whose output channels go with those of {u.layers[0]!r}")
            layers = tuple(layer for layer in self.layers if unit_of[layer] in members)
            out.append(ChannelUnit(members[0].prefix, layers, (low, high)))
        return tuple(out)

    def _head_units(self, model: nn.Module | None, example_input: Any) -> tuple[HeadUnit, ...]:
        """One sampled head ratio per unit holding ``query`` layers whose heads can go."""
        asked = [u for u in self.units if u.heads is not None and u.heads[1] > 0.0]
        if not asked:
            return ()
        model = _model_for("heads", list(asked[0].heads), model)
        if example_input is None:
            raise ConfigError("example_input", None, "one input batch of the model (e.g. the task's example_input): "
                              "space.heads traces which attention heads can go")
        out = []
        for u in asked:
            queries = []
            for layer in u.layers:
                module, parent = _layer(model, layer)
                if HeadPruning.method not in method_support(layer, module, parent)[0]:
                    continue  # not a query Linear: head pruning is no choice here, as Tucker-2 is none on a Linear
                why = _head_refusal(model, layer, parent, u.heads[1], example_input)
                if why is None:
                    queries.append(layer)
                else:
                    self.heads_refused[layer] = why
            if queries:
                out.append(HeadUnit(u.prefix, tuple(queries), u.heads))
        return tuple(out)

    @classmethod
    def from_model(cls, model: nn.Module, *, default_exclusions: bool = False, example_input: Any = None,
                   **kwargs: Any) -> CompressionSpace:
        """Search every Conv/Linear/Embedding of ``model`` (less ``exclude``, grouped by ``groups``).

        Args:
            model: The model to introspect.
            default_exclusions: Also leave out what :func:`~spaces.default_exclusions`
                lists (first and last layer, tiny layers) unless a group or
                ``include`` names it. Off here, so that a space built in code
                covers every layer it names; :class:`~search.SpaceConfig` (what
                ``rayzor search`` uses) turns it on by default.
            example_input: One input batch of ``model``; needed with ``channels``.
            **kwargs: The constructor's keyword arguments.
        """
        if default_exclusions:
            kwargs["default_excluded"] = _default_exclusions(model)
        return cls([info.name for info in inspect_layers(model)], model=model, example_input=example_input, **kwargs)

    @property
    def dimensions(self) -> int:
        """Number of searched dimensions (fixed ones are not counted; a conditional one counts once)."""
        return (sum(_unit_dims(u) for u in self.units) + sum(_channel_dims(c) for c in self.channel_units)
                + sum(_head_dims(h) for h in self.head_units))

    def layer_dimensions(self) -> dict[str, int]:
        """Searched dimensions per layer; a tied group's (or shared channel ratio's) count under each of its layers."""
        dims = {layer: _unit_dims(u) for u in self.units for layer in u.layers}
        for c in self.channel_units:
            for layer in c.layers:
                dims[layer] += _channel_dims(c)
        for h in self.head_units:
            for layer in h.layers:
                dims[layer] += _head_dims(h)
        return dims

    def suggest(self, trial: optuna.Trial) -> None:
        """Define-by-run sampling of one plan; usable as OptunaSearch's ``space``."""
        channel_units = {c.prefix: c for c in self.channel_units}
        head_units = {h.prefix: h for h in self.head_units}
        for u in self.units:
            c = channel_units.get(u.prefix)
            if c is not None and c.channels[0] < c.channels[1]:
                trial.suggest_float(f"{c.prefix}.channels", *c.channels)
            h = head_units.get(u.prefix)
            if h is not None and h.heads[0] < h.heads[1]:
                trial.suggest_float(f"{h.prefix}.heads", *h.heads)
            if u.factorize:
                ranges = dict(u.factorize)
                chosen = trial.suggest_categorical(f"{u.prefix}.factorize", (NO_FACTORIZATION, *ranges))
                # Conditional: a rank only for a layer that is factorized, in that factorization's range.
                if chosen != NO_FACTORIZATION and ranges[chosen][0] < ranges[chosen][1]:
                    trial.suggest_float(f"{u.prefix}.rank_ratio", *ranges[chosen])
            low, high = u.sparsity
            if low < high:
                trial.suggest_float(f"{u.prefix}.sparsity", low, high)
            if len(u.pruning) > 1 and high > 0.0:
                trial.suggest_categorical(f"{u.prefix}.prune", u.pruning)
            method = u.methods[0]
            if len(u.methods) > 1:
                method = trial.suggest_categorical(f"{u.prefix}.quant", u.methods)
            if len(u.bits) > 1 and _takes_bits(method):
                trial.suggest_categorical(f"{u.prefix}.bits", u.bits)
            if len(u.act_bits) > 1:
                trial.suggest_categorical(f"{u.prefix}.act_bits", u.act_bits)
        return None

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan for a sampled parameter dict (fixed dimensions filled in)."""
        settings = {}
        for u in self.units:
            sparsity = params.get(f"{u.prefix}.sparsity", u.sparsity[0])
            method = params.get(f"{u.prefix}.quant", u.methods[0])
            flat: dict[str, Any] = {"sparsity": float(sparsity)}
            prune = params.get(f"{u.prefix}.prune", u.pruning[0])
            if prune not in u.pruning:
                raise ConfigError(f"params[{u.prefix + '.prune'!r}]", prune, u.pruning)
            if prune != "magnitude_pruning":  # magnitude is what a bare sparsity means
                flat["prune"] = prune
            if _takes_bits(method):
                flat["bits"] = int(params.get(f"{u.prefix}.bits", u.bits[0]))
                if method != "uniform_quantization" and flat["bits"] != 32:  # 32 = fp32 for every method
                    flat["quant"] = method
            else:
                flat["quant"] = method
            chosen = params.get(f"{u.prefix}.factorize", NO_FACTORIZATION)
            if chosen != NO_FACTORIZATION:
                ranges = dict(u.factorize)
                if chosen not in ranges:
                    raise ConfigError(f"params[{u.prefix + '.factorize'!r}]", chosen, [NO_FACTORIZATION, *ranges])
                flat["factorize"] = chosen
                flat["rank_ratio"] = float(params.get(f"{u.prefix}.rank_ratio", ranges[chosen][0]))
            for layer in u.layers:
                settings[layer] = dict(flat)
            if u.act_bits:
                act = params.get(f"{u.prefix}.act_bits", u.act_bits[0])
                if act not in u.act_bits:
                    raise ConfigError(f"params[{u.prefix + '.act_bits'!r}]", act, list(u.act_bits))
                if act != 32:  # 32: the inputs stay fp32, no method
                    for layer in u.act_layers:
                        settings[layer].update(act_quant=ActivationQuantization.method, act_bits=int(act))
        for c in self.channel_units:
            ratio = float(params.get(f"{c.prefix}.channels", c.channels[0]))
            if ratio > 0.0:  # 0 removes nothing: no method, as sparsity 0 is no pruning
                for layer in c.layers:
                    settings[layer].update(structure=ChannelPruning.method, ratio=ratio,
                                           importance=self.channel_importance)
        for h in self.head_units:
            ratio = float(params.get(f"{h.prefix}.heads", h.heads[0]))
            if ratio > 0.0:
                for layer in h.layers:
                    settings[layer].update(structure=HeadPruning.method, ratio=ratio,
                                           importance=self.channel_importance)
        settings = {layer: settings[layer] for layer in self.layers}  # model order, whatever the units' order
        return CompressionPlan.from_settings(settings, finetune=self.finetune)

    def uniform_params(self, bits: int) -> dict[str, Any]:
        """Params of the hand-tried "``bits`` everywhere" plan, kept inside every unit's ranges.

        Each unit takes its lowest sparsity, uniform quantization where it may
        (else its first method), and its candidate bit-width nearest ``bits``
        (a group with fixed bits keeps them). Without groups every layer gets
        exactly ``bits``, when ``bits`` is a candidate. Structural choices
        stay mildest: no factorization, the lowest channel and head ratios,
        magnitude pruning where allowed, and the widest activation bits.
        """
        params: dict[str, Any] = {}
        channel_units = {c.prefix: c for c in self.channel_units}
        head_units = {h.prefix: h for h in self.head_units}
        for u in self.units:
            c = channel_units.get(u.prefix)
            if c is not None and c.channels[0] < c.channels[1]:
                params[f"{c.prefix}.channels"] = c.channels[0]
            h = head_units.get(u.prefix)
            if h is not None and h.heads[0] < h.heads[1]:
                params[f"{h.prefix}.heads"] = h.heads[0]
            if u.factorize:
                params[f"{u.prefix}.factorize"] = NO_FACTORIZATION
            if u.sparsity[0] < u.sparsity[1]:
                params[f"{u.prefix}.sparsity"] = u.sparsity[0]
            if len(u.pruning) > 1 and u.sparsity[1] > 0.0:
                params[f"{u.prefix}.prune"] = "magnitude_pruning" if "magnitude_pruning" in u.pruning else u.pruning[0]
            method = "uniform_quantization" if "uniform_quantization" in u.methods else u.methods[0]
            if len(u.methods) > 1:
                params[f"{u.prefix}.quant"] = method
            if len(u.bits) > 1 and _takes_bits(method):
                params[f"{u.prefix}.bits"] = min(u.bits, key=lambda b: (abs(b - bits), b))
            if len(u.act_bits) > 1:
                params[f"{u.prefix}.act_bits"] = max(u.act_bits)
        return params

    def encode(self, plan: CompressionPlan) -> dict[str, Any]:
        """The parameter dict that decodes to ``plan`` (e.g. to enqueue it)."""
        settings = plan.settings()
        if sorted(settings) != sorted(self.layers):
            raise ConfigError("plan.layers", sorted(settings), f"exactly the space's layers {list(self.layers)}")
        if plan.finetune != self.finetune:
            raise ConfigError("plan.finetune", plan.finetune, f"the space's {self.finetune}")
        params: dict[str, Any] = {}
        channel_of = {layer: c for c in self.channel_units for layer in c.layers}
        head_of = {layer: h for h in self.head_units for layer in h.layers}
        for layer in self.layers:
            structure = settings[layer].get("structure")
            valid = ([ChannelPruning.method] if layer in channel_of else [HeadPruning.method] if layer in head_of
                     else [])
            if structure is not None and structure not in valid:
                raise ConfigError(f"plan.layers[{layer!r}].structure", structure, valid or
                                  "no structure method: the space searches no channel or head pruning on this layer")
        for c in self.channel_units:
            ratios = {layer: settings[layer].get("ratio", 0.0) if "structure" in settings[layer] else 0.0
                      for layer in c.layers}
            ratio = ratios[c.layers[0]]
            for layer, other in ratios.items():
                if other != ratio:
                    raise ConfigError(f"plan.layers[{layer!r}].ratio", other, f"{ratio}, the channel ratio of "
                                      f"{c.layers[0]!r}: they share one ({c.prefix}.channels)")
            if not c.channels[0] <= ratio <= c.channels[1]:
                raise ConfigError(f"plan.layers[{c.layers[0]!r}].ratio", ratio, f"within {list(c.channels)}")
            if c.channels[0] < c.channels[1]:
                params[f"{c.prefix}.channels"] = float(ratio)
        for h in self.head_units:
            ratios = {layer: settings[layer].get("ratio", 0.0) if "structure" in settings[layer] else 0.0
                      for layer in h.layers}
            ratio = ratios[h.layers[0]]
            for layer, other in ratios.items():
                if other != ratio:
                    raise ConfigError(f"plan.layers[{layer!r}].ratio", other, f"{ratio}, the head ratio of "
                                      f"{h.layers[0]!r}: they share one ({h.prefix}.heads)")
            if not h.heads[0] <= ratio <= h.heads[1]:
                raise ConfigError(f"plan.layers[{h.layers[0]!r}].ratio", ratio, f"within {list(h.heads)}")
            if h.heads[0] < h.heads[1]:
                params[f"{h.prefix}.heads"] = float(ratio)
        for u in self.units:
            first = u.layers[0]
            s = settings[first]
            core = {k: v for k, v in s.items() if k not in _PER_LAYER_KEYS}  # checked per layer above and below
            for layer in u.layers[1:]:
                if {k: v for k, v in settings[layer].items() if k not in _PER_LAYER_KEYS} != core:
                    raise ConfigError(f"plan.layers[{layer!r}]", settings[layer],
                                      f"the settings of {first!r} ({s}): group {u.group!r} is tied")
            act = {layer: settings[layer]["act_bits"] if "act_quant" in settings[layer] else 32 for layer in u.layers}
            for layer in u.layers:
                if layer not in u.act_layers and "act_quant" in settings[layer]:
                    raise ConfigError(f"plan.layers[{layer!r}].act_quant", settings[layer]["act_quant"],
                                      "no activation method: the space searches no act_bits on this layer")
            if u.act_layers:
                act_bits = act[u.act_layers[0]]
                for layer in u.act_layers:
                    if act[layer] != act_bits:
                        raise ConfigError(f"plan.layers[{layer!r}].act_bits", act[layer], f"{act_bits}, the act_bits "
                                          f"of {u.act_layers[0]!r}: they share one ({u.prefix}.act_bits)")
                if act_bits not in u.act_bits:
                    raise ConfigError(f"plan.layers[{u.act_layers[0]!r}].act_bits", act_bits, list(u.act_bits))
                if len(u.act_bits) > 1:
                    params[f"{u.prefix}.act_bits"] = int(act_bits)
            if not u.sparsity[0] <= s["sparsity"] <= u.sparsity[1]:
                raise ConfigError(f"plan.layers[{first!r}].sparsity", s["sparsity"], f"within {list(u.sparsity)}")
            prune = s.get("prune", "magnitude_pruning")
            if prune not in u.pruning:
                raise ConfigError(f"plan.layers[{first!r}].prune", prune, u.pruning)
            method = s.get("quant", "uniform_quantization")
            if method == "uniform_quantization" and method not in u.methods and s["bits"] == 32:
                method = next(m for m in u.methods if _takes_bits(m))  # fp32 under another bit method
            if method not in u.methods:
                raise ConfigError(f"plan.layers[{first!r}].quant", method, u.methods)
            if _takes_bits(method) and s["bits"] not in u.bits:
                raise ConfigError(f"plan.layers[{first!r}].bits", s["bits"], u.bits)
            chosen = s.get("factorize", NO_FACTORIZATION)
            ranges = dict(u.factorize)
            if chosen != NO_FACTORIZATION:
                if chosen not in ranges:
                    raise ConfigError(f"plan.layers[{first!r}].factorize", chosen, [NO_FACTORIZATION, *ranges])
                low, high = ranges[chosen]
                if s.get("rank_ratio") is None or not low <= s["rank_ratio"] <= high:
                    raise ConfigError(f"plan.layers[{first!r}].rank_ratio", s.get("rank_ratio"),
                                      f"within {[low, high]} for {chosen}")
            if u.sparsity[0] < u.sparsity[1]:
                params[f"{u.prefix}.sparsity"] = float(s["sparsity"])
            if len(u.pruning) > 1 and u.sparsity[1] > 0.0:
                params[f"{u.prefix}.prune"] = prune
            if len(u.methods) > 1:
                params[f"{u.prefix}.quant"] = method
            if len(u.bits) > 1 and _takes_bits(method):
                params[f"{u.prefix}.bits"] = int(s["bits"])
            if u.factorize:
                params[f"{u.prefix}.factorize"] = chosen
            if chosen != NO_FACTORIZATION and ranges[chosen][0] < ranges[chosen][1]:
                params[f"{u.prefix}.rank_ratio"] = float(s["rank_ratio"])
        if self.decode(params) != plan:  # e.g. method fields the space does not search
            raise ConfigError("plan", plan.summary(), "a plan this space can sample (default method fields)")
        return params

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, logged with each search."""
        out = {
            "layers": list(self.layers),
            "sparsity": list(self.sparsity),
            "bits": list(self.bits),
            "dimensions": self.dimensions,
        }
        if self.methods != DEFAULT_METHODS:
            out["methods"] = list(self.methods)
        if self.pruning != DEFAULT_PRUNING:
            out["pruning"] = list(self.pruning)
        if any(u.channels is not None for u in self.units):
            out["channels"] = None if self.channels is None else list(self.channels)
            out["channel_importance"] = self.channel_importance
            out["channel_units"] = [{"name": c.prefix, "layers": list(c.layers), "channels": list(c.channels)}
                                    for c in self.channel_units]
            if self.channels_refused:
                out["channels_refused"] = dict(self.channels_refused)
        if any(u.heads is not None for u in self.units):
            out["heads"] = None if self.heads is None else list(self.heads)
            out["head_units"] = [{"name": h.prefix, "layers": list(h.layers), "heads": list(h.heads)}
                                 for h in self.head_units]
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
        if self.exclude:
            out["exclude"] = list(self.exclude)
        if self.default_excluded:
            out["default_excluded"] = dict(self.default_excluded)
        if self.include:
            out["include"] = list(self.include)
        if self.groups:
            out["groups"] = [
                {"name": g.name, "tie": g.tie, "layers": [n for n in self.layers if self.group_of.get(n) == g.name],
                 "sparsity": list(u.sparsity), "bits": list(u.bits), "methods": list(u.methods),
                 **{f: list(v) for f in ("channels", "factorize", "rank_ratio", "pruning", "heads", "act_bits")
                    if (v := getattr(g, f)) is not None},
                 "dimensions": sum(_unit_dims(v) for v in self.units if v.group == g.name)}
                for g in self.groups
                for u in [next(v for v in self.units if v.group == g.name)]
            ]
        return out


def _unit_dims(u: Unit) -> int:
    with_bits = any(_takes_bits(m) for m in u.methods)
    dims = int(u.sparsity[0] < u.sparsity[1]) + int(len(u.methods) > 1) + int(len(u.bits) > 1 and with_bits)
    dims += int(len(u.pruning) > 1 and u.sparsity[1] > 0.0)
    # the factorize choice, and rank_ratio (sampled in some trials only) counted once
    dims += int(len(u.act_bits) > 1)
    return dims + int(bool(u.factorize)) + int(any(low < high for _, (low, high) in u.factorize))


def _channel_dims(c: ChannelUnit) -> int:
    return int(c.channels[0] < c.channels[1])


def _head_dims(h: HeadUnit) -> int:
    return int(h.heads[0] < h.heads[1])


def _checked(field: str, sparsity: Iterable[float], bits: Iterable[int], methods: Iterable[str]
             ) -> tuple[tuple[float, float], tuple[int, ...], tuple[str, ...]]:
    """Validated, normalised (sparsity, bits, methods) of the space or of one group."""
    low, high = (float(v) for v in sparsity)
    if not (0.0 <= low <= high <= MAX_SPARSITY):
        raise ConfigError(f"{field}.sparsity", [low, high], f"[low, high] with 0 <= low <= high <= {MAX_SPARSITY}")
    bits = tuple(sorted({int(b) for b in bits}))
    bad = [b for b in bits if b not in ALLOWED_BITS]
    if bad or not bits:
        raise ConfigError(f"{field}.bits", list(bits), "a non-empty subset of 2..16 and 32")
    methods = tuple(dict.fromkeys(methods))
    if not methods or any(m not in QUANT_METHODS for m in methods):
        raise ConfigError(f"{field}.methods", list(methods), f"a non-empty subset of {', '.join(QUANT_METHODS)}")
    for m in methods:
        too_big = [b for b in bits if b != 32 and b > _MAX_BITS.get(m, 32)]
        if _takes_bits(m) and too_big:
            raise ConfigError(f"{field}.bits", list(bits), f"bit-widths up to {_MAX_BITS[m]} (and 32) with {m} "
                              f"in {field}.methods; {too_big} are too wide")
    return (low, high), bits, methods


def _checked_structure(field: str, channels: Any, factorize: Any, rank_ratio: Any, pruning: Any
                       ) -> tuple[tuple[float, float] | None, tuple[str, ...], tuple[float, float], tuple[str, ...]]:
    """Validated, normalised (channels, factorize, rank_ratio, pruning) of the space or of one group."""
    def shown(v: Any) -> Any:
        return list(v) if isinstance(v, (tuple, list)) else v

    factorize = (factorize,) if isinstance(factorize, str) else tuple(factorize)
    pruning = (pruning,) if isinstance(pruning, str) else tuple(pruning)
    try:
        channels = None if channels is None else channel_range(channels)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}.channels", shown(channels), str(exc)) from None
    try:
        rank_ratio = DEFAULT_RANK_RATIO if rank_ratio is None else rank_range(rank_ratio)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}.rank_ratio", shown(rank_ratio), str(exc)) from None
    try:
        factorize = canonical_names(factorize, FACTORIZATIONS)
    except ValueError as exc:
        raise ConfigError(f"{field}.factorize", list(factorize), str(exc)) from None
    if not pruning:
        raise ConfigError(f"{field}.pruning", [], f"a non-empty list of {', '.join(PRUNINGS)}")
    try:
        pruning = canonical_names(pruning, PRUNINGS)
    except ValueError as exc:
        raise ConfigError(f"{field}.pruning", list(pruning), str(exc)) from None
    return channels, factorize, rank_ratio, pruning


def _checked_heads_act(field: str, heads: Any, act_bits: Any
                       ) -> tuple[tuple[float, float] | None, tuple[int, ...]]:
    """Validated, normalised (heads, act_bits) of the space or of one group."""
    def shown(v: Any) -> Any:
        return list(v) if isinstance(v, (tuple, list)) else v

    try:
        heads = None if heads is None else head_range(heads)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}.heads", shown(heads), str(exc)) from None
    try:
        act_bits = act_bits_tuple(act_bits)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field}.act_bits", shown(act_bits), str(exc)) from None
    return heads, act_bits


# -- what the model allows: probes of the methods' own checks ------------------------


def _model_for(option: str, value: Any, model: nn.Module | None) -> nn.Module:
    if model is None:
        raise ConfigError(f"space.{option}", value, "a space built from its model: "
                          "CompressionSpace.from_model(model, ...) or SpaceConfig.build(model, ...)")
    return model


def _layer(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module | None]:
    """The compressible layer ``name`` of ``model`` and its parent module."""
    layers = compressible_layers(model)
    if name not in layers:
        raise ConfigError("layers", name, f"compressible layers of the model: {list(layers)}")
    return layers[name], (model.get_submodule(name.rpartition(".")[0]) if name else None)


def _rank_cap(method: str, layer: str, module: nn.Module) -> float:
    """The largest rank_ratio (in steps of 1/_RANK_STEPS) whose rank ``method`` accepts for ``module``; 0 if none.

    The parameter count of a factorization grows with its rank(s), which grow
    with rank_ratio, so the accepted ratios are an interval (0, cap]: a
    bisection on the method's own ``validate()`` finds ``cap``.
    """
    cls = get_method(method)

    def saves(step: int) -> bool:
        try:
            cls(rank_ratio=step / _RANK_STEPS).validate(layer, module)
        except ConfigError:
            return False
        return True

    if not saves(1):
        return 0.0
    low, high = 1, _RANK_STEPS
    if saves(high):
        return 1.0
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if saves(mid) else (low, mid)
    return low / _RANK_STEPS


def _rank_caps(model: nn.Module, layers: Sequence[str], wanted: Mapping[str, tuple[str, ...]]
               ) -> dict[str, dict[str, float]]:
    """Per layer, each wanted factorization that applies to it with its rank_ratio cap."""
    caps: dict[str, dict[str, float]] = {}
    for name in layers:
        module, parent = _layer(model, name)
        applies, _ = method_support(name, module, parent)
        caps[name] = {}
        for method in wanted[name]:
            # Tucker-2 of a 1x1 conv is a low-rank factorization with one factor more: never worth a choice.
            if method not in applies or (method == "tucker2" and math.prod(module.kernel_size) == 1):
                continue
            cap = _rank_cap(method, name, module)
            if cap > 0.0:
                caps[name][method] = cap
    return caps


def _channel_support(model: nn.Module, probe_ratio: Mapping[str, float], example_input: Any
                     ) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Which layers ChannelPruning can search, and the compressible layers losing the same channels as each.

    ``validate()`` judges a layer alone; what its channels are coupled to (a
    residual addition, the model's output) only shows on the traced graph, so
    each layer is also pruned once, at its highest ratio, on a copy of the
    model through the engine's own structure stage, which refuses a layer
    whose channels reach the model's output or that torch-pruning mis-traces.
    Cost: one copy and one trace of the model per layer (per coupled set:
    its other layers share the answer).

    Returns:
        ``({layer: coupled layers, itself included}, {layer: why it cannot be searched})``.
    """
    coupled: dict[str, tuple[str, ...]] = {}
    refused: dict[str, str] = {}
    names = list(compressible_layers(model))
    for name, high in probe_ratio.items():
        known = next((group for group in coupled.values() if name in group), None)
        if known is not None:  # the same DepGraph group as a layer probed already: the same answer
            coupled[name] = known
            continue
        module, parent = _layer(model, name)
        applies, why = method_support(name, module, parent)
        if ChannelPruning.method not in applies:
            refused[name] = why[ChannelPruning.method]
            continue
        channels = module.weight.shape[0]
        if channels < 2:
            refused[name] = "a layer with more than one output channel"
            continue
        ratio = min(max(high, 1.0 / channels), (channels - 1) / channels)  # removes at least one, keeps one
        try:
            spec = prune_structure(copy.deepcopy(model), {name: ChannelPruning(ratio)}, example_input)
        except ConfigError as exc:
            if exc.field == "example_input":
                raise
            refused[name] = exc.valid if isinstance(exc.valid, str) else str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a graph torch-pruning cannot trace: no dimension, not a crash
            refused[name] = f"a layer torch-pruning can trace ({type(exc).__name__}: {exc})"
            continue
        out = {op[0] for op in spec[f"{name}@{ChannelPruning.method}"]["ops"] if op[1] == "out"}
        coupled[name] = tuple(n for n in names if n in out or n == name)
    return coupled, refused


def _head_refusal(model: nn.Module, layer: str, attention: nn.Module | None, high: float, example_input: Any
                  ) -> str | None:
    """Why HeadPruning cannot search the query ``layer`` (None: it can).

    As for channels, ``validate()`` sees the Linear alone: that its parent is
    a self-attention whose key and value DepGraph couples to the query only
    shows on the traced graph, so one probe prunes a copy of the model at the
    highest ratio (at least one head removed, one kept) through the engine's
    own structure stage.
    """
    heads = getattr(attention, "num_attention_heads", None)
    if isinstance(heads, int) and heads < 2:
        return "an attention with more than one head"
    ratio = min(max(high, 1.0 / heads), (heads - 1) / heads) if isinstance(heads, int) else high
    try:
        prune_structure(copy.deepcopy(model), {layer: HeadPruning(ratio)}, example_input)
    except ConfigError as exc:
        if exc.field == "example_input":
            raise
        return exc.valid if isinstance(exc.valid, str) else str(exc)
    except Exception as exc:  # noqa: BLE001 - a graph torch-pruning cannot trace: no dimension, not a crash
        return f"a layer torch-pruning can trace ({type(exc).__name__}: {exc})"
    return None
