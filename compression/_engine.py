"""The compression engine: apply a plan to a deep copy of a model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from compression._plan import CompressionPlan
from compression._registry import get_handler
from compression._weights import CompressedWeight
from compression.errors import ConfigError

__all__ = ["COMPRESSIBLE_TYPES", "compressible_layers", "CompressedModel", "compress"]

#: Layer types whose ``weight`` the engine can compress (output channel = dim 0).
COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Linear)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv1d / Conv2d / Linear of ``model`` by name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE_TYPES)}


@dataclass
class CompressedModel:
    """Result of :func:`compress`.

    Attributes:
        model: The compressed deep copy, on CPU, in eval mode; each compressed
            layer's weight equals ``weights[name].dense()``.
        plan: The plan that produced it.
        weights: Stored representation of each layer the plan gave a method.
    """

    model: nn.Module
    plan: CompressionPlan
    weights: dict[str, CompressedWeight]


def compress(
    model: nn.Module,
    plan: CompressionPlan,
    *,
    train_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> CompressedModel:
    """Compress a deep copy of ``model`` as ``plan`` says; ``model`` is never modified.

    Runs the Deep Compression pipeline (Han et al. 2015,
    https://arxiv.org/abs/1510.00149) per layer: sparsify-stage methods build
    masks, the whole copy is optionally fine-tuned with the masks held fixed,
    then quantize-stage methods turn the surviving weights into codes and
    scales. Finally every compressed weight is replaced by
    :meth:`CompressedWeight.dense`, the same function the packed loader uses.

    Args:
        model: Model to compress (left untouched).
        plan: Methods per layer and fine-tune settings.
        train_loader: ``(input, target)`` batches; required when
            ``plan.finetune.epochs > 0``.
        loss_fn: ``loss_fn(output, target) -> scalar``; required likewise.
        device: Device to fine-tune on. The returned model is on CPU.

    Returns:
        The compressed copy, its plan, and each layer's stored weight.

    Raises:
        ConfigError: ``plan`` names a layer that is not compressible, or
            fine-tuning is asked for without a loader / loss; raised before
            any work starts.
    """
    if not isinstance(plan, CompressionPlan):
        raise ConfigError("plan", plan, "a CompressionPlan")
    valid = list(compressible_layers(model))
    for name in plan.layers:
        if name not in valid:
            raise ConfigError(f"plan.layers[{name!r}]", name, valid)
    ft = plan.finetune
    if ft.epochs > 0:
        if train_loader is None:
            raise ConfigError("train_loader", None, "an iterable of (input, target) batches when finetune.epochs > 0")
        if loss_fn is None:
            raise ConfigError("loss_fn", None, "a callable loss_fn(output, target) when finetune.epochs > 0")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "a torch device such as 'cpu' or 'cuda:0'") from None

    work = copy.deepcopy(model).cpu()
    layers = compressible_layers(work)
    weights: dict[str, CompressedWeight] = {}

    # 1) sparsify: masks (and the masked weights written back, so training starts from them)
    for name, methods in plan.layers.items():
        if not methods:
            continue
        module = layers[name]
        cw = CompressedWeight.from_dense(module.weight)
        for cfg in methods:
            if cfg.stage == "sparsify":
                cw = get_handler(cfg)(module, cw, cfg)
        weights[name] = cw
        with torch.no_grad():
            module.weight.copy_(cw.dense())

    # 2) fine-tune with masks held fixed
    if ft.epochs > 0:
        _finetune(work, layers, weights, train_loader, loss_fn, device, ft.epochs, ft.lr, ft.seed)
        weights = {n: CompressedWeight.from_dense(layers[n].weight, cw.mask) for n, cw in weights.items()}

    # 3) quantize the surviving weights, 4) materialise through dense()
    for name, cw in weights.items():
        module = layers[name]
        for cfg in plan.layers[name]:
            if cfg.stage == "quantize":
                cw = get_handler(cfg)(module, cw, cfg)
        weights[name] = cw
        with torch.no_grad():
            module.weight.copy_(cw.dense())
    return CompressedModel(work.eval(), plan, weights)


def _finetune(
    model: nn.Module,
    layers: dict[str, nn.Module],
    weights: dict[str, CompressedWeight],
    loader: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    device: torch.device,
    epochs: int,
    lr: float,
    seed: int,
) -> None:
    torch.manual_seed(seed)
    model.to(device).train()
    masked = [(layers[n].weight, cw.mask.to(device)) for n, cw in weights.items() if cw.mask is not None]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(epochs):
        for inputs, targets in loader:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(inputs.to(device)), targets.to(device)).backward()
            opt.step()
            # Adam's momentum moves pruned weights even with zero gradient; re-zero them.
            with torch.no_grad():
                for w, mask in masked:
                    w.masked_fill_(~mask, 0.0)
    model.cpu()
