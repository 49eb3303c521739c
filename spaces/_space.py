"""A per-layer compression search space built from a model by introspection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from compression import CompressionPlan, FinetuneConfig, compressible_layers, get_method, list_methods
from compression.errors import ConfigError
from spaces._groups import ALLOWED_BITS, MAX_SPARSITY, GroupSpec, Unit, match_layers

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "DEFAULT_METHODS", "QUANT_METHODS", "CompressionSpace", "GroupSpec",
           "LayerInfo", "inspect_layers"]

#: The quantization methods a space chooses among by default: today's uniform-only space.
DEFAULT_METHODS: tuple[str, ...] = ("uniform_quantization",)
#: Quantize-stage methods a space can choose among, per layer.
QUANT_METHODS: tuple[str, ...] = tuple(m for m in list_methods() if get_method(m).stage == "quantize")
#: Highest bit-width each bit-taking method accepts (their lowest is <= 2).
_MAX_BITS = {"uniform_quantization": 16, "kmeans_quantization": 8}


def _takes_bits(method: str) -> bool:
    return any(f == "bits" for f in get_method(method).__dataclass_fields__)


@dataclass(frozen=True)
class LayerInfo:
    """One compressible layer as introspection sees it."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int


def inspect_layers(model: nn.Module) -> list[LayerInfo]:
    """Every Conv/Linear layer of ``model``, in module order, with its shape."""
    return [
        LayerInfo(
            name=name,
            kind=type(module).__name__,
            weight_shape=tuple(module.weight.shape),
            params=module.weight.numel(),
        )
        for name, module in compressible_layers(model).items()
    ]


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

    Attributes:
        units: The sampled units in model order: one per layer, one per tied group.
        group_of: Group name of each grouped layer.
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
    ) -> None:
        if not layers:
            raise ConfigError("layers", list(layers), "at least one Conv/Linear layer")
        self.sparsity, self.bits, self.methods = _checked("space", sparsity, bits, methods)
        self.groups = tuple(g if isinstance(g, GroupSpec) else GroupSpec.model_validate(g) for g in groups)
        self.exclude = tuple(exclude)
        kept, owner = match_layers(tuple(layers), self.groups, self.exclude)
        if not kept:
            raise ConfigError("space.exclude", list(self.exclude), f"globs that leave at least one of {list(layers)}")
        self.layers = kept
        self.finetune = finetune
        self.group_of = {name: g.name for name, g in owner.items()}
        self.units = self._units(owner)
        self.warm_start: list[dict[str, Any]] = []

    def _units(self, owner: Mapping[str, GroupSpec]) -> tuple[Unit, ...]:
        # In model order; a tied group sits where its first layer is.
        resolved = {}
        for group in self.groups:
            field = f"space.groups[{group.name}]"
            resolved[group.name] = _checked(field, self.sparsity if group.sparsity is None else group.sparsity,
                                            self.bits if group.bits is None else group.bits,
                                            self.methods if group.methods is None else group.methods)
        units: list[Unit] = []
        done: set[str] = set()
        for layer in self.layers:
            group = owner.get(layer)
            if group is None:
                units.append(Unit(layer, (layer,), self.sparsity, self.bits, self.methods))
            elif not group.tie:
                units.append(Unit(layer, (layer,), *resolved[group.name], group=group.name))
            elif group.name not in done:
                done.add(group.name)
                members = tuple(n for n in self.layers if owner.get(n) is group)
                units.append(Unit(group.name, members, *resolved[group.name], group=group.name))
        return tuple(units)

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> CompressionSpace:
        """Search every Conv/Linear of ``model`` (less ``exclude``, grouped by ``groups``)."""
        return cls([info.name for info in inspect_layers(model)], **kwargs)

    @property
    def dimensions(self) -> int:
        """Number of searched dimensions (fixed ones are not counted)."""
        return sum(_unit_dims(u) for u in self.units)

    def layer_dimensions(self) -> dict[str, int]:
        """Searched dimensions per layer; a tied group's count under each of its layers."""
        return {layer: _unit_dims(u) for u in self.units for layer in u.layers}

    def suggest(self, trial: optuna.Trial) -> None:
        """Define-by-run sampling of one plan; usable as OptunaSearch's ``space``."""
        for u in self.units:
            low, high = u.sparsity
            if low < high:
                trial.suggest_float(f"{u.prefix}.sparsity", low, high)
            method = u.methods[0]
            if len(u.methods) > 1:
                method = trial.suggest_categorical(f"{u.prefix}.quant", u.methods)
            if len(u.bits) > 1 and _takes_bits(method):
                trial.suggest_categorical(f"{u.prefix}.bits", u.bits)
        return None

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan for a sampled parameter dict (fixed dimensions filled in)."""
        settings = {}
        for u in self.units:
            sparsity = params.get(f"{u.prefix}.sparsity", u.sparsity[0])
            method = params.get(f"{u.prefix}.quant", u.methods[0])
            flat: dict[str, Any] = {"sparsity": float(sparsity)}
            if _takes_bits(method):
                flat["bits"] = int(params.get(f"{u.prefix}.bits", u.bits[0]))
                if method != "uniform_quantization" and flat["bits"] != 32:  # 32 = fp32 for every method
                    flat["quant"] = method
            else:
                flat["quant"] = method
            for layer in u.layers:
                settings[layer] = dict(flat)
        settings = {layer: settings[layer] for layer in self.layers}  # model order, whatever the units' order
        return CompressionPlan.from_settings(settings, finetune=self.finetune)

    def uniform_params(self, bits: int) -> dict[str, Any]:
        """Params of the hand-tried "``bits`` everywhere" plan, kept inside every unit's ranges.

        Each unit takes its lowest sparsity, uniform quantization where it may
        (else its first method), and its candidate bit-width nearest ``bits``
        (a group with fixed bits keeps them). Without groups every layer gets
        exactly ``bits``, when ``bits`` is a candidate.
        """
        params: dict[str, Any] = {}
        for u in self.units:
            if u.sparsity[0] < u.sparsity[1]:
                params[f"{u.prefix}.sparsity"] = u.sparsity[0]
            method = "uniform_quantization" if "uniform_quantization" in u.methods else u.methods[0]
            if len(u.methods) > 1:
                params[f"{u.prefix}.quant"] = method
            if len(u.bits) > 1 and _takes_bits(method):
                params[f"{u.prefix}.bits"] = min(u.bits, key=lambda b: (abs(b - bits), b))
        return params

    def encode(self, plan: CompressionPlan) -> dict[str, Any]:
        """The parameter dict that decodes to ``plan`` (e.g. to enqueue it)."""
        settings = plan.settings()
        if sorted(settings) != sorted(self.layers):
            raise ConfigError("plan.layers", sorted(settings), f"exactly the space's layers {list(self.layers)}")
        if plan.finetune != self.finetune:
            raise ConfigError("plan.finetune", plan.finetune, f"the space's {self.finetune}")
        params: dict[str, Any] = {}
        for u in self.units:
            first = u.layers[0]
            s = settings[first]
            for layer in u.layers[1:]:
                if settings[layer] != s:
                    raise ConfigError(f"plan.layers[{layer!r}]", settings[layer],
                                      f"the settings of {first!r} ({s}): group {u.group!r} is tied")
            if not u.sparsity[0] <= s["sparsity"] <= u.sparsity[1]:
                raise ConfigError(f"plan.layers[{first!r}].sparsity", s["sparsity"], f"within {list(u.sparsity)}")
            method = s.get("quant", "uniform_quantization")
            if method == "uniform_quantization" and method not in u.methods and s["bits"] == 32:
                method = next(m for m in u.methods if _takes_bits(m))  # fp32 under another bit method
            if method not in u.methods:
                raise ConfigError(f"plan.layers[{first!r}].quant", method, u.methods)
            if _takes_bits(method) and s["bits"] not in u.bits:
                raise ConfigError(f"plan.layers[{first!r}].bits", s["bits"], u.bits)
            if u.sparsity[0] < u.sparsity[1]:
                params[f"{u.prefix}.sparsity"] = float(s["sparsity"])
            if len(u.methods) > 1:
                params[f"{u.prefix}.quant"] = method
            if len(u.bits) > 1 and _takes_bits(method):
                params[f"{u.prefix}.bits"] = int(s["bits"])
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
        if self.exclude:
            out["exclude"] = list(self.exclude)
        if self.groups:
            out["groups"] = [
                {"name": g.name, "tie": g.tie, "layers": [n for n in self.layers if self.group_of.get(n) == g.name],
                 "sparsity": list(u.sparsity), "bits": list(u.bits), "methods": list(u.methods),
                 "dimensions": sum(_unit_dims(v) for v in self.units if v.group == g.name)}
                for g in self.groups
                for u in [next(v for v in self.units if v.group == g.name)]
            ]
        return out


def _unit_dims(u: Unit) -> int:
    with_bits = any(_takes_bits(m) for m in u.methods)
    return int(u.sparsity[0] < u.sparsity[1]) + int(len(u.methods) > 1) + int(len(u.bits) > 1 and with_bits)


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
