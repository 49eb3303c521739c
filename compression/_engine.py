"""The compression engine: apply a plan to a deep copy of a model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from rayzor.compression._actquant import calibrate_activations, calibration_inputs, input_layer
from rayzor.compression._calibration import LayerStats, collect_layer_stats
from rayzor.compression._distill import check_teacher_logits, frozen_copy, indexed_loader, mixed_loss
from rayzor.compression._layers import COMPRESSIBLE_TYPES, compressible_layers
from rayzor.compression._plan import CompressionPlan, FinetuneConfig
from rayzor.compression._registry import MethodConfig, get_handler, get_method
from rayzor.compression._structured import prune_structure
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = [
    "COMPRESSIBLE_TYPES",
    "compressible_layers",
    "CompressedModel",
    "compress",
    "replace_module",
    "apply_structure",
]


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
            to rebuild the untrained replacement; structure-stage methods
            (channels / heads removed) add ``"<layer>@<method>"`` ->
            ``{"method", "step", "layer", "keep", "ops", ...}``, replayed
            first in ``step`` order.
        activations: Layers whose input is quantized (activation stage),
            each now a :class:`compression.QuantizedInput` whose layer (and
            stored weight) is ``name.layer``: name -> ``{"method": name,
            **spec}``; scale and zero point are buffers of the model.
    """

    model: nn.Module
    plan: CompressionPlan
    weights: dict[str, CompressedWeight]
    structure: dict[str, dict] = field(default_factory=dict)
    activations: dict[str, dict] = field(default_factory=dict)
    #: Weights whose calibration statistics this call computed (not found, or not fitting, in ``calibration_stats``).
    stats_computed: tuple[str, ...] = ()


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted, not the root) is."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def apply_structure(model: nn.Module, structure: dict[str, dict]) -> None:
    """Cut a freshly built ``model`` to the skeleton ``structure`` records, in place, deterministically.

    Structure-stage entries (removed channels / heads) are replayed first,
    in their recorded ``step`` order and without tracing; then each
    factorised module is replaced by its untrained skeleton.
    """
    pruned = [spec for spec in structure.values() if get_method(spec["method"]).stage == "structure"]
    for spec in sorted(pruned, key=lambda spec: int(spec["step"])):
        get_method(spec["method"]).replay(model, spec)
    for name, spec in structure.items():
        cls = get_method(spec["method"])
        if cls.stage != "structure":
            replace_module(model, name, cls.rebuild(model.get_submodule(name), spec))


