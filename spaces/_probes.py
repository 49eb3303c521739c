"""Model probes: what a model allows a space to search, asked of the methods' own checks."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from rayzor.compression import ChannelPruning, HeadPruning, MethodConfig, compressible_layers, get_method
from rayzor.compression._structured import prune_structure
from rayzor.errors import ConfigError
from rayzor.spaces._introspect import Layer, layers_of, method_support

__all__ = ["channel_support", "head_refusal", "layer_of", "model_for", "rank_caps"]

#: rank_ratio resolution of the per-layer cap (the largest ratio whose rank still saves parameters).
_RANK_STEPS = 1000


def model_for(option: str, value: Any, model: nn.Module | None) -> nn.Module:
    """``model``, which the setting ``space.<option>`` needs to be probed."""
    if model is None:
        raise ConfigError(
            f"space.{option}",
            value,
            "a space built from its model: CompressionSpace.from_model(model, ...) or SpaceConfig.build(model, ...)",
        )
    return model


def layer_of(model: nn.Module, name: str) -> tuple[Layer, nn.Module | None]:
    """The compressible layer ``name`` of ``model`` and its parent module."""
    layers = layers_of(model)
    if name not in layers:
        raise ConfigError("layers", name, f"compressible layers of the model: {list(layers)}")
    return layers[name], (model.get_submodule(name.rpartition(".")[0]) if name else None)


def _rank_cap(method: str, layer: str, module: nn.Module) -> float:
    """The largest rank_ratio (in steps of 1/_RANK_STEPS) whose rank ``method`` accepts for ``module``; 0 if none.

    The parameter count of a factorization grows with its rank(s), which grow
    with rank_ratio, so the accepted ratios are an interval (0, cap]: a
    bisection on the method's own ``validate()`` finds ``cap``.
    """
    # a factorization's config takes rank_ratio, which MethodConfig itself does not declare
    cls: Callable[..., MethodConfig] = get_method(method)

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


def rank_caps(
    model: nn.Module, layers: Sequence[str], wanted: Mapping[str, tuple[str, ...]]
) -> dict[str, dict[str, float]]:
    """Per layer, each wanted factorization that applies to it with its rank_ratio cap."""
    caps: dict[str, dict[str, float]] = {}
    for name in layers:
        module, parent = layer_of(model, name)
        applies, _ = method_support(name, module, parent)
        caps[name] = {}
        for method in wanted[name]:
            # Tucker-2 of a 1x1 conv is a low-rank factorization with one factor more: never worth a choice
            # (it applies to convs only, the layers with a kernel_size).
            if method not in applies or (
                method == "tucker2"
                and isinstance(module, (nn.Conv1d, nn.Conv2d))
                and math.prod(module.kernel_size) == 1
            ):
                continue
            cap = _rank_cap(method, name, module)
            if cap > 0.0:
                caps[name][method] = cap
    return caps


def channel_support(
    model: nn.Module, probe_ratio: Mapping[str, float], example_input: Any
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
        module, parent = layer_of(model, name)
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


def head_refusal(
    model: nn.Module, layer: str, attention: nn.Module | None, high: float, example_input: Any
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
