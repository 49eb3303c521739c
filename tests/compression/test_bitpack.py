"""Bit packing of quantization codes, through the packed file: codes take exactly ``bits`` bits each."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from torch import nn

from rayzor.compression import CompressionPlan, ConfigError, UniformQuantization, compress, load_packed, save_packed


def _round_trip(tmp_path, in_features: int, out_features: int, bits: int):
    """Quantize a bare Linear at ``bits``, pack it, reload it; returns (compressed weight, loaded weight, codes bytes)."""
    torch.manual_seed(bits * 1000 + in_features * out_features)
    layer = nn.Linear(in_features, out_features)
    # 1 bit has no symmetric grid (UniformQuantization refuses it); every other width runs the default scheme.
    out = compress(layer, CompressionPlan({"": (UniformQuantization(bits, symmetric=bits > 1),)}))
    path = tmp_path / f"b{bits}.rzp"
    save_packed(
        out,
        path,
        arch={"factory": "torch.nn:Linear", "kwargs": {"in_features": in_features, "out_features": out_features}},
    )
    with safe_open(path, "pt") as f:
        stored = f.get_tensor("weight@codes")
    _, info = load_packed(path)
    return out.weights[""], info.weights[""], stored


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (13, 1), (77, 13)], ids=["1", "7", "13", "1001"])
def test_codes_round_trip_at_exactly_bits_each(tmp_path, bits, shape):
    cw, loaded, stored = _round_trip(tmp_path, *shape, bits)
    count = shape[0] * shape[1]
    assert stored.dtype == torch.uint8
    assert stored.numel() == -(-count * bits // 8)  # exactly `bits` bits per code
    assert torch.equal(loaded.codes, cw.codes) and torch.equal(loaded.dense(), cw.dense())


def test_round_trip_across_packing_chunks(tmp_path):
    # Packing works in chunks of 2**20 codes; 1.1M codes at 5 bits cross a chunk boundary.
    cw, loaded, stored = _round_trip(tmp_path, 1100, 1000, 5)
    assert stored.numel() == -(-1100 * 1000 * 5 // 8)
    assert torch.equal(loaded.codes, cw.codes)


@pytest.mark.parametrize("bits", [0, 17, 2.0])
def test_bad_bits(bits):
    with pytest.raises(ConfigError, match="bits"):
        UniformQuantization(bits)
