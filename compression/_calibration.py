"""Calibration statistics of layer inputs, for data-aware weight quantizers (GPTQ, AWQ).

One forward pass over the calibration batches records, for every requested
layer, the second moment of its input rows, ``H = X^T X / n``: the Hessian of
the layer's output error ``||(W_q - W) X||^2 / n`` with respect to the weight.
GPTQ compensates rounding error with it; AWQ scores its scaling candidates
with it (the output error of a weight change ``D`` is ``tr(D H D^T)``), and
reads per-input-channel activation magnitudes off its diagonal. The statistics
depend only on the model and the data, so a search computes them once for the
uncompressed model and shares them with every trial.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rayzor.compression._actquant import calibration_inputs
from rayzor.errors import ConfigError

__all__ = ["LayerStats", "collect_layer_stats", "layer_input_rows"]


@dataclass(frozen=True)
class LayerStats:
    """Second moments of one layer's input rows.

    Attributes:
        hessian: ``(K, K)`` fp32 ``X^T X / n`` over the ``n`` input rows ``X``
            (``K`` = in_features, or in_channels * kernel size for a convolution,
            in the weight's flattened input order).
        rows: ``n``, the number of input rows seen.
        absmax: ``(K,)`` fp32 largest ``|x|`` of each input (SmoothQuant's activation range).
    """

    hessian: Tensor
    rows: int
    absmax: Tensor | None = None

    @property
    def size(self) -> int:
        """``K``, the input dimension the statistics are for."""
        return int(self.hessian.shape[0])

    def channel_rms(self) -> Tensor:
        """Root mean square of each input channel: ``sqrt(diag(H))``."""
        return self.hessian.diagonal().clamp(min=0).sqrt()


def layer_input_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The ``(n, K)`` rows a layer multiplies its flattened weight with (im2col for convolutions)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        conv2d = isinstance(module, nn.Conv2d)
        x4 = x if conv2d else x.unsqueeze(2)
        kernel = module.kernel_size if conv2d else (1, module.kernel_size[0])
        pair = (lambda v: v) if conv2d else (lambda v: (1, v[0]))
        if isinstance(module.padding, str):
            raise ConfigError("layer", type(module).__name__, "a convolution with numeric padding for calibration")
        cols = nn.functional.unfold(
            x4,
            kernel,
            dilation=pair(module.dilation),
            padding=pair(module.padding),
            stride=pair(module.stride),
        )
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    raise ConfigError("layer", type(module).__name__, "Linear, Conv1d or Conv2d for calibration statistics")


def collect_layer_stats(
    model: nn.Module,
    layers: Iterable[str],
    calibration_data: Iterable[Any],
    device: str | torch.device = "cpu",
) -> dict[str, LayerStats]:
    """Input statistics of each named layer over ``calibration_data``, from one pass of ``model``.

    Args:
        model: The model (not modified; run in eval mode without gradients).
        layers: Names of Linear / Conv1d / Conv2d (groups=1) submodules.
        calibration_data: Input batches or ``(input, target)`` batches.
        device: Where to run the model.

    Raises:
        ConfigError: A name is not such a layer, or the data holds no batch.
    """
    modules = dict(model.named_modules())
    names = list(dict.fromkeys(layers))
    for name in names:
        module = modules.get(name)
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or getattr(module, "groups", 1) != 1:
            raise ConfigError("layer", name, "a Linear, Conv1d or Conv2d (groups=1) layer of the model")
    batches = calibration_inputs(calibration_data)
    sums: dict[str, Tensor] = {}
    peaks: dict[str, Tensor] = {}
    counts = dict.fromkeys(names, 0)

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Any, ...]) -> None:
            rows = layer_input_rows(module, args[0].detach()).to(torch.float64)
            sums[name] = sums.get(name, 0) + (rows.T @ rows).cpu()  # float64: sums over many rows stay exact
            peak = rows.abs().amax(dim=0).float().cpu() if rows.shape[0] else torch.zeros(rows.shape[1])
            peaks[name] = torch.maximum(peaks[name], peak) if name in peaks else peak
            counts[name] += rows.shape[0]

        return record

    handles = [modules[name].register_forward_pre_hook(hook(name)) for name in names]
    was_training = model.training
    device = torch.device(device)
    try:
        model.eval()
        with torch.inference_mode():
            model.to(device)
            for x in batches:
                model(x.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {
        name: LayerStats((sums[name] / counts[name]).to(torch.float32), counts[name], peaks[name])
        for name in names
        if counts[name] > 0
    }
