"""The exact stored representation of one compressed weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CompressedWeight"]


@dataclass
class CompressedWeight:
    """One layer's weight as it is stored: optional mask, codes + scales or fp32 values.

    Attributes:
        shape: Shape of the full weight; dim 0 is the output channel.
        mask: Bool tensor of ``shape``, True where a weight is kept; None = dense.
        bits: Bits per code, or 32 for plain fp32 values.
        codes: int32 codes of the kept elements (row-major order of the mask's
            True positions, or every element when dense), when ``bits < 32``.
        scale: fp32 scale per output channel, when ``bits < 32``.
        values: fp32 kept values (same order as ``codes``), when ``bits == 32``.
    """

    shape: tuple[int, ...]
    mask: torch.Tensor | None
    bits: int
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    values: torch.Tensor | None = None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None) -> CompressedWeight:
        """fp32 representation of ``weight`` keeping only ``mask``'s True positions."""
        w = weight.detach().to("cpu", torch.float32)
        flat = w.flatten() if mask is None else w.flatten()[mask.flatten()]
        return cls(tuple(w.shape), mask, 32, values=flat.clone())

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def kept(self) -> int:
        """Number of stored elements (all of them when dense)."""
        return self.numel if self.mask is None else int(self.mask.sum())

    def dense(self) -> torch.Tensor:
        """The fp32 weight the model runs with.

        Both :func:`compression.compress` and :func:`compression.load_packed`
        materialise weights through this one function, so a packed model's
        outputs are bit-identical to the in-memory compressed model's.
        """
        if self.bits == 32:
            vals = self.values.to(torch.float32)
        else:
            per_channel = self.numel // self.shape[0] if self.shape[0] else 0
            if self.mask is None:
                channel = torch.arange(self.numel) // max(per_channel, 1)
            else:
                channel = self.mask.flatten().nonzero().squeeze(1) // max(per_channel, 1)
            vals = self.codes.to(torch.float32) * self.scale[channel]
        if self.mask is None:
            return vals.reshape(self.shape).clone()
        out = torch.zeros(self.numel, dtype=torch.float32)
        out[self.mask.flatten()] = vals
        return out.reshape(self.shape)
