from __future__ import annotations

import numpy as np
import pytest

from rayzor.compression import ConfigError, pack_bits, unpack_bits


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("count", [0, 1, 7, 13, 1001])
def test_round_trip(bits, count):
    codes = np.random.default_rng(bits * 1000 + count).integers(0, 2**bits, size=count)
    codes[: min(count, 2)] = [2**bits - 1, 0][: min(count, 2)]  # extremes
    buf = pack_bits(codes, bits)
    assert buf.dtype == np.uint8
    assert buf.size == -(-count * bits // 8)  # exactly `bits` bits per code
    np.testing.assert_array_equal(unpack_bits(buf, bits, count), codes)


def test_round_trip_across_chunks(monkeypatch):
    import rayzor.compression._bitpack as bp

    monkeypatch.setattr(bp, "_CHUNK", 64)
    codes = np.random.default_rng(0).integers(0, 2**5, size=1000)
    np.testing.assert_array_equal(bp.unpack_bits(bp.pack_bits(codes, 5), 5, 1000), codes)


@pytest.mark.parametrize("bits", [0, 17, 2.0])
def test_bad_bits(bits):
    with pytest.raises(ConfigError, match="bits"):
        pack_bits(np.zeros(3, dtype=np.int64), bits)


def test_code_too_large():
    with pytest.raises(ConfigError, match="codes.*8"):
        pack_bits(np.array([1, 8]), 3)


def test_buffer_too_short():
    with pytest.raises(ConfigError, match="count.*9"):
        unpack_bits(np.zeros(1, dtype=np.uint8), 1, 9)
