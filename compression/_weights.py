"""The exact stored representation of one compressed weight."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SCHEMES", "CompressedWeight"]

#: How stored numbers turn into weights; see :attr:`CompressedWeight.scheme`.
SCHEMES: tuple[str, ...] = ("float", "symmetric", "affine", "codebook")


@dataclass
class CompressedWeight:
    """One layer's weight as it is stored: optional mask plus one of four encodings.

    The encoding (:attr:`scheme`) follows from which fields are set:

    * ``"float"``: ``values`` (fp32, fp16 or bf16) hold the kept weights;
    * ``"symmetric"``: ``codes * scale[group]``, signed codes in
      ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``;
    * ``"affine"``: ``(codes - zero_point[group]) * scale[group]``, unsigned
      codes in ``[0, 2**bits)``; the zero point is fractional (weights only,
      so zero need not be exactly representable);
    * ``"codebook"``: ``codebook[codes]``, one shared table of ``2**bits``
      fp32 centroids (k-means weight sharing).

    Without ``group_size``, groups split the row-major weight into
    ``len(scale)`` equal runs: one group = per tensor, ``shape[0]`` groups =
    per output channel. With it, each output channel's ``K = numel / shape[0]``
    inputs are cut into blocks of ``group_size`` (the last block of a row may
    be shorter), ``shape[0] * ceil(K / group_size)`` groups in row-major
    order: the block layout of onnxruntime's ``MatMulNBits`` and
    ``GatherBlockQuantized``, so a deploy exporter writes codes, scales and
    zero points as they are.

    Attributes:
        shape: Shape of the full weight; dim 0 is the output channel.
        mask: Bool tensor of ``shape``, True where a weight is kept; None = dense.
        bits: Bits per stored element: 32 or 16 for float values, else per code.
        codes: int32 codes of the kept elements (row-major order of the mask's
            True positions, or every element when dense).
        scale: Scale per group (symmetric / affine): fp32, or fp16 for block-wise weights.
        values: Kept values (same order as ``codes``), for the float scheme.
        zero_point: Zero point per group (affine), same dtype as ``scale``;
            block-wise ones hold integers.
        codebook: fp32 centroids (codebook).
        group_size: Inputs per block along each output channel, or None (see above).
        input_scale: Optional ``(K,)`` per-input divisor (AWQ's activation-aware
            scales, fp16): the weight is the decoded one with column ``k`` of
            each row divided by ``input_scale[k]``. A runtime applies it to the
            layer's input instead (``x / input_scale``), or folds it into the
            op before.
    """

    shape: tuple[int, ...]
    mask: torch.Tensor | None
    bits: int
    codes: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    values: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    group_size: int | None = None
    input_scale: torch.Tensor | None = None

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None) -> CompressedWeight:
        """fp32 representation of ``weight`` keeping only ``mask``'s True positions."""
        w = weight.detach().to("cpu", torch.float32)
        flat = w.flatten() if mask is None else w.flatten()[mask.flatten()]
        return cls(tuple(w.shape), mask, 32, values=flat.clone())

    @property
    def scheme(self) -> str:
        """``"float"``, ``"symmetric"``, ``"affine"`` or ``"codebook"`` (see the class doc)."""
        if self.values is not None:
            return "float"
        if self.codebook is not None:
            return "codebook"
        if self.zero_point is not None:
            return "affine"
        return "symmetric"

    @property
    def groups(self) -> int:
        """Number of scale groups (1 = per tensor; ``shape[0]`` = per channel)."""
        return 1 if self.scale is None else int(self.scale.numel())

    @property
    def row_size(self) -> int:
        """``K``: elements per output channel (the input dimension of one row)."""
        return self.numel // max(self.shape[0], 1) if self.shape else 1

    def group_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Scale-group index of each flat position."""
        if self.group_size is None:
            per_group = max(self.numel // max(self.groups, 1), 1)
            return positions // per_group
        k = self.row_size
        blocks = -(-k // self.group_size)
        return (positions // k) * blocks + (positions % k) // self.group_size

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def kept(self) -> int:
        """Number of stored elements (all of them when dense)."""
        return self.numel if self.mask is None else int(self.mask.sum())

    def positions(self) -> torch.Tensor:
        """Flat indices (int64) of the stored elements, in storage order."""
        if self.mask is None:
            return torch.arange(self.numel)
        return self.mask.flatten().nonzero().squeeze(1)

    def dense(self) -> torch.Tensor:
        """The fp32 weight the model runs with.

        Both :func:`compression.compress` and :func:`compression.load_packed`
        materialise weights through this one function, so a packed model's
        outputs are bit-identical to the in-memory compressed model's.
        """
        scheme = self.scheme
        if scheme == "float":
            vals = self.values.to(torch.float32)
        elif scheme == "codebook":
            vals = self.codebook.to(torch.float32)[self.codes.long()]
        else:
            group = self.group_of(self.positions())
            codes = self.codes.to(torch.float32)
            scale = self.scale.to(torch.float32)
            if scheme == "affine":
                vals = (codes - self.zero_point.to(torch.float32)[group]) * scale[group]
            else:
                vals = codes * scale[group]
        if self.input_scale is not None:
            vals = vals / self.input_scale.to(torch.float32)[self.positions() % self.row_size]
        if self.mask is None:
            return vals.reshape(self.shape).clone()
        out = torch.zeros(self.numel, dtype=torch.float32)
        out[self.mask.flatten()] = vals
        return out.reshape(self.shape)
