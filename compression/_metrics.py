"""Size and latency measurements used to score a compressed model."""

from __future__ import annotations

import statistics
import time

import safetensors.torch
import torch
from torch import Tensor, nn

from compression.errors import ConfigError

__all__ = ["state_dict_bytes", "measure_latency"]


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s state dict serialised with safetensors.

    The denominator of the compression ratio: the packed file of the same
    model is measured the same way (safetensors, header included).
    """
    # Clone so tied / non-contiguous tensors serialise (safetensors refuses shared storage).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(safetensors.torch.save(tensors))


def measure_latency(model: nn.Module, example_input: Tensor, *, warmup: int = 3, repeats: int = 20) -> float:
    """Median wall-clock milliseconds of one forward pass under ``torch.inference_mode()``.

    The median resists the outliers (scheduler hiccups, first-call
    allocations) that dominate a mean on shared machines.

    Args:
        model: Model to time, used as is (put it in eval mode first).
        example_input: Input tensor, on the model's device.
        warmup: Untimed forwards first, >= 0.
        repeats: Timed forwards, >= 1.
    """
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
