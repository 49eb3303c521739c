"""Dense bit packing of unsigned integer codes (1..16 bits each)."""

from __future__ import annotations

import numpy as np

from rayzor.errors import ConfigError

__all__ = ["pack_bits", "unpack_bits"]

# Codes per chunk: bounds the (chunk, 16) uint8 temporaries to 16 MiB; a
# multiple of 8 so every chunk ends on a byte boundary for any bit width.
_CHUNK = 1 << 20


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= bits <= 16:
        raise ConfigError("bits", bits, "an integer in 1..16")


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes at exactly ``bits`` bits each, little-endian bit order.

    Args:
        codes: 1-D array of integers in ``[0, 2**bits)``.
        bits: Bits per code, 1..16.

    Returns:
        uint8 array of ``ceil(len(codes) * bits / 8)`` bytes.

    Raises:
        ConfigError: ``bits`` outside 1..16 or a code that does not fit.
    """
    _check_bits(bits)
    codes = np.asarray(codes).ravel()
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        bad = codes.min() if codes.min() < 0 else codes.max()
        raise ConfigError("codes", int(bad), f"unsigned integers < 2**{bits}")
    if bits == 8:
        return codes.astype(np.uint8)
    if bits == 16:
        return codes.astype("<u2").view(np.uint8)
    out = []
    for start in range(0, codes.size, _CHUNK):
        # (n, 2) little-endian bytes -> (n, 16) bits, LSB first; keep the low `bits` columns.
        as_bytes = codes[start : start + _CHUNK].astype("<u2").view(np.uint8).reshape(-1, 2)
        bitmat = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
        out.append(np.packbits(bitmat.ravel(), bitorder="little"))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint8)


def unpack_bits(buf: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` codes of ``buf`` as uint16.

    Raises:
        ConfigError: ``bits`` outside 1..16, or ``buf`` too short for ``count`` codes.
    """
    _check_bits(bits)
    buf = np.asarray(buf, dtype=np.uint8).ravel()
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or not 0 <= count <= buf.size * 8 // bits:
        raise ConfigError("count", count, f"0..{buf.size * 8 // bits} codes for {buf.size} bytes at {bits} bits")
    if bits == 8:
        return buf[:count].astype(np.uint16)
    if bits == 16:
        return buf[: 2 * count].view("<u2").astype(np.uint16)
    out = []
    step = _CHUNK * bits // 8  # bytes per chunk of codes
    for i, start in enumerate(range(0, count, _CHUNK)):
        n = min(_CHUNK, count - start)
        bitmat = np.unpackbits(buf[i * step : i * step + step], count=n * bits, bitorder="little").reshape(n, bits)
        padded = np.zeros((n, 16), dtype=np.uint8)
        padded[:, :bits] = bitmat
        out.append(np.packbits(padded, axis=1, bitorder="little").view("<u2").ravel())
    return np.concatenate(out).astype(np.uint16) if out else np.zeros(0, dtype=np.uint16)
