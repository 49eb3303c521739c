"""Which layers of a model the engine can compress."""

from __future__ import annotations

from torch import nn

__all__ = ["COMPRESSIBLE_TYPES", "compressible_layers"]

#: Layer types whose ``weight`` the engine can compress (output channel = dim 0;
#: for an Embedding that is one vocabulary row, so scales are per token).
COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv1d / Conv2d / Linear / Embedding of ``model`` by name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE_TYPES)}
