"""Low-rank factorisation (the ``factorize`` stage): one layer becomes two or three smaller ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from rayzor.compression._registry import MethodConfig, check_real, register_method
from rayzor.errors import ConfigError

__all__ = ["LowRank", "Tucker2", "factor_rank", "low_rank_params", "tucker2_factors", "tucker2_params", "tucker2_ranks"]

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _check_rank_spec(cfg: LowRank | Tucker2) -> None:
    """Normalise ``rank_ratio`` / ``energy`` of a factorisation config and require exactly one."""
    for name in ("rank_ratio", "energy"):
        if getattr(cfg, name) is not None:
            value = check_real(f"{cfg.method}.{name}", getattr(cfg, name), 0.0, 1.0, lo_open=True)
            object.__setattr__(cfg, name, value)
    if (cfg.rank_ratio is None) == (cfg.energy is None):
        raise ConfigError(
            f"{cfg.method}.rank_ratio", cfg.rank_ratio, f"exactly one of rank_ratio or energy (energy={cfg.energy!r})"
        )


@dataclass(frozen=True)
class LowRank(MethodConfig):
    """Truncated SVD of a Linear or Conv layer into two smaller layers.

    ``W ~= U_r diag(s_r) V_r^T`` is the best rank-``r`` approximation in the
    Frobenius norm (Eckart & Young 1936); the layer becomes ``B(A(x))`` with
    ``A = sqrt(s_r) V_r^T`` (no bias) and ``B = U_r sqrt(s_r)`` (the original
    bias), as in Denton et al. 2014, "Exploiting Linear Structure Within
    Convolutional Networks for Efficient Evaluation",
    https://arxiv.org/abs/1404.0736. A Conv is decomposed over channels
    (Jaderberg et al. 2014, https://arxiv.org/abs/1405.3866, scheme 2): its
    weight is read as ``(out, in * k)``, ``A`` is the same conv with ``r``
    outputs and ``B`` a 1x1 conv. The module ``name`` becomes an
    ``nn.Sequential(A, B)``, whose weights are ``name.0`` / ``name.1`` for
    the later stages.

    The rank is ``max(1, round(rank_ratio * min(out, in * k)))`` or the
    smallest rank keeping ``energy`` of ``sum(s**2)``. A rank that does not
    reduce the parameter count is refused when the plan is validated.

    Args:
        rank_ratio: Fraction of the full rank, in (0, 1]; or
        energy: Fraction of the squared singular values to retain, in (0, 1].
            Exactly one of the two is given.
    """

    method: ClassVar[str] = "low_rank"
    stage: ClassVar[str] = "factorize"

    rank_ratio: float | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        _check_rank_spec(self)

    def validate(self, layer: str, module: nn.Module) -> None:
        if not isinstance(module, _SUPPORTED) or getattr(module, "groups", 1) != 1:
            raise ConfigError(
                f"plan.layers[{layer!r}].{self.method}", type(module).__name__, "Linear, Conv1d or Conv2d with groups=1"
            )
        if not layer:
            raise ConfigError(f"plan.layers[{layer!r}].{self.method}", layer, "a layer inside the model, not the root")
        rank = factor_rank(module.weight, self)
        full = module.weight.numel()
        if low_rank_params(module.weight.shape, rank) >= full:
            field = "rank_ratio" if self.rank_ratio is not None else "energy"
            out_, in_ = module.weight.shape[0], module.weight[0].numel()
            best = (full - 1) // (out_ + in_)
            raise ConfigError(
                f"plan.layers[{layer!r}].{self.method}.{field}",
                getattr(self, field),
                f"a value giving rank <= {best} (rank {rank} of a {out_}x{in_} weight stores "
                f"{low_rank_params(module.weight.shape, rank)} >= {full} parameters)",
            )

    @staticmethod
    def rebuild(module: nn.Module, spec: Mapping[str, Any]) -> nn.Sequential:
        """The untrained ``Sequential(A, B)`` for ``module`` at ``spec["rank"]`` (used by the packed loader)."""
        return _skeleton(module, int(spec["rank"]))


def low_rank_params(shape: torch.Size | tuple[int, ...], rank: int) -> int:
    """Weights stored by a rank-``rank`` factorisation of a weight of ``shape``."""
    out_, in_ = shape[0], int(torch.Size(shape[1:]).numel())
    return rank * (out_ + in_)


def _singular_values(weight: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(weight.detach().to(torch.float64).reshape(weight.shape[0], -1))


def factor_rank(weight: torch.Tensor, config: LowRank) -> int:
    """The rank ``config`` chooses for ``weight``."""
    full = min(weight.shape[0], weight[0].numel())
    if config.rank_ratio is not None:
        return max(1, min(full, round(config.rank_ratio * full)))
    energy = _singular_values(weight) ** 2
    kept = torch.cumsum(energy, 0) / energy.sum().clamp(min=torch.finfo(torch.float64).tiny)
    # Smallest r with kept[r-1] >= energy; the tolerance absorbs float64 rounding of an exact 1.0.
    return max(1, min(full, int((kept < config.energy - 1e-12).sum()) + 1))


def _skeleton(module: nn.Module, rank: int) -> nn.Sequential:
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Sequential(
            nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features, bias=bias)
        )
    conv = type(module)
    first = conv(
        module.in_channels,
        rank,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=False,
        padding_mode=module.padding_mode,
    )
    return nn.Sequential(first, conv(rank, module.out_channels, 1, bias=bias))


@register_method(LowRank)
def _low_rank(module: nn.Module, config: LowRank) -> tuple[nn.Module, dict[str, Any]]:
    w = module.weight.detach().to(torch.float64)
    rank = factor_rank(w, config)
    u, s, vh = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
    root = s[:rank].sqrt()
    new = _skeleton(module, rank)
    with torch.no_grad():
        a, b = new[0], new[1]
        a.weight.copy_((root[:, None] * vh[:rank]).reshape(a.weight.shape))
        b.weight.copy_((u[:, :rank] * root[None, :]).reshape(b.weight.shape))
        if module.bias is not None:
            b.bias.copy_(module.bias.detach())
    return new.to(module.weight.device), {"rank": rank}


# -- Tucker-2 ------------------------------------------------------------------------

_TUCKER_SUPPORTED = (nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class Tucker2(MethodConfig):
    """Tucker-2 decomposition of a Conv kernel over its output and input channels.

    Kim et al. 2016, "Compression of Deep Convolutional Neural Networks for
    Fast and Low Power Mobile Applications", https://arxiv.org/abs/1511.06530:
    the kernel ``K`` (out x in x k...) is approximated by the truncated
    higher-order SVD (De Lathauwer et al. 2000) on its two channel modes,
    ``K ~= C x_1 U_out x_2 U_in``, where ``U_out`` / ``U_in`` are the leading
    ``r_out`` / ``r_in`` left singular vectors of the mode-1 / mode-2
    unfoldings and ``C = K x_1 U_out^T x_2 U_in^T`` is the core. The conv
    becomes ``nn.Sequential`` of a 1x1 conv ``in -> r_in`` (``U_in^T``), a
    conv ``r_in -> r_out`` with the original kernel size, stride, padding
    and dilation (``C``), and a 1x1 conv ``r_out -> out`` (``U_out``, with
    the original bias); its weights are ``name.0`` / ``name.1`` / ``name.2``
    for the later stages. The paper picks ranks by VBMF and fine-tunes
    afterwards; here the ranks come from ``rank_ratio`` or ``energy`` and the
    plan's fine-tune does the recovery.

    Each rank is ``max(1, round(rank_ratio * full))`` of its mode's full rank
    (``min(out, in * k)`` for ``r_out``, ``min(in, out * k)`` for ``r_in``,
    ``k`` the kernel's spatial size), or the smallest rank keeping ``energy``
    of that unfolding's squared singular values. Ranks that do not reduce the
    parameter count are refused when the plan is validated. Conv1d and Conv2d
    with ``groups=1`` only: a grouped kernel has no full channel modes.

    Args:
        rank_ratio: Fraction of each mode's full rank, in (0, 1]; or
        energy: Fraction of each unfolding's squared singular values to
            retain, in (0, 1]. Exactly one of the two is given.
    """

    method: ClassVar[str] = "tucker2"
    stage: ClassVar[str] = "factorize"

    rank_ratio: float | None = None
    energy: float | None = None

    def __post_init__(self) -> None:
        _check_rank_spec(self)

    def validate(self, layer: str, module: nn.Module) -> None:
        where = f"plan.layers[{layer!r}].{self.method}"
        if not isinstance(module, _TUCKER_SUPPORTED):
            raise ConfigError(
                where, type(module).__name__, "Conv1d or Conv2d with groups=1 (low_rank factorises Linear layers)"
            )
        if module.groups != 1:
            raise ConfigError(
                f"{where}.groups", module.groups, "1: Tucker-2 needs a full out x in kernel, a grouped conv has none"
            )
        if not layer:
            raise ConfigError(where, layer, "a layer inside the model, not the root")
        shape = module.weight.shape
        r_out, r_in = tucker2_ranks(module.weight, self)
        full = module.weight.numel()
        if tucker2_params(shape, r_out, r_in) >= full:
            field = "rank_ratio" if self.rank_ratio is not None else "energy"
            best = _largest_useful_ratio(shape)
            hint = (
                "no ranks save parameters for this layer"
                if best is None
                else f"ranks storing fewer than {full} parameters, at most rank_ratio={best[0]:.2f} "
                f"(ranks out={best[1]}, in={best[2]})"
            )
            raise ConfigError(
                f"{where}.{field}",
                getattr(self, field),
                f"{hint}; ranks out={r_out}, in={r_in} of a {tuple(shape)} kernel store "
                f"{tucker2_params(shape, r_out, r_in)} >= {full} parameters",
            )

    @staticmethod
    def rebuild(module: nn.Module, spec: Mapping[str, Any]) -> nn.Sequential:
        """The untrained 1x1 / core / 1x1 ``Sequential`` for ``module`` at ``spec``'s ranks (packed loader)."""
        return _tucker_skeleton(module, int(spec["rank_out"]), int(spec["rank_in"]))


def _full_ranks(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    out_, in_, k = shape[0], shape[1], int(torch.Size(shape[2:]).numel())
    return min(out_, in_ * k), min(in_, out_ * k)


def tucker2_params(shape: torch.Size | tuple[int, ...], rank_out: int, rank_in: int) -> int:
    """Weights stored by a Tucker-2 factorisation of a kernel of ``shape`` at the given ranks."""
    out_, in_, k = shape[0], shape[1], int(torch.Size(shape[2:]).numel())
    return in_ * rank_in + rank_in * rank_out * k + rank_out * out_


def _ratio_ranks(shape: torch.Size | tuple[int, ...], ratio: float) -> tuple[int, int]:
    return tuple(max(1, min(full, round(ratio * full))) for full in _full_ranks(shape))  # type: ignore[return-value]


def _largest_useful_ratio(shape: torch.Size | tuple[int, ...]) -> tuple[float, int, int] | None:
    """(rank_ratio, r_out, r_in) of the largest rank_ratio in steps of 0.01 that saves parameters."""
    full = int(torch.Size(shape).numel())
    for step in range(100, 0, -1):
        r_out, r_in = _ratio_ranks(shape, step / 100)
        if tucker2_params(shape, r_out, r_in) < full:
            return step / 100, r_out, r_in
    return None


def _unfold(weight: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: that dimension as rows, every other one flattened into columns."""
    return weight.movedim(mode, 0).reshape(weight.shape[mode], -1)


def _energy_rank(matrix: torch.Tensor, energy: float) -> int:
    s2 = torch.linalg.svdvals(matrix) ** 2
    kept = torch.cumsum(s2, 0) / s2.sum().clamp(min=torch.finfo(torch.float64).tiny)
    # Smallest r with kept[r-1] >= energy; the tolerance absorbs float64 rounding of an exact 1.0.
    return int((kept < energy - 1e-12).sum()) + 1


def tucker2_ranks(weight: torch.Tensor, config: Tucker2) -> tuple[int, int]:
    """``(rank_out, rank_in)`` that ``config`` chooses for a conv kernel ``weight``."""
    if config.rank_ratio is not None:
        return _ratio_ranks(weight.shape, config.rank_ratio)
    w = weight.detach().to(torch.float64)
    full_out, full_in = _full_ranks(w.shape)
    return (
        max(1, min(full_out, _energy_rank(_unfold(w, 0), config.energy))),
        max(1, min(full_in, _energy_rank(_unfold(w, 1), config.energy))),
    )


def tucker2_factors(
    weight: torch.Tensor, rank_out: int, rank_in: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Truncated HOSVD of a conv kernel on its channel modes, in float64.

    Returns:
        ``(u_out, core, u_in)`` of shapes ``(out, r_out)``, ``(r_out, r_in,
        *k)`` and ``(in, r_in)``, with ``weight ~= core x_1 u_out x_2 u_in``.
    """
    w = weight.detach().to(torch.float64)
    u_out = torch.linalg.svd(_unfold(w, 0), full_matrices=False)[0][:, :rank_out]
    u_in = torch.linalg.svd(_unfold(w, 1), full_matrices=False)[0][:, :rank_in]
    core = torch.einsum("oi...,or,is->rs...", w, u_out, u_in)
    return u_out, core, u_in


def _tucker_skeleton(module: nn.Module, rank_out: int, rank_in: int) -> nn.Sequential:
    conv = type(module)
    core = conv(
        rank_in,
        rank_out,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        bias=False,
        padding_mode=module.padding_mode,
    )
    # 1x1 projections commute with zero / reflect / replicate / circular padding, so the core pads as the original.
    return nn.Sequential(
        conv(module.in_channels, rank_in, 1, bias=False),
        core,
        conv(rank_out, module.out_channels, 1, bias=module.bias is not None),
    )


@register_method(Tucker2)
def _tucker2(module: nn.Module, config: Tucker2) -> tuple[nn.Module, dict[str, Any]]:
    rank_out, rank_in = tucker2_ranks(module.weight, config)
    u_out, core, u_in = tucker2_factors(module.weight, rank_out, rank_in)
    new = _tucker_skeleton(module, rank_out, rank_in)
    with torch.no_grad():
        first, middle, last = new
        first.weight.copy_(u_in.T.reshape(first.weight.shape))
        middle.weight.copy_(core)
        last.weight.copy_(u_out.reshape(last.weight.shape))
        if module.bias is not None:
            last.bias.copy_(module.bias.detach())
    return new.to(module.weight.device), {"rank_out": rank_out, "rank_in": rank_in}