def compress(
    model: nn.Module,
    plan: CompressionPlan,
    *,
    train_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    device: str | torch.device = "cpu",
    calibration_data: Iterable[Tensor | tuple[Tensor, Tensor]] | None = None,
    example_input: Any = None,
    teacher_logits: Tensor | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    calibration_stats: Mapping[str, LayerStats] | None = None,
) -> CompressedModel:
    """Compress a deep copy of ``model`` as ``plan`` says; ``model`` is never modified.

    Runs the Deep Compression pipeline (Han et al. 2015,
    https://arxiv.org/abs/1510.00149) per layer: factorize-stage methods
    replace the module by smaller ones (whose weights the later stages then
    treat as layers of their own), sparsify-stage methods build masks, the
    whole copy is optionally fine-tuned with the masks held fixed, then
    quantize-stage methods turn the surviving weights into codes and scales
    (calibrated ones, GPTQ and AWQ, from their layers' input statistics).
    Finally every compressed weight is replaced by
    :meth:`CompressedWeight.dense`, the same function the packed loader uses.

    Args:
        model: Model to compress (left untouched).
        plan: Methods per layer and fine-tune settings.
        train_loader: ``(input, target)`` batches; required when
            ``plan.finetune.epochs > 0``.
        loss_fn: ``loss_fn(output, target) -> scalar``; required likewise.
        device: Device to fine-tune and calibrate on. The returned model is on CPU.
        calibration_data: Input batches, or ``(input, target)`` batches,
            from which activation-stage methods calibrate their ranges and
            calibrated quantizers (GPTQ, AWQ) their layer statistics (a few
            batches suffice); required when the plan has either.
        example_input: One input batch as the model takes it (a tensor, a
            tuple of positional tensors or a dict of keyword tensors), traced
            by torch-pruning's DependencyGraph; required when the plan has
            structure-stage methods (ChannelPruning, HeadPruning), whose
            Taylor importance also takes its gradients from ``train_loader``
            and ``loss_fn``.
        teacher_logits: With ``plan.finetune.distill_alpha > 0``: the
            uncompressed model's outputs for ``train_loader.dataset``, in
            dataset order (:func:`compression.teacher_outputs`), so that a
            search computes them once; ``train_loader`` must then be a
            DataLoader over that dataset (any shuffle: batches carry their
            indices). Without them the uncompressed model runs on each batch.
            Ignored when not distilling.
        on_epoch: ``on_epoch(epoch, model)``, called after each fine-tune
            epoch (0-based) with a CPU eval-mode model equal to what this
            call would return had fine-tuning stopped there (quantized,
            activations calibrated), e.g. to report intermediate results to
            an early-stopping scheduler. Training goes on unaffected.
        calibration_stats: Precomputed :func:`compression.collect_layer_stats`
            of the uncompressed model, by layer name, so that a search
            computes them once. A weight whose entry is missing or no longer
            fits (its input was pruned or factorised) gets statistics
            computed here on the model as it is before quantization.

    Returns:
        The compressed copy, its plan, and each layer's stored weight.

    Raises:
        ConfigError: ``plan`` names a layer that is not compressible, a
            method refuses its layer (:meth:`CompressionPlan.validate`), or
            fine-tuning is asked for without a loader / loss, or activation
            quantization without ``calibration_data``, or structured
            pruning without ``example_input`` or with a layer whose
            dependency group it cannot prune; raised before any work starts.
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
    _check_finetune_inputs(ft, train_loader, teacher_logits, on_epoch)
    quantizers = plan.by_stage("quantize")
    needs_stats = [name for name, cfg in quantizers.items() if cfg.calibrated]
    if needs_stats and calibration_data is None:
        raise ConfigError(
            "calibration_data",
            None,
            f"an iterable of input or (input, target) batches for the calibrated quantizers of {needs_stats}",
        )
    if needs_stats or plan.by_stage("activation"):
        if calibration_data is None:
            raise ConfigError(
                "calibration_data",
                None,
                "an iterable of input or (input, target) batches when the plan quantizes activations",
            )
        calibration_data = calibration_inputs(calibration_data)  # checked now, and re-readable by every calibration
    structured = plan.by_stage("structure")
    if structured and example_input is None:
        raise ConfigError(
            "example_input",
            None,
            f"one input batch for the dependency graph of the structured pruning of {list(structured)}",
        )

    work = copy.deepcopy(model).cpu()
    # 0) structure: whole channels / heads go and dependent layers shrink with them; later stages see the result
    structured_specs = prune_structure(work, structured, example_input, train_loader, loss_fn)
    layers = compressible_layers(work)
    weights: dict[str, CompressedWeight] = {}
    structure: dict[str, dict] = dict(structured_specs)
    factorize, sparsify = plan.by_stage("factorize"), plan.by_stage("sparsify")
    # Per compressed weight: the plan layer it belongs to (a factorised layer has several weights).
    owner: dict[str, str] = {}

    # 1) factorize: replace modules, their parts become the layers later stages see
    for name, methods in plan.layers.items():
        if not methods:
            continue
        if name not in factorize:
            owner[name] = name
            continue
        cfg = factorize[name]
        new, spec = get_handler(cfg)(layers[name], cfg)
        replace_module(work, name, new)
        structure[name] = {"method": cfg.method, **spec}
        for part, _ in new.named_children():
            owner[f"{name}.{part}"] = name
    layers = compressible_layers(work)
    quantize_of_layer = plan.by_stage("quantize")
    quantize = {w: quantize_of_layer[layer] for w, layer in owner.items() if layer in quantize_of_layer}

    # 2) sparsify: masks (and the masked weights written back, so training starts from them)
    for name, layer in owner.items():
        module = layers[name]
        cw = CompressedWeight.from_dense(module.weight)
        if layer in sparsify:
            cw = get_handler(sparsify[layer])(module, cw, sparsify[layer])
        weights[name] = cw
        with torch.no_grad():
            module.weight.copy_(cw.dense())

    # 3) fine-tune with masks held fixed (optionally from the original model as teacher, through the quantizers)
    if ft.epochs > 0:

        def snapshot(epoch: int, trained: nn.Module) -> None:
            # What this call would return after this epoch: stages 4-6 on a copy; training goes on untouched.
            snap = copy.deepcopy(trained).cpu()
            snap_layers = compressible_layers(snap)
            _quantize_stage(
                snap_layers,
                {n: CompressedWeight.from_dense(snap_layers[n].weight, cw.mask) for n, cw in weights.items()},
                quantize,
            )
            snap_act = {input_layer(snap, name): cfg for name, cfg in plan.by_stage("activation").items()}
            if snap_act:
                calibrate_activations(snap, snap_act, calibration_data, device)
            on_epoch(epoch, snap.eval())

        teacher = frozen_copy(model, device) if ft.distill_alpha > 0 and teacher_logits is None else None
        _finetune(
            work,
            layers,
            weights,
            quantize,
            train_loader,
            loss_fn,
            device,
            ft,
            teacher=teacher,
            teacher_logits=teacher_logits,
            on_epoch=None if on_epoch is None else snapshot,
        )
        weights = {n: CompressedWeight.from_dense(layers[n].weight, cw.mask) for n, cw in weights.items()}

    # 4) quantize the surviving weights (calibrated ones with their input statistics), 5) materialise via dense()
    wanted = [name for name, cfg in quantize.items() if cfg.calibrated]
    stats = {
        name: calibration_stats[name]
        for name in wanted
        if calibration_stats is not None
        and name in calibration_stats
        and calibration_stats[name].size == layers[name].weight[0].numel()
    }
    computed = tuple(name for name in wanted if name not in stats)
    if computed:
        stats.update(collect_layer_stats(work, computed, calibration_data, device))
        work.cpu()
    weights = _quantize_stage(layers, weights, quantize, stats)

    # 6) activation quantization, calibrated on the final weights; a wrapped layer's weight moves to name.layer
    activations: dict[str, dict] = {}
    act = {input_layer(work, name): cfg for name, cfg in plan.by_stage("activation").items()}
    if act:
        smooth = {n: weights[n].input_scale for n in act if n in weights and weights[n].input_scale is not None}
        activations = calibrate_activations(work, act, calibration_data, device, smooth)
        weights = {(f"{name}.layer" if name in act else name): cw for name, cw in weights.items()}
    return CompressedModel(work.eval(), plan, weights, structure, activations, computed)


def _check_finetune_inputs(ft: FinetuneConfig, train_loader: Any, teacher_logits: Any, on_epoch: Any) -> None:
    """Refuse fine-tune extras that cannot work, before compress starts any work."""
    if on_epoch is not None and not callable(on_epoch):
        raise ConfigError("on_epoch", on_epoch, "a callable on_epoch(epoch, model), or None")
    if ft.epochs > 0 and ft.distill_alpha > 0 and teacher_logits is not None:
        check_teacher_logits(teacher_logits, len(indexed_loader(train_loader).dataset))


def _quantize_stage(
    layers: dict[str, nn.Module],
    weights: dict[str, CompressedWeight],
    quantize: dict[str, MethodConfig],
    stats: Mapping[str, LayerStats] | None = None,
) -> dict[str, CompressedWeight]:
    """Run each weight's quantize-stage method (``quantize``: weight name -> config) and write ``dense()`` into its layer.

    Calibrated methods get their weight's entry of ``stats``; without one they round as :func:`_rounding` says.

    Returns:
        The new weights.
    """
    out = {}
    for name, cw in weights.items():
        module = layers[name]
        if name in quantize:
            cfg = quantize[name]
            layer_stats = (stats or {}).get(name) if cfg.calibrated else None
            if cfg.calibrated and layer_stats is None:
                cfg = _rounding(cfg)
            cw = get_handler(cfg)(module, cw, cfg, layer_stats)
        out[name] = cw
        with torch.no_grad():
            module.weight.copy_(cw.dense())
    return out


def _rounding(cfg: MethodConfig) -> MethodConfig:
    """The data-free grid a calibrated method rounds onto (its ``rounding()``), used where no statistics
    exist: in each QAT step (re-running GPTQ per step would cost a calibration pass per batch) and in the
    epoch snapshots; the final quantization of the trained weights is the calibrated one."""
    return cfg.rounding() if cfg.calibrated else cfg


def _fake_quantized(layer: nn.Module, mask: Tensor | None, cfg: MethodConfig) -> Tensor:
    """The layer's weight as its quantize stage would leave it, with a straight-through gradient.

    The forward value is the registered handlers' ``dense()`` of the current
    weight (so training sees the exact grid the final stage will use); the
    gradient passes to the latent fp32 weight unchanged (STE, Bengio et al.
    2013, https://arxiv.org/abs/1308.3432).
    """
    w = layer.weight
    cfg = _rounding(cfg)
    with torch.no_grad():
        cw = get_handler(cfg)(layer, CompressedWeight.from_dense(w, mask), cfg, None)
        q = cw.dense().to(w.device)
    return w + (q - w).detach()


def _finetune(
    model: nn.Module,
    layers: dict[str, nn.Module],
    weights: dict[str, CompressedWeight],
    quantize: dict[str, MethodConfig],
    loader: Iterable[Any],
    loss_fn: Callable[[Tensor, Any], Tensor],
    device: torch.device,
    ft: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    teacher_logits: Tensor | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
) -> None:
    torch.manual_seed(ft.seed)
    model.to(device).train()
    masked = [(layers[n].weight, cw.mask.to(device)) for n, cw in weights.items() if cw.mask is not None]
    qat = {n: quantize[n] for n in weights if n in quantize} if ft.qat else {}
    distilling = ft.distill_alpha > 0
    indexed = distilling and teacher_logits is not None
    batches = indexed_loader(loader) if indexed else loader
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=ft.lr)
    for epoch in range(ft.epochs):
        for batch in batches:
            idx, (inputs, labels) = batch if indexed else (None, batch)
            inputs, labels = inputs.to(device), labels.to(device)
            if qat:
                # Parameters are swapped for this call only (torch.func), so the module keeps its latent weights.
                overrides = {f"{n}.weight": _fake_quantized(layers[n], weights[n].mask, m) for n, m in qat.items()}
                out = torch.func.functional_call(model, overrides, (inputs,))
            else:
                out = model(inputs)
            if distilling:
                if indexed:
                    soft = teacher_logits[idx].to(device)
                else:
                    with torch.no_grad():
                        soft = teacher(inputs)
                if soft.shape != out.shape:
                    raise ConfigError(
                        "teacher_logits",
                        tuple(soft.shape[1:]),
                        f"teacher outputs shaped like the model's, {tuple(out.shape[1:])}",
                    )
                loss = mixed_loss(out, soft, labels, loss_fn, ft.temperature, ft.distill_alpha)
            else:
                loss = loss_fn(out, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            # Adam's momentum moves pruned weights even with zero gradient; re-zero them.
            with torch.no_grad():
                for w, mask in masked:
                    w.masked_fill_(~mask, 0.0)
        if on_epoch is not None:
            on_epoch(epoch, model)
    model.cpu()
