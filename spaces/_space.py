"""A per-layer compression search space built from a model by introspection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from compression import CompressionPlan, FinetuneConfig, compressible_layers, get_method, list_methods
from compression.errors import ConfigError

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "DEFAULT_METHODS", "QUANT_METHODS", "CompressionSpace", "LayerInfo",
           "inspect_layers"]

#: Bit-widths the engine can pack; 32 leaves the layer's weights untouched (fp32).
ALLOWED_BITS: tuple[int, ...] = (*range(2, 17), 32)
#: Highest per-layer sparsity a space may ask for: beyond it a layer is gone.
MAX_SPARSITY = 0.95
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
    """

    def __init__(
        self,
        layers: Sequence[str],
        *,
        sparsity: tuple[float, float] = (0.0, MAX_SPARSITY),
        bits: Iterable[int] = (2, 3, 4, 5, 6, 8, 16, 32),
        finetune: FinetuneConfig = FinetuneConfig(),
        methods: Iterable[str] = DEFAULT_METHODS,
    ) -> None:
        if not layers:
            raise ConfigError("layers", list(layers), "at least one Conv/Linear layer")
        low, high = (float(v) for v in sparsity)
        if not (0.0 <= low <= high <= MAX_SPARSITY):
            raise ConfigError("space.sparsity", [low, high], f"[low, high] with 0 <= low <= high <= {MAX_SPARSITY}")
        bits = tuple(sorted({int(b) for b in bits}))
        bad = [b for b in bits if b not in ALLOWED_BITS]
        if bad or not bits:
            raise ConfigError("space.bits", list(bits), "a non-empty subset of 2..16 and 32")
        methods = tuple(dict.fromkeys(methods))
        if not methods or any(m not in QUANT_METHODS for m in methods):
            raise ConfigError("space.methods", list(methods), f"a non-empty subset of {', '.join(QUANT_METHODS)}")
        for m in methods:
            too_big = [b for b in bits if b != 32 and b > _MAX_BITS.get(m, 32)]
            if _takes_bits(m) and too_big:
                raise ConfigError("space.bits", list(bits), f"bit-widths up to {_MAX_BITS[m]} (and 32) with {m} "
                                  f"in space.methods; {too_big} are too wide")
        self.layers = tuple(layers)
        self.sparsity = (low, high)
        self.bits = bits
        self.finetune = finetune
        self.methods = methods

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> CompressionSpace:
        """Search every Conv/Linear of ``model``."""
        return cls([info.name for info in inspect_layers(model)], **kwargs)

    @property
    def dimensions(self) -> int:
        """Number of searched dimensions (fixed ones are not counted)."""
        with_bits = any(_takes_bits(m) for m in self.methods)
        per_layer = int(self.sparsity[0] < self.sparsity[1]) + int(len(self.methods) > 1)
        per_layer += int(len(self.bits) > 1 and with_bits)
        return per_layer * len(self.layers)

    def suggest(self, trial: optuna.Trial) -> None:
        """Define-by-run sampling of one plan; usable as OptunaSearch's ``space``."""
        low, high = self.sparsity
        for layer in self.layers:
            if low < high:
                trial.suggest_float(f"{layer}.sparsity", low, high)
            method = self.methods[0]
            if len(self.methods) > 1:
                method = trial.suggest_categorical(f"{layer}.quant", self.methods)
            if len(self.bits) > 1 and _takes_bits(method):
                trial.suggest_categorical(f"{layer}.bits", self.bits)
        return None

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan for a sampled parameter dict (fixed dimensions filled in)."""
        settings = {}
        for layer in self.layers:
            sparsity = params.get(f"{layer}.sparsity", self.sparsity[0])
            method = params.get(f"{layer}.quant", self.methods[0])
            flat: dict[str, Any] = {"sparsity": float(sparsity)}
            if _takes_bits(method):
                flat["bits"] = int(params.get(f"{layer}.bits", self.bits[0]))
                if method != "uniform_quantization" and flat["bits"] != 32:  # 32 = fp32 for every method
                    flat["quant"] = method
            else:
                flat["quant"] = method
            settings[layer] = flat
        return CompressionPlan.from_settings(settings, finetune=self.finetune)

    def encode(self, plan: CompressionPlan) -> dict[str, Any]:
        """The parameter dict that decodes to ``plan`` (e.g. to enqueue it)."""
        settings = plan.settings()
        if sorted(settings) != sorted(self.layers):
            raise ConfigError("plan.layers", sorted(settings), f"exactly the space's layers {list(self.layers)}")
        if plan.finetune != self.finetune:
            raise ConfigError("plan.finetune", plan.finetune, f"the space's {self.finetune}")
        params: dict[str, Any] = {}
        for layer in self.layers:
            s = settings[layer]
            if not self.sparsity[0] <= s["sparsity"] <= self.sparsity[1]:
                raise ConfigError(f"plan.layers[{layer!r}].sparsity", s["sparsity"], f"within {list(self.sparsity)}")
            method = s.get("quant", "uniform_quantization")
            if method == "uniform_quantization" and method not in self.methods and s["bits"] == 32:
                method = next(m for m in self.methods if _takes_bits(m))  # fp32 under another bit method
            if method not in self.methods:
                raise ConfigError(f"plan.layers[{layer!r}].quant", method, self.methods)
            if _takes_bits(method) and s["bits"] not in self.bits:
                raise ConfigError(f"plan.layers[{layer!r}].bits", s["bits"], self.bits)
            if self.sparsity[0] < self.sparsity[1]:
                params[f"{layer}.sparsity"] = float(s["sparsity"])
            if len(self.methods) > 1:
                params[f"{layer}.quant"] = method
            if len(self.bits) > 1 and _takes_bits(method):
                params[f"{layer}.bits"] = int(s["bits"])
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
        return out
