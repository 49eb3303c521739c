"""Low-rank factorisation (the ``factorize`` stage): one layer becomes two smaller ones."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from compression._registry import MethodConfig, check_real, register_method
from compression.errors import ConfigError

__all__ = ["LowRank", "factor_rank", "low_rank_params"]

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


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
        for name in ("rank_ratio", "energy"):
            if getattr(self, name) is not None:
                value = check_real(f"{self.method}.{name}", getattr(self, name), 0.0, 1.0, lo_open=True)
                object.__setattr__(self, name, value)
        if (self.rank_ratio is None) == (self.energy is None):
            raise ConfigError(f"{self.method}.rank_ratio", self.rank_ratio,
                              f"exactly one of rank_ratio or energy (energy={self.energy!r})")

    def validate(self, layer: str, module: nn.Module) -> None:
        if not isinstance(module, _SUPPORTED) or getattr(module, "groups", 1) != 1:
            raise ConfigError(f"plan.layers[{layer!r}].{self.method}", type(module).__name__,
                              "Linear, Conv1d or Conv2d with groups=1")
        if not layer:
            raise ConfigError(f"plan.layers[{layer!r}].{self.method}", layer, "a layer inside the model, not the root")
        rank = factor_rank(module.weight, self)
        full = module.weight.numel()
        if low_rank_params(module.weight.shape, rank) >= full:
            field = "rank_ratio" if self.rank_ratio is not None else "energy"
            out_, in_ = module.weight.shape[0], module.weight[0].numel()
            best = (full - 1) // (out_ + in_)
            raise ConfigError(
                f"plan.layers[{layer!r}].{self.method}.{field}", getattr(self, field),
                f"a value giving rank <= {best} (rank {rank} of a {out_}x{in_} weight stores "
                f"{low_rank_params(module.weight.shape, rank)} >= {full} parameters)")

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
        return nn.Sequential(nn.Linear(module.in_features, rank, bias=False), nn.Linear(rank, module.out_features, bias=bias))
    conv = type(module)
    first = conv(module.in_channels, rank, module.kernel_size, stride=module.stride, padding=module.padding,
                 dilation=module.dilation, bias=False, padding_mode=module.padding_mode)
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
