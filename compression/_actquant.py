"""Activation quantization (the ``activation`` stage): calibrated fake quantization of layer inputs.

Post-training quantization of activations needs statistics of the inputs a
layer really sees, so this stage runs after the weights are final: the
engine swaps each chosen layer for an observer, runs the caller's
calibration batches through the model, derives a per-tensor scale and zero
point from what each observer saw, and replaces the layer by
:class:`QuantizedInput`, an ordinary module (no forward hook or patched
``forward`` on the user's layer) that fake-quantizes its input and calls the
layer. Scale and zero point are buffers, so they travel in the state dict
and the packed file, and the fake quantization exports to ONNX as ordinary
ops.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rayzor.compression._layers import COMPRESSIBLE_TYPES, compressible_layers
from rayzor.compression._quantization import _check_bool, _check_choice
from rayzor.compression._registry import MethodConfig, check_int, check_real, get_handler, get_method, register_method
from rayzor.errors import ConfigError

__all__ = [
    "CALIBRATIONS",
    "ActivationQuantization",
    "ActivationStats",
    "QuantizedInput",
    "fake_quantize",
    "quant_range",
    "input_layer",
    "calibration_inputs",
    "calibrate_activations",
    "apply_activation_quantization",
]

CALIBRATIONS: tuple[str, ...] = ("minmax", "percentile", "mse")
#: Histogram resolution for the percentile and MSE calibrations: 8 bins per
#: level at 8 bits, fine enough that the bin-centre error estimate is close.
_BINS = 2048
#: Clip ratios (of the observed range) tried by the MSE calibration. Wider than
#: the weights' grid: activations have rare large outliers (heavy tails,
#: Dettmers et al. 2022, https://arxiv.org/abs/2208.07339) whose best clip
#: can be a few percent of the max.
_MSE_GRID = torch.logspace(-2, 0, 81, dtype=torch.float64)
_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class ActivationQuantization(MethodConfig):
    """Per-tensor quantization of a Linear or Conv layer's input, calibrated post-training.

    The input runs as ``(clamp(round(x / scale) + zp, qmin, qmax) - zp) * scale``.
    Asymmetric codes ``0 .. 2**bits - 1`` over a range widened to hold 0, so
    ReLU outputs and zero padding are exact (Jacob et al. 2018,
    https://arxiv.org/abs/1712.05877); symmetric ``zp = 0``. The range is the
    calibration inputs' min/max, a percentile (Wu et al. 2020,
    https://arxiv.org/abs/2004.09602) or the MSE-optimal clip of their
    histogram (Banner et al. 2019, https://arxiv.org/abs/1810.05723). In
    training mode gradients pass straight through inside the range (Bengio et
    al. 2013, https://arxiv.org/abs/1308.3432), so QAT works. The layer
    ``name`` becomes :class:`QuantizedInput` with the layer at ``name.layer``
    (for a factorised layer, its first part); :func:`compression.compress`
    then needs ``calibration_data``.

    Args:
        bits: Bits per activation code: 2..16 when symmetric, 1..16 when
            asymmetric.
        symmetric: Zero-centred range, no zero point (suits inputs of both
            signs); asymmetric suits post-ReLU inputs.
        calibration: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        percentile: Percentile of ``|x|`` (symmetric) or of ``x`` at both
            ends (asymmetric) used when ``calibration="percentile"``, in
            ``(50, 100]``.
    """

    method: ClassVar[str] = "activation_quantization"
    stage: ClassVar[str] = "activation"

    bits: int = 8
    symmetric: bool = False
    calibration: str = "minmax"
    percentile: float = 99.99

    def __post_init__(self) -> None:
        symmetric = _check_bool(f"{self.method}.symmetric", self.symmetric)
        lo, hint = (
            (2, " for symmetric=True (1 bit needs symmetric=False)") if symmetric else (1, " for symmetric=False")
        )
        object.__setattr__(self, "bits", check_int(f"{self.method}.bits", self.bits, lo, 16, hint))
        _check_choice(f"{self.method}.calibration", self.calibration, CALIBRATIONS)
        value = check_real(f"{self.method}.percentile", self.percentile, 50.0, 100.0, lo_open=True)
        object.__setattr__(self, "percentile", value)

    def validate(self, layer: str, module: nn.Module) -> None:
        where = f"plan.layers[{layer!r}].{self.method}"
        if isinstance(module, nn.Embedding):
            raise ConfigError(
                where, "Embedding", "Linear, Conv1d or Conv2d: an Embedding's inputs are token indices, not activations"
            )
        if not isinstance(module, _SUPPORTED):
            raise ConfigError(where, type(module).__name__, "Linear, Conv1d or Conv2d")
        if not layer:
            raise ConfigError(where, layer, "a layer inside the model, not the root")

    @staticmethod
    def rebuild(module: nn.Module, spec: Mapping[str, Any]) -> QuantizedInput:
        """``module`` wrapped in an uncalibrated :class:`QuantizedInput` (the packed loader fills the buffers)."""
        wrapped = QuantizedInput(module, int(spec["bits"]), bool(spec["symmetric"]))
        if spec.get("smooth"):
            wrapped.register_buffer("smooth", torch.ones(int(spec["smooth"])))
        return wrapped


def quant_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """``(qmin, qmax)`` of the integer codes."""
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, *, ste: bool = False) -> Tensor:
    """Quantize ``x`` to integer codes in ``[qmin, qmax]`` and back.

    With ``ste=True`` the forward value is the same but the gradient is 1
    inside the representable range and 0 outside it (clipped
    straight-through estimator), instead of round's zero almost everywhere.
    """
    q = (torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    if not ste:
        return q
    clipped = torch.clamp(x, (qmin - zero_point) * scale, (qmax - zero_point) * scale)
    return clipped + (q - clipped).detach()


class QuantizedInput(nn.Module):
    """Fake-quantizes its input with a calibrated per-tensor scale, then runs ``layer``.

    Args:
        layer: The wrapped layer (a submodule: its parameters stay trainable).
        bits: Bits per code.
        symmetric: Symmetric codes (zero point 0) or asymmetric ones.
        scale: Step between codes, > 0.
        zero_point: Integer code of the value 0 (0 when symmetric).

    A ``smooth`` buffer (``(K,)``, set when the layer's stored weight carries
    per-input scales: SmoothQuant, AWQ) makes it quantize ``x / smooth`` and
    hand ``layer`` that times ``smooth``: with the layer's weight ``Q(W s) / s``
    the product is ``fq(x / s) Q(W s)^T``, the integer form a W8A8 runtime runs
    (Xiao et al. 2022, https://arxiv.org/abs/2211.10438).
    """

    smooth: Tensor | None

    def __init__(
        self, layer: nn.Module, bits: int, symmetric: bool, scale: float = 1.0, zero_point: float = 0.0
    ) -> None:
        super().__init__()
        self.layer = layer
        self.bits = bits
        self.symmetric = symmetric
        self.qmin, self.qmax = quant_range(bits, symmetric)
        # Buffers, not Python floats: they are saved with the state dict and move with .to(device).
        self.register_buffer("scale", torch.tensor(float(scale), dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(float(zero_point), dtype=torch.float32))
        self.register_buffer("smooth", None)  # a buffer slot: set (and saved) only for smoothed layers

    def forward(self, x: Tensor) -> Tensor:
        if self.smooth is None:
            return self.layer(fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax, ste=self.training))
        s = self.smooth
        return self.layer(
            fake_quantize(x / s, self.scale, self.zero_point, self.qmin, self.qmax, ste=self.training) * s
        )

    def extra_repr(self) -> str:
        return f"bits={self.bits}, symmetric={self.symmetric}"


@dataclass
class ActivationStats:
    """What an observer saw of one layer's inputs during calibration.

    Attributes:
        lo: Smallest input value.
        hi: Largest input value.
        hist: Counts over ``_BINS`` equal bins of ``[hist_lo, hist_hi]`` (of
            ``|x|`` for a symmetric config, of ``x`` otherwise), or None when
            the calibration needs no histogram or the inputs were constant.
        hist_lo: Lower edge of the histogram.
        hist_hi: Upper edge of the histogram.
    """

    lo: float
    hi: float
    hist: Tensor | None = None
    hist_lo: float = 0.0
    hist_hi: float = 0.0

    def quantile(self, q: float) -> float:
        """The ``q``-quantile of the histogrammed values, linear inside a bin."""
        counts = self.hist.to(torch.float64)
        cum = torch.cumsum(counts, 0)
        target = q * float(cum[-1])
        i = min(int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64))[0]), counts.numel() - 1)
        before = float(cum[i - 1]) if i else 0.0
        frac = (target - before) / float(counts[i]) if float(counts[i]) > 0 else 0.0
        width = (self.hist_hi - self.hist_lo) / counts.numel()
        return self.hist_lo + (i + min(max(frac, 0.0), 1.0)) * width


class _Observer(nn.Module):
    """Calibration-time stand-in for a layer: records its inputs, then runs it unchanged."""

    def __init__(self, layer: nn.Module, config: ActivationQuantization, smooth: Tensor | None = None) -> None:
        super().__init__()
        self.layer, self.config, self.smooth = layer, config, smooth
        self.lo, self.hi = math.inf, -math.inf
        self.hist: Tensor | None = None
        self.hist_lo = self.hist_hi = 0.0

    def start_histogram(self) -> None:
        """Switch from the min/max pass to the histogram pass."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        self.hist_lo, self.hist_hi = (0.0, max(-lo, hi)) if self.config.symmetric else (lo, hi)
        if self.hist_hi > self.hist_lo:  # constant (all-zero) inputs need no histogram
            self.hist = torch.zeros(_BINS, dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        v = x.detach().float()
        if self.smooth is not None:  # the smoothed input is what gets quantized
            v = v / self.smooth.to(v.device)
        if self.hist is not None:
            v = v.abs() if self.config.symmetric else v
            self.hist += torch.histc(v, _BINS, self.hist_lo, self.hist_hi).cpu().to(torch.float64)
        elif v.numel():
            self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        return self.layer(x)

    def stats(self) -> ActivationStats:
        return ActivationStats(self.lo, self.hi, self.hist, self.hist_lo, self.hist_hi)


def _qparams(lo: float, hi: float, bits: int, symmetric: bool) -> tuple[float, float]:
    """(scale, zero_point) mapping the range ``[lo, hi]`` (widened to contain 0) onto the codes."""
    qmin, qmax = quant_range(bits, symmetric)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max(-lo, hi) / qmax if symmetric else (hi - lo) / (qmax - qmin)
    scale = float(torch.tensor(scale, dtype=torch.float32))  # the value the buffer will hold
    if not (scale > 0 and math.isfinite(scale)):
        return 1.0, 0.0  # all-zero inputs: any positive scale codes them exactly as 0
    zero_point = 0.0 if symmetric else float(min(max(round(-lo / scale), qmin), qmax))
    return scale, zero_point


def _mse_range(stats: ActivationStats, bits: int, symmetric: bool) -> tuple[float, float]:
    """The range shrunk towards 0 by the ratio of ``_MSE_GRID`` with the least histogram MSE."""
    counts = stats.hist.to(torch.float64)
    width = (stats.hist_hi - stats.hist_lo) / counts.numel()
    centres = stats.hist_lo + (torch.arange(counts.numel(), dtype=torch.float64) + 0.5) * width
    lo, hi = (-stats.hist_hi, stats.hist_hi) if symmetric else (stats.hist_lo, stats.hist_hi)
    qmin, qmax = quant_range(bits, symmetric)
    best, best_err = 1.0, math.inf
    for ratio in _MSE_GRID.tolist():
        scale, zp = _qparams(lo * ratio, hi * ratio, bits, symmetric)
        approx = (torch.clamp(torch.round(centres / scale) + zp, qmin, qmax) - zp) * scale
        err = float((counts * (approx - centres) ** 2).sum())
        if err < best_err:
            best, best_err = ratio, err
    return lo * best, hi * best


@register_method(ActivationQuantization)
def _quantize_input(
    module: nn.Module, config: ActivationQuantization, stats: ActivationStats
) -> tuple[QuantizedInput, dict[str, Any]]:
    lo, hi = stats.lo, stats.hi
    if stats.hist is not None and config.calibration == "percentile":
        p = config.percentile / 100
        if config.symmetric:
            clip = stats.quantile(p)
            lo, hi = -clip, clip
        else:
            lo, hi = stats.quantile(1 - p), stats.quantile(p)
    elif stats.hist is not None and config.calibration == "mse":
        lo, hi = _mse_range(stats, config.bits, config.symmetric)
    scale, zero_point = _qparams(lo, hi, config.bits, config.symmetric)
    return (
        QuantizedInput(module, config.bits, config.symmetric, scale, zero_point),
        {"bits": config.bits, "symmetric": config.symmetric},
    )


# -- engine and loader ---------------------------------------------------------------


def input_layer(model: nn.Module, name: str) -> str:
    """Name of the layer that reads the input of plan layer ``name``.

    ``name`` itself, or for a layer an earlier stage replaced by a
    ``Sequential`` of parts, its first compressible part.
    """
    module = model.get_submodule(name)
    if isinstance(module, COMPRESSIBLE_TYPES):
        return name
    return f"{name}.{next(iter(compressible_layers(module)))}"


def calibration_inputs(calibration_data: Iterable[Any]) -> list[Tensor]:
    """The input tensors of ``calibration_data`` (inputs or ``(input, target)`` batches), as a list.

    Raises:
        ConfigError: A batch whose input is not a tensor, or no batches.
    """
    inputs = []
    for batch in calibration_data:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, Tensor):
            raise ConfigError(
                "calibration_data", type(x).__name__, "an iterable of input tensors or (input, target) batches"
            )
        inputs.append(x)
    if not inputs:
        raise ConfigError("calibration_data", "no batches", "at least one input or (input, target) batch")
    return inputs


def calibrate_activations(
    model: nn.Module,
    targets: Mapping[str, ActivationQuantization],
    calibration_data: Iterable[Any],
    device: torch.device,
    smooth: Mapping[str, Tensor] | None = None,
) -> dict[str, dict]:
    """Calibrate and wrap each ``targets`` layer of ``model`` in place.

    ``smooth``: per target layer whose weight carries per-input scales, those
    scales (see :class:`QuantizedInput`): its ranges are calibrated on ``x / smooth``.

    Every target is observed at once on the unquantized model (one pass for
    min/max, a second for the histogram when percentile or MSE needs it), in
    eval mode, then replaced by its :class:`QuantizedInput`.

    Returns:
        Layer name -> ``{"method": name, **spec}``, for
        :func:`apply_activation_quantization`.

    Raises:
        ConfigError: ``calibration_data`` is empty or holds no tensors, or
            a target layer saw no input.
    """
    inputs = calibration_inputs(calibration_data)  # materialised: percentile / mse read them twice
    observers = {}
    for name, cfg in targets.items():
        s = None if smooth is None or name not in smooth else smooth[name].detach().float().cpu()
        observers[name] = _Observer(model.get_submodule(name), cfg, s)
        model.set_submodule(name, observers[name])
    model.to(device).eval()
    try:
        with torch.no_grad():
            for x in inputs:
                model(x.to(device))
            second = [o for o in observers.values() if o.config.calibration != "minmax"]
            for o in second:
                o.start_histogram()
            if any(o.hist is not None for o in second):
                for x in inputs:
                    model(x.to(device))
    finally:
        model.cpu()
    out = {}
    for name, o in observers.items():
        if o.lo > o.hi:
            raise ConfigError(
                "calibration_data",
                f"no input reached layer {name!r}",
                "batches whose forward pass runs every activation-quantized layer",
            )
        new, spec = get_handler(o.config)(o.layer, o.config, o.stats())
        if o.smooth is not None:
            new.register_buffer("smooth", o.smooth.clone())
            spec = {**spec, "smooth": int(o.smooth.numel())}
        model.set_submodule(name, new)
        out[name] = {"method": o.config.method, **spec}
    return out


def apply_activation_quantization(model: nn.Module, activations: Mapping[str, Mapping[str, Any]]) -> None:
    """Wrap each named layer of ``model`` in its uncalibrated :class:`QuantizedInput`, in place (packed loader)."""
    for name, spec in activations.items():
        cls = get_method(spec["method"])
        model.set_submodule(name, cls.rebuild(model.get_submodule(name), spec))
