"""Weight quantization methods (the ``quantize`` stage).

Every handler codes only the kept weights (pruned ones stay exactly zero
through the mask) and returns a :class:`CompressedWeight` whose ``dense()``
is the weight the model runs with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from rayzor.compression._registry import MethodConfig, check_int, check_real, register_method
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = [
    "GRANULARITIES",
    "CLIPPINGS",
    "HALF_DTYPES",
    "UniformQuantization",
    "KMeansQuantization",
    "BinaryQuantization",
    "TernaryQuantization",
    "HalfPrecision",
    "GROUP_SIZES",
    "quantize_blocks",
]

GRANULARITIES: tuple[str, ...] = ("per_channel", "per_tensor")
CLIPPINGS: tuple[str, ...] = ("minmax", "percentile", "mse")
HALF_DTYPES: dict[str, torch.dtype] = {"fp16": torch.float16, "bf16": torch.bfloat16}
#: Block sizes a block-wise quantizer accepts: powers of two, as onnxruntime's MatMulNBits requires.
GROUP_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)

#: Clip ratios tried by the MSE search (fraction of the min-max range).
_MSE_GRID = torch.linspace(0.3, 1.0, 36)


def _check_choice(field: str, value: object, valid: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in valid:
        raise ConfigError(field, value, valid)
    return value


def _check_bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "true or false")
    return value


@dataclass(frozen=True)
class UniformQuantization(MethodConfig):
    """Uniform (linear) quantization of the weights, symmetric or asymmetric.

    Symmetric: ``scale = clip / qmax`` with ``qmax = 2**(bits-1) - 1`` and
    codes ``clamp(round(w / scale), -qmax, qmax)``. Asymmetric: the clipped
    range ``[lo, hi]`` maps onto ``2**bits`` levels, ``scale = (hi - lo) /
    (2**bits - 1)`` (Jacob et al. 2018, "Quantization and Training of Neural
    Networks for Efficient Integer-Arithmetic-Only Inference",
    https://arxiv.org/abs/1712.05877). The clipping range comes from the
    min/max, a percentile of the kept weights (as in TensorRT's calibration),
    or the clip ratio minimising the quantization MSE (Banner et al. 2019,
    "Post training 4-bit quantization of convolutional networks for
    rapid-deployment", https://arxiv.org/abs/1810.05723). Pruned weights are
    not coded and stay exactly zero.

    With ``group_size`` the scales are block-wise: each output channel's
    inputs are cut into blocks of ``group_size`` with one fp16 scale (and, when
    asymmetric, one integer zero point, also stored at fp16) per block, as in
    GPTQ/AWQ-era 4-bit formats and onnxruntime's ``MatMulNBits`` (whose
    layout :class:`CompressedWeight` then follows exactly).

    Args:
        bits: Bits per code: 2..16 when symmetric (1 bit leaves no level
            besides zero), 1..16 when asymmetric. Full precision is expressed
            by not quantizing the layer.
        symmetric: Zero-centred range without a zero point.
        granularity: ``"per_channel"`` (one scale per output channel) or
            ``"per_tensor"``.
        clipping: ``"minmax"``, ``"percentile"`` or ``"mse"``.
        percentile: Percentile of ``|w|`` (symmetric) or of ``w`` at both ends
            (asymmetric) used as the clip when ``clipping="percentile"``, in
            ``(50, 100]``.
        group_size: Inputs per scale block, one of :data:`GROUP_SIZES`, or
            None for ``granularity``'s groups. Needs ``bits <= 8`` and
            ``granularity="per_channel"``.
    """

    method: ClassVar[str] = "uniform_quantization"
    stage: ClassVar[str] = "quantize"
    #: Widest ``bits`` accepted.
    max_bits: ClassVar[int] = 16

    bits: int
    symmetric: bool = True
    granularity: str = "per_channel"
    clipping: str = "minmax"
    percentile: float = 99.9
    group_size: int | None = None

    def __post_init__(self) -> None:
        symmetric = _check_bool(f"{self.method}.symmetric", self.symmetric)
        lo, hint = (
            (2, " for symmetric=True (1 bit needs symmetric=False)") if symmetric else (1, " for symmetric=False")
        )
        bits = check_int(
            f"{self.method}.bits",
            self.bits,
            lo,
            self.max_bits,
            hint + "; leave the layer unquantized for 32-bit floats",
        )
        object.__setattr__(self, "bits", bits)
        _check_choice(f"{self.method}.granularity", self.granularity, GRANULARITIES)
        _check_choice(f"{self.method}.clipping", self.clipping, CLIPPINGS)
        value = check_real(f"{self.method}.percentile", self.percentile, 50.0, 100.0, lo_open=True)
        object.__setattr__(self, "percentile", value)
        _check_group_size(self.method, self.group_size, self.bits, self.granularity)


def _check_group_size(method: str, group_size: object, bits: int, granularity: str = "per_channel") -> None:
    """Refuse a block size that no block-wise format stores (one rule for every block-wise method)."""
    if group_size is None:
        return
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise ConfigError(f"{method}.group_size", group_size, f"one of {', '.join(map(str, GROUP_SIZES))} or null")
    if bits > 8:
        raise ConfigError(f"{method}.bits", bits, "at most 8 with a group_size (block-wise codes are 2..8 bits)")
    if granularity != "per_channel":
        raise ConfigError(f"{method}.granularity", granularity, "per_channel with a group_size (blocks split rows)")


@dataclass(frozen=True)
class KMeansQuantization(MethodConfig):
    """k-means weight sharing: one codebook of ``2**bits`` centroids per layer.

    The second step of Deep Compression (Han et al. 2016,
    https://arxiv.org/abs/1510.00149): centroids start linearly spaced over
    ``[min, max]`` of the kept weights (the paper's best initialisation, as it
    keeps the rare large weights), then Lloyd iterations refine them. A
    centroid that ends with no weight is re-seeded on the worst-approximated
    weight, so a layer with at least ``2**bits`` distinct weights uses every
    code. Weights are stored as ``bits``-bit indices into the fp32 codebook.

    Args:
        bits: Bits per index, 1..8.
        iterations: Lloyd iterations, 1..100.
    """

    method: ClassVar[str] = "kmeans_quantization"
    stage: ClassVar[str] = "quantize"
    #: Widest ``bits`` accepted.
    max_bits: ClassVar[int] = 8

    bits: int
    iterations: int = 20

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_int(f"{self.method}.bits", self.bits, 1, self.max_bits))
        object.__setattr__(self, "iterations", check_int(f"{self.method}.iterations", self.iterations, 1, 100))


@dataclass(frozen=True)
class BinaryQuantization(MethodConfig):
    """Binary weights ``sign(w) * alpha`` with ``alpha = mean|w|`` per channel.

    XNOR-Net's weight binarisation (Rastegari et al. 2016,
    https://arxiv.org/abs/1603.05279), where ``mean|w|`` is the scale that
    minimises ``||w - alpha * sign(w)||``. One bit per weight; ``sign(0) = +1``.

    Args:
        granularity: ``"per_channel"`` (XNOR-Net) or ``"per_tensor"``.
    """

    method: ClassVar[str] = "binary_quantization"
    stage: ClassVar[str] = "quantize"
    storage_bits: ClassVar[int] = 1

    granularity: str = "per_channel"

    def __post_init__(self) -> None:
        _check_choice(f"{self.method}.granularity", self.granularity, GRANULARITIES)


@dataclass(frozen=True)
class TernaryQuantization(MethodConfig):
    """Ternary weights in ``{-alpha, 0, +alpha}``.

    Ternary Weight Networks (Li et al. 2016, https://arxiv.org/abs/1605.04711):
    threshold ``delta = threshold * mean|w|`` (0.7 is the paper's
    approximation of the optimum for Gaussian weights), ``alpha`` = mean
    ``|w|`` of the weights above it. Stored as 2-bit symmetric codes.

    Args:
        threshold: Multiple of ``mean|w|`` below which a weight becomes 0, in (0, 2].
        granularity: ``"per_channel"`` or ``"per_tensor"`` (the paper's choice).
    """

    method: ClassVar[str] = "ternary_quantization"
    stage: ClassVar[str] = "quantize"
    storage_bits: ClassVar[int] = 2

    threshold: float = 0.7
    granularity: str = "per_channel"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "threshold", check_real(f"{self.method}.threshold", self.threshold, 0.0, 2.0, lo_open=True)
        )
        _check_choice(f"{self.method}.granularity", self.granularity, GRANULARITIES)


@dataclass(frozen=True)
class HalfPrecision(MethodConfig):
    """Store the kept weights as 16-bit floats (IEEE fp16 or bfloat16).

    bf16 keeps fp32's exponent range with an 8-bit mantissa (Kalamkar et al.
    2019, https://arxiv.org/abs/1905.12322); fp16 has more mantissa but
    overflows above 65504. The model still runs in fp32 with the rounded
    weights.

    Args:
        dtype: ``"fp16"`` or ``"bf16"``.
    """

    method: ClassVar[str] = "half_precision"
    stage: ClassVar[str] = "quantize"
    storage_bits: ClassVar[int] = 16

    dtype: str = "fp16"

    def __post_init__(self) -> None:
        _check_choice(f"{self.method}.dtype", self.dtype, tuple(HALF_DTYPES))


# -- helpers ---------------------------------------------------------------------


def _grouped(weight: CompressedWeight, granularity: str) -> tuple[Tensor, Tensor]:
    """The weight as ``(groups, n)`` and its keep-mask of the same shape."""
    rows = weight.shape[0] if granularity == "per_channel" else 1
    w = weight.dense().reshape(rows, -1)
    keep = torch.ones_like(w, dtype=torch.bool) if weight.mask is None else weight.mask.reshape(rows, -1)
    return w, keep


def _blocks(weight: CompressedWeight, group_size: int) -> tuple[Tensor, Tensor]:
    """The weight as ``(groups, group_size)`` blocks (a short last block padded) and its keep-mask.

    Padding is masked out, so every per-row rule below (clipping, MSE search)
    applies to blocks unchanged.
    """
    rows, k = weight.shape[0], weight.row_size
    blocks = -(-k // group_size)
    pad = blocks * group_size - k
    w = weight.dense().reshape(rows, k)
    keep = torch.ones_like(w, dtype=torch.bool) if weight.mask is None else weight.mask.reshape(rows, k)
    w, keep = nn.functional.pad(w, (0, pad)), nn.functional.pad(keep, (0, pad), value=False)
    return w.reshape(rows * blocks, group_size), keep.reshape(rows * blocks, group_size)


def _unblock(t: Tensor, weight: CompressedWeight) -> Tensor:
    """Inverse of :func:`_blocks` for a ``(groups, group_size)`` tensor: drop the padding, flat row-major."""
    rows, k = weight.shape[0], weight.row_size
    return t.reshape(rows, -1)[:, :k].reshape(-1)


def quantize_blocks(w: Tensor, bits: int, symmetric: bool, scale: Tensor, zero_point: Tensor | None = None) -> Tensor:
    """Integer codes of ``w`` (``(groups, n)``) on the grid of per-group fp16 ``scale`` / ``zero_point``.

    Symmetric codes lie in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``, affine ones in
    ``[0, 2**bits)``; ``(codes - zero_point) * scale`` (or ``codes * scale``) is the
    dequantized weight. GPTQ and AWQ round through this same function.
    """
    s = scale.to(torch.float32)[:, None]
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(w / s), -qmax, qmax)
    return torch.clamp(torch.round(w / s) + zero_point.to(torch.float32)[:, None], 0, 2**bits - 1)


def block_params(
    w: Tensor, keep: Tensor, bits: int, symmetric: bool, clip: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """fp16 (scale, zero_point) of each row of ``w`` from its kept min/max (scaled by ``clip`` if given).

    The zero point is an integer code (held at fp16, exact up to 2048), so a
    zero weight is exactly representable and runtimes store it in ``bits`` bits.
    """
    has = keep.any(dim=1)
    lo = torch.where(has, w.masked_fill(~keep, float("inf")).amin(dim=1), 0.0).clamp(max=0)
    hi = torch.where(has, w.masked_fill(~keep, -float("inf")).amax(dim=1), 0.0).clamp(min=0)
    if clip is not None:
        lo, hi = lo * clip, hi * clip
    if symmetric:
        raw = torch.maximum(-lo, hi) / (2 ** (bits - 1) - 1)
    else:
        raw = (hi - lo) / (2**bits - 1)
    scale = raw.to(torch.float16)
    # A block of zeros (or a scale under fp16's range) still needs a positive scale; it then codes as zero.
    tiny = torch.tensor(torch.finfo(torch.float16).tiny, dtype=torch.float16)
    scale = torch.where(scale > 0, scale, torch.maximum(raw.to(torch.float16), tiny))
    scale = torch.where(torch.isfinite(scale), scale, torch.tensor(torch.finfo(torch.float16).max, dtype=torch.float16))
    if symmetric:
        return scale, None
    zero_point = torch.clamp(torch.round(-lo / scale.to(torch.float32)), 0, 2**bits - 1).to(torch.float16)
    return scale, zero_point


def _block_quantize(weight: CompressedWeight, config: UniformQuantization) -> CompressedWeight:
    """Block-wise round-to-nearest (``config.group_size`` set); clipping as for whole rows."""
    w, keep = _blocks(weight, config.group_size)
    if config.clipping == "percentile":
        # Both ends of a block shrink by the same ratio: the percentile of |w| over its max.
        absw = w.abs() * keep
        full = absw.amax(dim=1)
        clip = torch.where(full > 0, _row_quantile(absw, keep, config.percentile / 100) / full, 1.0).clamp(max=1.0)
    else:
        clip = torch.ones(w.shape[0])
    if config.clipping == "mse":
        best_err = torch.full((w.shape[0],), float("inf"))
        for ratio in _MSE_GRID:
            scale, zp = block_params(w, keep, config.bits, config.symmetric, torch.full_like(clip, float(ratio)))
            codes = quantize_blocks(w, config.bits, config.symmetric, scale, zp)
            err = _row_sse(_dequantize_blocks(codes, scale, zp), w, keep)
            better = err < best_err
            clip, best_err = torch.where(better, ratio, clip), torch.where(better, err, best_err)
    scale, zero_point = block_params(w, keep, config.bits, config.symmetric, clip)
    codes = quantize_blocks(w, config.bits, config.symmetric, scale, zero_point)
    codes = _kept(weight, _unblock(codes, weight).to(torch.int32))
    return CompressedWeight(
        weight.shape,
        weight.mask,
        config.bits,
        codes=codes,
        scale=scale.contiguous(),
        zero_point=None if zero_point is None else zero_point.contiguous(),
        group_size=config.group_size,
    )


def _dequantize_blocks(codes: Tensor, scale: Tensor, zero_point: Tensor | None) -> Tensor:
    s = scale.to(torch.float32)[:, None]
    return codes * s if zero_point is None else (codes - zero_point.to(torch.float32)[:, None]) * s


def _kept(weight: CompressedWeight, t: Tensor) -> Tensor:
    """Elements of ``t`` (same numel as the weight) at the kept positions, flat."""
    t = t.flatten()
    return t if weight.mask is None else t[weight.mask.flatten()]


def _row_quantile(x: Tensor, keep: Tensor, q: float) -> Tensor:
    """Per-row linear-interpolated quantile of the kept elements; 0 for rows with none.

    Sort-based rather than ``torch.quantile``, which refuses inputs over 2**24
    elements and cannot skip pruned entries without NaN tricks.
    """
    xs = x.masked_fill(~keep, float("inf")).sort(dim=1).values
    n = keep.sum(dim=1)
    pos = (n - 1).clamp(min=0).to(torch.float64) * q
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = (pos - lo).to(x.dtype)
    v = xs.gather(1, lo[:, None]).squeeze(1) * (1 - frac) + xs.gather(1, hi[:, None]).squeeze(1) * frac
    return torch.where(n > 0, v, torch.zeros_like(v))


def _sym_fake(w: Tensor, clip: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    """(codes, scale) of symmetric quantization with a per-row clip."""
    scale = clip / qmax
    # An all-zero (or denormal) row would divide by zero; any positive scale codes it as 0.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return torch.clamp(torch.round(w / scale[:, None]), -qmax, qmax), scale


def _affine_fake(w: Tensor, lo: Tensor, hi: Tensor, levels: int) -> tuple[Tensor, Tensor, Tensor]:
    """(codes, scale, zero_point) of asymmetric quantization onto ``levels`` levels of [lo, hi]."""
    scale = (hi - lo) / (levels - 1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.clamp(torch.round((w - lo[:, None]) / scale[:, None]), 0, levels - 1)
    return codes, scale, -lo / scale


def _row_sse(approx: Tensor, w: Tensor, keep: Tensor) -> Tensor:
    return ((approx - w) ** 2 * keep).sum(dim=1)


# -- handlers --------------------------------------------------------------------


@register_method(UniformQuantization)
def _uniform_quantize(
    module: nn.Module, weight: CompressedWeight, config: UniformQuantization, stats: object
) -> CompressedWeight:
    if config.group_size is not None:
        return _block_quantize(weight, config)
    w, keep = _grouped(weight, config.granularity)
    if config.symmetric:
        qmax = 2 ** (config.bits - 1) - 1
        absw = w.abs() * keep
        if config.clipping == "percentile":
            clip = _row_quantile(absw, keep, config.percentile / 100)
        else:
            clip = absw.amax(dim=1) if w.numel() else torch.zeros(w.shape[0])
        if config.clipping == "mse":
            best, best_err = clip, torch.full_like(clip, float("inf"))
            for ratio in _MSE_GRID:
                codes, scale = _sym_fake(w, clip * ratio, qmax)
                err = _row_sse(codes * scale[:, None], w, keep)
                better = err < best_err
                best, best_err = torch.where(better, clip * ratio, best), torch.where(better, err, best_err)
            clip = best
        codes, scale = _sym_fake(w, clip, qmax)
        zero_point = None
    else:
        levels = 2**config.bits
        if config.clipping == "percentile":
            p = config.percentile / 100
            lo, hi = _row_quantile(w, keep, 1 - p), _row_quantile(w, keep, p)
        else:
            has = keep.any(dim=1)
            lo = (
                torch.where(has, w.masked_fill(~keep, float("inf")).amin(dim=1), 0.0)
                if w.numel()
                else torch.zeros(w.shape[0])
            )
            hi = (
                torch.where(has, w.masked_fill(~keep, -float("inf")).amax(dim=1), 0.0)
                if w.numel()
                else torch.zeros(w.shape[0])
            )
        if config.clipping == "mse":
            # Shrink the range towards its midpoint, keeping the ratio with the least error per row.
            mid, half = (lo + hi) / 2, (hi - lo) / 2
            best_r, best_err = torch.ones_like(lo), torch.full_like(lo, float("inf"))
            for ratio in _MSE_GRID:
                codes, scale, zp = _affine_fake(w, mid - half * ratio, mid + half * ratio, levels)
                err = _row_sse((codes - zp[:, None]) * scale[:, None], w, keep)
                better = err < best_err
                best_r, best_err = torch.where(better, ratio, best_r), torch.where(better, err, best_err)
            lo, hi = mid - half * best_r, mid + half * best_r
        codes, scale, zero_point = _affine_fake(w, lo, hi, levels)
        zero_point = zero_point.contiguous()
    codes = _kept(weight, codes.to(torch.int32))
    return CompressedWeight(
        weight.shape, weight.mask, config.bits, codes=codes, scale=scale.contiguous(), zero_point=zero_point
    )


@register_method(KMeansQuantization)
def _kmeans_quantize(
    module: nn.Module, weight: CompressedWeight, config: KMeansQuantization, stats: object
) -> CompressedWeight:
    x = _kept(weight, weight.dense()).to(torch.float64)  # float64: sums of many weights stay exact enough
    k = 2**config.bits
    if x.numel() == 0:
        return CompressedWeight(
            weight.shape, weight.mask, config.bits, codes=torch.zeros(0, dtype=torch.int32), codebook=torch.zeros(k)
        )
    centroids = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)

    def assign(c: Tensor) -> Tensor:
        # 1-D: the nearest centroid is found by the midpoints between sorted centroids.
        return torch.bucketize(x, (c[1:] + c[:-1]) / 2)

    def update(c: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, idx, x)
        return torch.where(counts > 0, sums / counts.clamp(min=1), c), counts

    for _ in range(config.iterations):
        centroids = update(centroids, assign(centroids))[0].sort().values
    # Re-seed empty clusters on the worst-approximated weight (at most k times).
    for _ in range(k):
        idx = assign(centroids)
        empty = torch.bincount(idx, minlength=k) == 0
        if not empty.any():
            break
        err = (x - centroids[idx]).abs()
        if float(err.max()) == 0.0:
            break  # fewer distinct weights than centroids: nothing left to split
        centroids[int(empty.nonzero()[0])] = x[int(err.argmax())]
        centroids = update(centroids.sort().values, assign(centroids.sort().values))[0].sort().values
    idx = assign(centroids)
    centroids = update(centroids, idx)[0]  # the stored value of a code is its cluster's mean
    return CompressedWeight(
        weight.shape, weight.mask, config.bits, codes=idx.to(torch.int32), codebook=centroids.to(torch.float32)
    )


@register_method(BinaryQuantization)
def _binary_quantize(
    module: nn.Module, weight: CompressedWeight, config: BinaryQuantization, stats: object
) -> CompressedWeight:
    w, keep = _grouped(weight, config.granularity)
    alpha = (w.abs() * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    codes = _kept(weight, (w >= 0).to(torch.int32))
    # 1-bit affine: (code - 0.5) * (2 * alpha) is exactly -alpha or +alpha (multiplying by 2 and 0.5 is exact).
    return CompressedWeight(
        weight.shape,
        weight.mask,
        1,
        codes=codes,
        scale=(2 * alpha).contiguous(),
        zero_point=torch.full_like(alpha, 0.5),
    )


@register_method(TernaryQuantization)
def _ternary_quantize(
    module: nn.Module, weight: CompressedWeight, config: TernaryQuantization, stats: object
) -> CompressedWeight:
    w, keep = _grouped(weight, config.granularity)
    absw = w.abs() * keep
    delta = config.threshold * absw.sum(dim=1) / keep.sum(dim=1).clamp(min=1)
    big = (absw > delta[:, None]) & keep
    alpha = (absw * big).sum(dim=1) / big.sum(dim=1).clamp(min=1)
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    codes = _kept(weight, (torch.sign(w) * big).to(torch.int32))
    return CompressedWeight(weight.shape, weight.mask, 2, codes=codes, scale=alpha.contiguous())


@register_method(HalfPrecision)
def _half(module: nn.Module, weight: CompressedWeight, config: HalfPrecision, stats: object) -> CompressedWeight:
    values = _kept(weight, weight.dense()).to(HALF_DTYPES[config.dtype])
    return CompressedWeight(weight.shape, weight.mask, 16, values=values)
