"""Calibrated weight quantizers: GPTQ and AWQ (quantize stage, ``calibrated = True``).

Both round onto the same grid as block-wise :class:`UniformQuantization`
(:func:`quantize_blocks`, fp16 scales and integer zero points), so what they
store deploys through ``MatMulNBits`` like plain round-to-nearest; they differ
in *which* codes they pick, using the layer's input statistics
(:class:`LayerStats`, ``H = X^T X / n``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rayzor.compression._calibration import LayerStats
from rayzor.compression._quantization import (
    UniformQuantization,
    _check_bool,
    _check_group_size,
    _dequantize_blocks,
    block_params,
    quantize_blocks,
)
from rayzor.compression._registry import MethodConfig, check_int, check_real, get_handler, register_method
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = ["GPTQ", "AWQ", "SmoothQuant"]

_CALIBRATABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _check_layer(config: MethodConfig, layer: str, module: nn.Module, types: tuple[type, ...]) -> None:
    if not isinstance(module, types) or getattr(module, "groups", 1) != 1:
        valid = " / ".join(t.__name__ for t in types)
        raise ConfigError(f"plan.layers[{layer!r}].{config.method}", type(module).__name__, f"{valid} (groups=1)")


def _check_blockwise(config: Any) -> None:
    """The fields GPTQ and AWQ share with block-wise RTN: ``bits`` 2..8, ``group_size``, ``symmetric``."""
    object.__setattr__(config, "bits", check_int(f"{config.method}.bits", config.bits, 2, config.max_bits))
    _check_group_size(config.method, config.group_size, config.bits)
    _check_bool(f"{config.method}.symmetric", config.symmetric)


@dataclass(frozen=True)
class GPTQ(MethodConfig):
    """GPTQ: weights rounded one input column at a time, the error compensated on the columns not yet rounded.

    Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for
    Generative Pre-trained Transformers", https://arxiv.org/abs/2210.17323.
    Minimises ``||(W_q - W) X||^2`` with the inverse of the input Hessian
    ``H = X^T X / n`` (dampened by ``damp * mean(diag H)``), in lazy batches
    of 128 columns. Block scales are set from the partly updated weights when
    a block starts; with ``act_order`` (columns by decreasing ``diag H``)
    they are fixed from the original weights first ("static groups"), so the
    stored layout stays the plain block layout. Pruned weights stay zero and
    their error is compensated too.

    Args:
        bits: Bits per code, 2..8.
        group_size: Inputs per scale block (16..256, a power of two), or None
            for one scale per output channel.
        symmetric: Signed codes without zero point, else integer zero points
            (the default: on MiniLM int4 g128, 0.987 cosine against 0.981 symmetric).
        damp: Dampening, as a fraction of the mean diagonal of ``H``, in (0, 1].
        act_order: Round the columns with the largest activations first (the
            default: 0.981 against 0.977 without, same codes layout).
    """

    method: ClassVar[str] = "gptq"
    stage: ClassVar[str] = "quantize"
    calibrated: ClassVar[bool] = True
    max_bits: ClassVar[int] = 8

    bits: int
    group_size: int | None = 128
    symmetric: bool = False
    damp: float = 0.01
    act_order: bool = True

    def __post_init__(self) -> None:
        _check_blockwise(self)
        _check_bool(f"{self.method}.act_order", self.act_order)
        object.__setattr__(self, "damp", check_real(f"{self.method}.damp", self.damp, 0.0, 1.0, lo_open=True))

    def validate(self, layer: str, module: nn.Module) -> None:
        _check_layer(self, layer, module, _CALIBRATABLE)

    def rounding(self) -> UniformQuantization:
        """The data-free grid GPTQ rounds onto (used where no statistics exist, e.g. in QAT steps)."""
        return UniformQuantization(self.bits, self.symmetric, group_size=self.group_size)


@dataclass(frozen=True)
class AWQ(MethodConfig):
    """AWQ: per-input-channel scales that protect the weights of large activations, then block-wise rounding.

    Lin et al. 2023, "AWQ: Activation-aware Weight Quantization for LLM
    Compression and Acceleration", https://arxiv.org/abs/2306.00978. The
    weight is quantized as ``Q(W diag(s)) diag(s)^-1`` with ``s = a**alpha``
    (``a``: each input channel's RMS, from ``diag H``, normalised to geometric
    mean 1); ``alpha`` is searched on a grid of ``grid`` points in [0, 1] for
    the least output error ``tr(D H D^T)``, ``D`` the weight change. The
    stored weight keeps ``s`` as :attr:`CompressedWeight.input_scale` (fp16):
    the deployed layer divides its input by it (an elementwise op before
    ``MatMulNBits``), since in post-LayerNorm encoders such as BERT the op
    before a projection also feeds the residual and cannot absorb it.

    Args:
        bits: Bits per code, 2..8.
        group_size: Inputs per scale block (16..256, a power of two), or None.
        symmetric: Signed codes, else integer zero points (AWQ's default).
        grid: Number of ``alpha`` values tried, 2..100.
        clip_search: Then shrink each block's range (per row, 11 ratios from 1 down
            to 0.5) where that lowers its output error, as AWQ's auto-clip does.
    """

    method: ClassVar[str] = "awq"
    stage: ClassVar[str] = "quantize"
    calibrated: ClassVar[bool] = True
    max_bits: ClassVar[int] = 8

    bits: int
    group_size: int | None = 128
    symmetric: bool = False
    grid: int = 20
    clip_search: bool = True

    def __post_init__(self) -> None:
        _check_blockwise(self)
        object.__setattr__(self, "grid", check_int(f"{self.method}.grid", self.grid, 2, 100))
        _check_bool(f"{self.method}.clip_search", self.clip_search)

    def validate(self, layer: str, module: nn.Module) -> None:
        # Per-input scales of a convolution would vary within one input channel's kernel: no runtime op divides so.
        _check_layer(self, layer, module, (nn.Linear,))

    def rounding(self) -> UniformQuantization:
        """The data-free grid AWQ rounds onto (used where no statistics exist, e.g. in QAT steps)."""
        return UniformQuantization(self.bits, self.symmetric, group_size=self.group_size)


@dataclass(frozen=True)
class SmoothQuant(MethodConfig):
    """SmoothQuant: activation outliers migrated into the weights, for W8A8 layers.

    Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training
    Quantization for Large Language Models", https://arxiv.org/abs/2211.10438.
    Per input channel ``j``, ``s_j = max|X_j|**alpha / max|W_:j|**(1 - alpha)``
    (from the calibration inputs' peaks); the weight is stored as symmetric
    per-output-channel codes of ``W diag(s)`` with ``s`` as
    :attr:`CompressedWeight.input_scale` (fp16). Before any rounding the layer
    is unchanged (``(x / s)(W s)^T = x W^T``); an activation-stage
    :class:`ActivationQuantization` on the same layer then quantizes the
    smoothed input ``x / s``, whose outlier channels are tamed.

    Args:
        bits: Weight bits, 2..8 (8 is the paper's W8A8).
        alpha: Migration strength in [0, 1]: 1 flattens the activations
            (``s = max|X|``, all their range moved into the weights), 0 flattens
            the weights instead (``s = 1 / max|W|``); the paper's 0.5 splits it.
            On MiniLM's post-GELU FFN inputs 0.8 beats 0.5 by far (BENCHMARKS.md, engine).
    """

    method: ClassVar[str] = "smoothquant"
    stage: ClassVar[str] = "quantize"
    calibrated: ClassVar[bool] = True
    max_bits: ClassVar[int] = 8

    bits: int = 8
    alpha: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_int(f"{self.method}.bits", self.bits, 2, self.max_bits))
        object.__setattr__(self, "alpha", check_real(f"{self.method}.alpha", self.alpha, 0.0, 1.0))

    def validate(self, layer: str, module: nn.Module) -> None:
        _check_layer(self, layer, module, (nn.Linear,))

    def rounding(self) -> UniformQuantization:
        """The data-free grid SmoothQuant rounds onto (used where no statistics exist, e.g. in QAT steps)."""
        return UniformQuantization(self.bits)


# -- shared ----------------------------------------------------------------------


def _rows(weight: CompressedWeight) -> tuple[Tensor, Tensor]:
    """The weight as ``(rows, K)`` fp32 and its keep-mask."""
    rows, k = weight.shape[0], weight.row_size
    w = weight.dense().reshape(rows, k)
    keep = torch.ones_like(w, dtype=torch.bool) if weight.mask is None else weight.mask.reshape(rows, k)
    return w, keep


def _block_slices(k: int, group_size: int | None) -> list[slice]:
    step = k if group_size is None else group_size
    return [slice(i, min(i + step, k)) for i in range(0, k, step)]


def _stored(
    weight: CompressedWeight, bits: int, codes: Tensor, scales: list[Tensor], zps: list[Tensor] | None, group_size
) -> CompressedWeight:
    """A CompressedWeight from ``(rows, K)`` codes and per-block ``(rows,)`` scales in block order."""
    scale = torch.stack(scales, dim=1).reshape(-1)  # row-major: row r's blocks are contiguous
    zero_point = None if zps is None else torch.stack(zps, dim=1).reshape(-1)
    flat = codes.to(torch.int32).reshape(-1)
    if weight.mask is not None:
        flat = flat[weight.mask.flatten()]
    return CompressedWeight(
        weight.shape,
        weight.mask,
        bits,
        codes=flat,
        scale=scale.contiguous(),
        zero_point=None if zero_point is None else zero_point.contiguous(),
        group_size=group_size,
    )


def _check_stats(name: str, weight: CompressedWeight, stats: LayerStats | None) -> Tensor:
    if stats is None or stats.size != weight.row_size:
        got = None if stats is None else f"statistics for {stats.size} inputs"
        raise ConfigError(f"{name}.stats", got, f"LayerStats for the layer's {weight.row_size} inputs")
    return stats.hessian.to(torch.float64)


# -- GPTQ --------------------------------------------------------------------------


@register_method(GPTQ)
def _gptq(module: nn.Module, weight: CompressedWeight, config: GPTQ, stats: LayerStats | None) -> CompressedWeight:
    h = _check_stats(config.method, weight, stats).clone()
    w, keep = _rows(weight)
    w = w.to(torch.float64)
    rows, k = w.shape
    dead = h.diagonal() == 0  # an input that was always zero: its weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    blocks = _block_slices(k, config.group_size)
    block_of = torch.empty(k, dtype=torch.long)
    for b, cols in enumerate(blocks):
        block_of[cols] = b
    scales: list[Tensor | None] = [None] * len(blocks)
    zps: list[Tensor | None] = [None] * len(blocks)

    def set_params(b: int, source: Tensor) -> None:
        cols = blocks[b]
        scale, zp = block_params(source[:, cols].float(), keep[:, cols], config.bits, config.symmetric)
        scales[b], zps[b] = scale, zp

    order = torch.arange(k)
    if config.act_order:
        order = torch.argsort(h.diagonal(), descending=True, stable=True)
        for b in range(len(blocks)):
            set_params(b, w)  # static groups: scales from the original weights
    h = h[order][:, order]
    h += config.damp * h.diagonal().mean() * torch.eye(k, dtype=h.dtype)
    # Upper Cholesky factor of H^-1: row i holds the update direction for column i given columns < i are fixed.
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    wp, keepp = w[:, order].clone(), keep[:, order]
    codes = torch.zeros(rows, k, dtype=torch.float64)
    lazy = 128
    for start in range(0, k, lazy):
        end = min(start + lazy, k)
        errors = torch.zeros(rows, end - start, dtype=torch.float64)
        for j in range(start, end):
            col = int(order[j])
            b = int(block_of[col])
            if scales[b] is None:  # first column of its block, in natural order: scales from the updated weights
                current = torch.empty_like(w)
                current[:, order] = wp
                set_params(b, current)
            scale, zp = scales[b], zps[b]
            q = quantize_blocks(wp[:, j : j + 1].float(), config.bits, config.symmetric, scale, zp)
            deq = _dequantize_blocks(q, scale, zp).squeeze(1).to(torch.float64) * keepp[:, j]
            codes[:, col] = q.squeeze(1).to(torch.float64)
            err = (wp[:, j] - deq) / hinv[j, j]
            wp[:, j + 1 : end] -= err[:, None] * hinv[j, j + 1 : end][None, :]
            errors[:, j - start] = err
        wp[:, end:] -= errors @ hinv[start:end, end:]
    return _stored(weight, config.bits, codes, scales, None if config.symmetric else zps, config.group_size)


# -- AWQ ---------------------------------------------------------------------------

#: Range shrink ratios AWQ's clipping search tries per block (the paper's code: down to half the range).
_CLIP_RATIOS = torch.linspace(1.0, 0.5, 11).tolist()


def _rtn(
    w: Tensor, keep: Tensor, config: AWQ, clips: list[Tensor] | None = None
) -> tuple[Tensor, list[Tensor], list[Tensor] | None, Tensor]:
    """Block-wise round-to-nearest of ``(rows, K)`` ``w`` (each block's range shrunk by ``clips[b]`` per row):
    codes, scales, zero points and the dequantized weight."""
    codes, deq = torch.zeros_like(w), torch.zeros_like(w)
    scales, zps = [], []
    for b, cols in enumerate(_block_slices(w.shape[1], config.group_size)):
        clip = None if clips is None else clips[b]
        scale, zp = block_params(w[:, cols], keep[:, cols], config.bits, config.symmetric, clip)
        q = quantize_blocks(w[:, cols], config.bits, config.symmetric, scale, zp)
        codes[:, cols], deq[:, cols] = q, _dequantize_blocks(q, scale, zp) * keep[:, cols]
        scales.append(scale)
        zps.append(zp)
    return codes, scales, None if config.symmetric else zps, deq


def _clip_search(
    w: Tensor, keep: Tensor, h: Tensor, s: Tensor, config: AWQ
) -> tuple[Tensor, list[Tensor], list[Tensor] | None]:
    """Per row and block, the range shrink of the scaled weight ``W diag(s)`` with the least output error.

    A block's error is ``d H_bb d^T`` for its weight change ``d`` (cross-block terms left out, as AWQ
    scores each group on its own inputs); the scaled layer sees inputs ``x / s``.
    """
    scaled = w * s[None, :]
    hs = (h / s[:, None].double() / s[None, :].double()).double()
    blocks = _block_slices(w.shape[1], config.group_size)
    best_err = [torch.full((w.shape[0],), float("inf"), dtype=torch.float64) for _ in blocks]
    best_clip = [torch.ones(w.shape[0]) for _ in blocks]
    for ratio in _CLIP_RATIOS:
        clips = [torch.full((w.shape[0],), ratio) for _ in blocks]
        _, _, _, deq = _rtn(scaled, keep, config, clips)
        d = (deq - scaled).double()
        for b, cols in enumerate(blocks):
            err = ((d[:, cols] @ hs[cols, cols]) * d[:, cols]).sum(dim=1)
            better = err < best_err[b]
            best_err[b] = torch.where(better, err, best_err[b])
            best_clip[b] = torch.where(better, torch.tensor(ratio), best_clip[b])
    codes, scales, zps, _ = _rtn(scaled, keep, config, best_clip)
    return codes, scales, zps


@register_method(AWQ)
def _awq(module: nn.Module, weight: CompressedWeight, config: AWQ, stats: LayerStats | None) -> CompressedWeight:
    h = _check_stats(config.method, weight, stats)
    w, keep = _rows(weight)
    rms = stats.channel_rms().clamp(min=1e-8)
    best = None
    for alpha in torch.linspace(0.0, 1.0, config.grid).tolist():
        s = rms.pow(alpha)
        s = (s / (s.max() * s.min()).sqrt()).clamp(min=1e-4, max=1e4).to(torch.float16)
        s32 = s.to(torch.float32)
        codes, scales, zps, deq = _rtn(w * s32[None, :], keep, config)
        d = (deq / s32[None, :] - w).to(torch.float64)
        err = float(((d @ h) * d).sum())
        if best is None or err < best[0]:
            best = (err, s, codes, scales, zps)
    _, s, codes, scales, zps = best
    if config.clip_search:
        codes, scales, zps = _clip_search(w, keep, h, s.to(torch.float32), config)
    out = _stored(weight, config.bits, codes, scales, zps, config.group_size)
    out.input_scale = s.contiguous()
    return out


# -- SmoothQuant ---------------------------------------------------------------------


def smoothing_scales(absmax: Tensor, weight: Tensor, alpha: float) -> Tensor:
    """SmoothQuant's fp16 per-input scales ``max|X_j|**alpha / max|W_:j|**(1 - alpha)``."""
    w_peak = weight.abs().amax(dim=0).clamp(min=1e-5)
    s = absmax.clamp(min=1e-5).pow(alpha) / w_peak.pow(1.0 - alpha)
    return s.clamp(min=1e-4, max=1e4).to(torch.float16)


@register_method(SmoothQuant)
def _smoothquant(
    module: nn.Module, weight: CompressedWeight, config: SmoothQuant, stats: LayerStats | None
) -> CompressedWeight:
    _check_stats(config.method, weight, stats)
    if stats.absmax is None:
        raise ConfigError(f"{config.method}.stats", "no absmax", "LayerStats from collect_layer_stats")
    w, _ = _rows(weight)
    s = smoothing_scales(stats.absmax, w, config.alpha)
    scaled = CompressedWeight.from_dense((w * s.to(torch.float32)[None, :]).reshape(weight.shape), weight.mask)
    rounding = UniformQuantization(config.bits)
    out = get_handler(rounding)(module, scaled, rounding, None)
    out.input_scale = s.contiguous()
    return out
