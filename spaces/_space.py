"""A per-layer compression search space built from a model by introspection."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from torch import nn

from compression import CompressionPlan, FinetuneConfig, compressible_layers
from compression.errors import ConfigError

__all__ = ["ALLOWED_BITS", "MAX_SPARSITY", "CompressionSpace", "LayerInfo", "inspect_layers"]

#: Bit-widths the engine can pack; 32 leaves the layer's weights untouched (fp32).
ALLOWED_BITS: tuple[int, ...] = (*range(2, 17), 32)
#: Highest per-layer sparsity a space may ask for: beyond it a layer is gone.
MAX_SPARSITY = 0.95


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
    """Per-layer sparsity and bit-width, sampled define-by-run through Optuna.

    Each layer gets two dimensions, ``<layer>.sparsity`` (a float in
    ``sparsity``) and ``<layer>.bits`` (a choice among ``bits``; 32 leaves the
    weights in fp32). A sampled parameter dict decodes into a
    :class:`~compression.CompressionPlan`, which rebuilds the same model.

    Args:
        layers: Names of the layers to search (as in ``model.named_modules()``).
        sparsity: ``(low, high)`` per-layer sparsity range, within [0, 0.95].
        bits: Candidate bit-widths, from :data:`ALLOWED_BITS`.
        finetune: Fine-tuning applied after pruning, before quantization.
    """

    def __init__(
        self,
        layers: Sequence[str],
        *,
        sparsity: tuple[float, float] = (0.0, MAX_SPARSITY),
        bits: Iterable[int] = (2, 3, 4, 5, 6, 8, 16, 32),
        finetune: FinetuneConfig = FinetuneConfig(),
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
        self.layers = tuple(layers)
        self.sparsity = (low, high)
        self.bits = bits
        self.finetune = finetune

    @classmethod
    def from_model(cls, model: nn.Module, **kwargs: Any) -> CompressionSpace:
        """Search every Conv/Linear of ``model``."""
        return cls([info.name for info in inspect_layers(model)], **kwargs)

    @property
    def dimensions(self) -> int:
        """Number of searched dimensions (fixed ones are not counted)."""
        per_layer = int(self.sparsity[0] < self.sparsity[1]) + int(len(self.bits) > 1)
        return per_layer * len(self.layers)

    def suggest(self, trial: optuna.Trial) -> None:
        """Define-by-run sampling of one plan; usable as OptunaSearch's ``space``."""
        low, high = self.sparsity
        for layer in self.layers:
            if low < high:
                trial.suggest_float(f"{layer}.sparsity", low, high)
            if len(self.bits) > 1:
                trial.suggest_categorical(f"{layer}.bits", self.bits)
        return None

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The plan for a sampled parameter dict (fixed dimensions filled in)."""
        settings = {}
        for layer in self.layers:
            sparsity = params.get(f"{layer}.sparsity", self.sparsity[0])
            bits = params.get(f"{layer}.bits", self.bits[0])
            settings[layer] = {"sparsity": float(sparsity), "bits": int(bits)}
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
            if s["bits"] not in self.bits:
                raise ConfigError(f"plan.layers[{layer!r}].bits", s["bits"], self.bits)
            if self.sparsity[0] < self.sparsity[1]:
                params[f"{layer}.sparsity"] = float(s["sparsity"])
            if len(self.bits) > 1:
                params[f"{layer}.bits"] = int(s["bits"])
        return params

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, logged with each search."""
        return {
            "layers": list(self.layers),
            "sparsity": list(self.sparsity),
            "bits": list(self.bits),
            "dimensions": self.dimensions,
        }
