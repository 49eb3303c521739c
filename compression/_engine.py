"""The compression engine: apply a plan to a deep copy of a model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from compression._layers import COMPRESSIBLE_TYPES, compressible_layers
from compression._plan import CompressionPlan
from compression._registry import MethodConfig, get_handler, get_method
from compression._weights import CompressedWeight
from compression.errors import ConfigError

__all__ = ["COMPRESSIBLE_TYPES", "compressible_layers", "CompressedModel", "compress", "replace_module",
           "apply_structure"]


@dataclass
class CompressedModel:
    """Result of :func:`compress`.

    Attributes:
        model: The compressed deep copy, on CPU, in eval mode; each compressed
            layer's weight equals ``weights[name].dense()``.
        plan: The plan that produced it.
        weights: Stored representation of each layer the plan gave a method,
            by module name: a factorised layer ``fc`` contributes ``fc.0`` and
            ``fc.1``.
        structure: Layers whose module was replaced (factorize stage): name ->
            ``{"method": name, **spec}``, enough for :func:`apply_structure`
            to rebuild the untrained replacement.
    """

    model: nn.Module
    plan: CompressionPlan
    weights: dict[str, CompressedWeight]
    structure: dict[str, dict] = field(default_factory=dict)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted, not the root) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def apply_structure(model: nn.Module, structure: dict[str, dict]) -> None:
    """Replace each named module of ``model`` by its untrained factorised skeleton, in place."""
    for name, spec in structure.items():
        cls = get_method(spec["method"])
        replace_module(model, name, cls.rebuild(model.get_submodule(name), spec))


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
    https://arxiv.org/abs/1510.00149) per layer: factorize-stage methods
    replace the module by smaller ones (whose weights the later stages then
    treat as layers of their own), sparsify-stage methods build masks, the
    whole copy is optionally fine-tuned with the masks held fixed, then
    quantize-stage methods turn the surviving weights into codes and scales.
    Finally every compressed weight is replaced by
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
        ConfigError: ``plan`` names a layer that is not compressible, a
            method refuses its layer (:meth:`CompressionPlan.validate`), or
            fine-tuning is asked for without a loader / loss; raised before
            any work starts.
    """
    if not isinstance(plan, CompressionPlan):
        raise ConfigError("plan", plan, "a CompressionPlan")
    plan.validate(model)
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
    structure: dict[str, dict] = {}
    # Per compressed weight: the later-stage methods of the plan layer it belongs to.
    targets: dict[str, tuple[MethodConfig, ...]] = {}

    # 1) factorize: replace modules, their parts become the layers later stages see
    for name, methods in plan.layers.items():
        factorize = [cfg for cfg in methods if cfg.stage == "factorize"]
        if not methods:
            continue
        if not factorize:
            targets[name] = methods
            continue
        new, spec = get_handler(factorize[0])(layers[name], factorize[0])
        replace_module(work, name, new)
        structure[name] = {"method": factorize[0].method, **spec}
        for part, _ in new.named_children():
            targets[f"{name}.{part}"] = methods
    layers = compressible_layers(work)

    # 2) sparsify: masks (and the masked weights written back, so training starts from them)
    for name, methods in targets.items():
        module = layers[name]
        cw = CompressedWeight.from_dense(module.weight)
        for cfg in methods:
            if cfg.stage == "sparsify":
                cw = get_handler(cfg)(module, cw, cfg)
        weights[name] = cw
        with torch.no_grad():
            module.weight.copy_(cw.dense())

    # 3) fine-tune with masks held fixed
    if ft.epochs > 0:
        _finetune(work, layers, weights, train_loader, loss_fn, device, ft.epochs, ft.lr, ft.seed)
        weights = {n: CompressedWeight.from_dense(layers[n].weight, cw.mask) for n, cw in weights.items()}

    # 4) quantize the surviving weights, 5) materialise through dense()
    for name, cw in weights.items():
        module = layers[name]
        for cfg in targets[name]:
            if cfg.stage == "quantize":
                cw = get_handler(cfg)(module, cw, cfg)
        weights[name] = cw
        with torch.no_grad():
            module.weight.copy_(cw.dense())
    return CompressedModel(work.eval(), plan, weights, structure)


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
