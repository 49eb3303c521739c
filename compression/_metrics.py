"""Size, compute and latency measurements used to score a compressed model."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import safetensors.torch
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from rayzor.compression._actquant import QuantizedInput
from rayzor.compression._layers import compressible_layers
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = ["state_dict_bytes", "measure_latency", "model_stats"]

#: Bits of an activation: the compressed models run in fp32.
ACTIVATION_BITS = 32


def model_stats(
    model: nn.Module, example_input: Tensor, weights: Mapping[str, CompressedWeight] | None = None
) -> dict[str, float]:
    """Parameters, non-zeros, FLOPs, MACs and BitOps of one forward of ``example_input``.

    FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and
    convolutions; a multiply-add is 2 FLOPs, so ``macs = flops / 2``). BitOps
    (Baskin et al. 2021, "UNIQ", https://arxiv.org/abs/1804.10969; van
    Baalen et al. 2020, https://arxiv.org/abs/2005.07093) weigh each layer's
    MACs by its weight bits times the activation bits (32 here) and by its
    density (the fraction of weights its mask keeps, as sparse kernels skip
    the rest): ``sum(macs_l * density_l * w_bits_l * a_bits_l)``, where
    ``a_bits_l`` is 32 unless ActivationQuantization quantizes the layer's
    inputs; layers without a stored weight count as fp32 and dense.

    Args:
        model: The model, in eval mode.
        example_input: One input batch (its batch size scales FLOPs).
        weights: :attr:`CompressedModel.weights`, for the bits of each layer.

    Returns:
        ``params``, ``nonzero_params``, ``flops``, ``macs``, ``bitops``.
    """
    weights = weights or {}
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(example_input)
    counts = counter.get_flop_counts()
    prefix = type(model).__name__
    flops = counter.get_total_flops()
    layer_flops = 0
    bitops = 0.0
    modules = dict(model.named_modules())
    for name in compressible_layers(model):
        f = sum(counts.get(f"{prefix}.{name}" if name else prefix, {}).values())
        layer_flops += f
        cw = weights.get(name)
        density = 1.0 if cw is None else cw.kept / max(cw.numel, 1)
        bits = 32 if cw is None else cw.bits
        # A layer wrapped by ActivationQuantization multiplies by its quantized inputs.
        parent = modules.get(name.rpartition(".")[0]) if name.endswith("layer") else None
        act_bits = parent.bits if isinstance(parent, QuantizedInput) else ACTIVATION_BITS
        bitops += f / 2 * density * bits * act_bits
    bitops += (flops - layer_flops) / 2 * 32 * ACTIVATION_BITS  # matmuls outside Conv/Linear layers
    return {
        "params": float(params),
        "nonzero_params": float(nonzero),
        "flops": float(flops),
        "macs": float(flops) / 2,
        "bitops": bitops,
    }


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict serialised with safetensors.

    The denominator of the compression ratio: the packed file of the same
    model is measured the same way (safetensors, header included).
    """
    # Clone so tied / non-contiguous tensors serialise (safetensors refuses shared storage).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(safetensors.torch.save(tensors))


def measure_latency(
    model: nn.Module, example_input: Tensor, *, warmup: int = 3, repeats: int = 20, threads: int | None = None
) -> float:
    """Median wall-clock milliseconds of one forward pass under ``torch.inference_mode()``.

    The median resists the outliers (scheduler hiccups, first-call
    allocations) that dominate a mean on shared machines.

    Args:
        model: Model to time, used as is (put it in eval mode first).
        example_input: Input tensor, on the model's device; its batch size is
            the one measured.
        warmup: Untimed forwards first, >= 0.
        repeats: Timed forwards, >= 1.
        threads: Intra-op CPU threads while timing (restored afterwards);
            None keeps the current setting.
    """
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError("threads", threads, "an integer >= 1 or None")
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return measure_latency(model, example_input, warmup=warmup, repeats=repeats)
        finally:
            torch.set_num_threads(before)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError("warmup", warmup, "an integer >= 0")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError("repeats", repeats, "an integer >= 1")
    # CUDA kernels are asynchronous: synchronise so the clock sees the work.
    sync = torch.cuda.synchronize if example_input.is_cuda else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(example_input)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
