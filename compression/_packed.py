"""The packed artifact: one safetensors file holding a compressed model.

Format version 3 (versions 1 and 2 are also read; 3 adds block-wise scale
groups, ``group_size``, fp16 scales and zero points, and AWQ's per-input
``@input_scale``). ``__metadata__`` holds strings:
``format`` (``"rayzor.packed"``), ``format_version``, ``plan``, ``arch``,
``layers`` (per-weight encoding), ``structure``, ``activations`` (if any),
``entropy`` (if any), ``metadata`` (user strings) and ``checksum`` (BLAKE2b of
every other entry and tensor, so a flipped byte is an error, never a silently
different model). Tensors are the state dict, each compressed weight
``<key>`` replaced by ``<key>@values`` (kept floats) or ``<key>@codes``
(bit-packed at exactly ``bits`` bits) with ``@scale`` and ``@zero_point`` or
``@codebook``, and for sparse layers the smallest of ``@bitmap``,
``@indices`` or ``@relative`` (relative indices: gaps in ``index_bits`` bits,
overflow carried by filler symbols ``2**index_bits - 1``).

This is the storage scheme of Deep Compression (Han et al. 2016,
https://arxiv.org/abs/1510.00149), with an optional general-purpose lossless
coder (``entropy="lzma"`` / ``"zstd"``, kept per tensor only where it pays)
in place of Huffman coding.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import lzma
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from rayzor._resolve import resolve
from rayzor.compression._actquant import apply_activation_quantization
from rayzor.compression._bitpack import pack_bits, unpack_bits
from rayzor.compression._engine import CompressedModel, apply_structure
from rayzor.compression._plan import CompressionPlan
from rayzor.compression._weights import SCHEMES, CompressedWeight
from rayzor.errors import ConfigError, PackedFormatError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ENTROPY_CODECS",
    "PackedFormatError",
    "PackedInfo",
    "save_packed",
    "load_packed",
    "read_packed_info",
]

FORMAT = "rayzor.packed"
FORMAT_VERSION = 3
_READABLE_VERSIONS = ("1", "2", "3")
#: Lossless codecs of the optional entropy stage.
ENTROPY_CODECS: tuple[str, ...] = ("lzma", "zstd")
# Raw LZMA2 stream: no .xz container, whose ~60 bytes matter for small tensors; integrity is the checksum's job.
# Decoding with preset 9's 64 MiB dictionary reads any stream these filters (or _lzma_filters) wrote.
_LZMA_PRESET = 9 | lzma.PRESET_EXTREME
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": _LZMA_PRESET}]
_LZMA_MAX_DICT = 64 << 20


def _lzma_filters(size: int) -> list[dict[str, int]]:
    """Preset 9e with a dictionary just large enough for ``size`` bytes.

    Preset 9's 64 MiB dictionary sets up a match finder of several hundred MiB
    on every call: about 50 ms per tensor whatever its size, which made the
    entropy stage most of a small model's trial. A dictionary that covers the
    whole input finds the same matches (the bytes written are the same on the
    tensors tried), in a fraction of the time.
    """
    dict_size = min(max(4096, 1 << max(size - 1, 1).bit_length()), _LZMA_MAX_DICT)
    return [{"id": lzma.FILTER_LZMA2, "preset": _LZMA_PRESET, "dict_size": dict_size}]


_FLOAT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Candidate index dtypes, smallest first; signed ones are fallbacks where
# torch/safetensors lack the unsigned type.
_INDEX_DTYPES = [
    dt
    for dt in (torch.uint8, getattr(torch, "uint16", None), getattr(torch, "uint32", None), torch.int32, torch.int64)
    if dt is not None
]


@dataclass
class PackedInfo:
    """Everything a packed file says about itself.

    Attributes:
        plan: The compression plan.
        arch: ``{"factory": "pkg.mod:fn", "kwargs": {...}}`` to rebuild the architecture.
        metadata: User metadata strings.
        weights: Decoded stored weight of every compressed layer (by module name).
        structure: Factorised layers, as :attr:`CompressedModel.structure`.
        entropy: The entropy codec used, or None.
        activations: Activation-quantized layers, as :attr:`CompressedModel.activations`.
    """

    plan: CompressionPlan
    arch: dict[str, Any]
    metadata: dict[str, str]
    weights: dict[str, CompressedWeight]
    structure: dict[str, dict] = field(default_factory=dict)
    entropy: str | None = None
    activations: dict[str, dict] = field(default_factory=dict)


def _weight_key(layer: str) -> str:
    return f"{layer}.weight" if layer else "weight"


@functools.cache
def _storable(dtype: torch.dtype) -> bool:
    try:
        safetensors.torch.save({"x": torch.zeros(1, dtype=dtype)})
        return True
    except Exception:  # noqa: BLE001 - any failure means "not storable here"
        return False


def _index_dtype(numel: int) -> torch.dtype:
    return next(dt for dt in _INDEX_DTYPES if _storable(dt) and numel - 1 <= torch.iinfo(dt).max)


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _pack(codes: np.ndarray, bits: int, byte_aligned: bool) -> torch.Tensor:
    # One byte per code feeds a byte-oriented entropy coder symbols it can model; bit-packed is smallest raw.
    if byte_aligned and bits <= 8:
        return torch.from_numpy(np.asarray(codes, dtype=np.uint8).copy())
    return torch.from_numpy(pack_bits(codes, bits))


def _unpack(buf: torch.Tensor, bits: int, count: int, byte_aligned: bool) -> np.ndarray:
    if byte_aligned and bits <= 8:
        arr = buf.numpy()
        if arr.size != count:
            raise ValueError(f"{arr.size} byte-aligned codes, header says {count}")
        return arr.astype(np.int64)
    return unpack_bits(buf.numpy(), bits, count).astype(np.int64)


# -- relative indices ------------------------------------------------------------


def relative_encode(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Symbols of Deep Compression's relative index coding of sorted ``positions``.

    A symbol ``s < M = 2**index_bits - 1`` means "skip ``s`` positions, then a
    kept weight"; ``M`` itself is a filler that skips ``M`` positions with no
    weight, so gaps of any length fit fixed-width symbols.
    """
    m = 2**index_bits - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    fillers = gaps // m
    out = np.full(int(fillers.sum()) + gaps.size, m, dtype=np.int64)
    out[np.cumsum(fillers + 1) - 1] = gaps % m
    return out


def relative_decode(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """Inverse of :func:`relative_encode`: the kept positions."""
    m = 2**index_bits - 1
    symbols = np.asarray(symbols, dtype=np.int64)
    step = np.where(symbols == m, m, symbols + 1)
    return (np.cumsum(step) - 1)[symbols != m]


def _relative_cost(positions: np.ndarray) -> tuple[int, int]:
    """(bytes, index_bits) of the cheapest relative coding, over 1..8 bits."""
    gaps = np.diff(positions.astype(np.int64), prepend=-1) - 1
    costs = [(math.ceil((int((gaps // (2**b - 1)).sum()) + gaps.size) * b / 8), b) for b in range(1, 9)]
    return min(costs)


def _encode_mask(
    key: str, mask: torch.Tensor, info: dict[str, Any], out: dict[str, torch.Tensor], byte_aligned: bool
) -> None:
    flat = mask.flatten().numpy()
    positions = np.flatnonzero(flat)
    dtype = _index_dtype(flat.size)
    rel_bytes, index_bits = _relative_cost(positions)
    options = {"bitmap": math.ceil(flat.size / 8), "relative": rel_bytes, "indices": positions.size * dtype.itemsize}
    info["mask"] = min(options, key=options.__getitem__)  # ties: the earlier, simpler one
    if info["mask"] == "bitmap":
        out[f"{key}@bitmap"] = torch.from_numpy(np.packbits(flat, bitorder="little"))
    elif info["mask"] == "indices":
        out[f"{key}@indices"] = torch.from_numpy(positions).to(dtype)
    else:
        symbols = relative_encode(positions, index_bits)
        info["index_bits"], info["symbols"] = index_bits, int(symbols.size)
        out[f"{key}@relative"] = _pack(symbols, index_bits, byte_aligned)


def _decode_mask(
    key: str, info: Mapping[str, Any], numel: int, tensors: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    kind = info["mask"]
    if kind == "dense":
        return None
    mask = torch.zeros(numel, dtype=torch.bool)
    if kind == "bitmap":
        bitmap = tensors.pop(f"{key}@bitmap").numpy()
        if bitmap.size != math.ceil(numel / 8):
            raise ValueError(f"{key}: bitmap of {bitmap.size} bytes for {numel} weights")
        return torch.from_numpy(np.unpackbits(bitmap, count=numel, bitorder="little").astype(bool))
    if kind == "indices":
        positions = tensors.pop(f"{key}@indices").to(torch.int64).numpy()
    elif kind == "relative":
        bits, count = int(info["index_bits"]), int(info["symbols"])
        aligned = info.get("layout") == "bytes"
        positions = relative_decode(_unpack(tensors.pop(f"{key}@relative"), bits, count, aligned), bits)
    else:
        raise ValueError(f"{key}: unknown mask encoding {kind!r}")
    if positions.size and (positions.min() < 0 or positions.max() >= numel or np.any(np.diff(positions) <= 0)):
        raise ValueError(f"{key}: kept positions out of order or outside 0..{numel - 1}")
    mask[torch.from_numpy(positions)] = True
    return mask


# -- one weight ------------------------------------------------------------------


def _encode(key: str, cw: CompressedWeight, out: dict[str, torch.Tensor], byte_aligned: bool = False) -> dict[str, Any]:
    """Add ``cw``'s tensors to ``out``; return its JSON encoding info.

    ``byte_aligned`` stores codes and relative indices one per byte (for the
    entropy stage) instead of bit-packed.
    """
    scheme = cw.scheme
    info: dict[str, Any] = {
        "shape": list(cw.shape),
        "bits": cw.bits,
        "kept": cw.kept,
        "mask": "dense",
        "scheme": scheme,
    }
    if byte_aligned:
        info["layout"] = "bytes"
    if cw.mask is not None:
        _encode_mask(key, cw.mask, info, out, byte_aligned)
    if scheme == "float":
        info["dtype"] = next(k for k, v in _FLOAT_DTYPES.items() if v == cw.values.dtype)
        out[f"{key}@values"] = cw.values.detach().contiguous().clone()
        return info
    codes = cw.codes.numpy().astype(np.int64) + (_qmax(cw.bits) if scheme == "symmetric" else 0)
    out[f"{key}@codes"] = _pack(codes, cw.bits, byte_aligned)
    if scheme == "codebook":
        out[f"{key}@codebook"] = cw.codebook.detach().to(torch.float32).contiguous().clone()
        return info
    info["groups"] = cw.groups
    if cw.group_size is not None:
        info["group_size"] = cw.group_size
    # Scales keep their dtype (fp16 for block-wise weights): what is stored is exactly what dense() reads.
    out[f"{key}@scale"] = cw.scale.detach().contiguous().clone()
    if scheme == "affine":
        out[f"{key}@zero_point"] = cw.zero_point.detach().contiguous().clone()
    if cw.input_scale is not None:
        info["input_scale"] = True
        out[f"{key}@input_scale"] = cw.input_scale.detach().contiguous().clone()
    return info


def _decode(key: str, info: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> CompressedWeight:
    shape, bits, kept = tuple(int(d) for d in info["shape"]), int(info["bits"]), int(info["kept"])
    numel = math.prod(shape)
    scheme = info.get("scheme", "float" if bits == 32 else "symmetric")  # version 1 had two schemes
    if scheme not in SCHEMES:
        raise ValueError(f"{key}: unknown scheme {scheme!r}")
    mask = _decode_mask(key, info, numel, tensors)
    if mask is not None:
        if int(mask.sum()) != kept:
            raise ValueError(f"{key}: mask keeps {int(mask.sum())} weights, header says {kept}")
        mask = mask.reshape(shape)
    elif kept != numel:
        raise ValueError(f"{key}: dense weight of {numel} elements, header says {kept} kept")
    if scheme == "float":
        values = tensors.pop(f"{key}@values")
        if values.numel() != kept or values.dtype != _FLOAT_DTYPES[info.get("dtype", "fp32")]:
            raise ValueError(f"{key}: {values.numel()} {values.dtype} values for {kept} kept weights")
        return CompressedWeight(shape, mask, bits, values=values)
    codes = _unpack(tensors.pop(f"{key}@codes"), bits, kept, info.get("layout") == "bytes").astype(np.int32)
    if scheme == "symmetric":
        codes -= _qmax(bits)
    codes = torch.from_numpy(codes)
    if scheme == "codebook":
        codebook = tensors.pop(f"{key}@codebook")
        if codebook.numel() != 2**bits:
            raise ValueError(f"{key}: codebook of {codebook.numel()} entries for {bits}-bit codes")
        return CompressedWeight(shape, mask, bits, codes=codes, codebook=codebook)
    scale = tensors.pop(f"{key}@scale")
    groups = int(info.get("groups", shape[0]))
    group_size = None if info.get("group_size") is None else int(info["group_size"])
    zero_point = tensors.pop(f"{key}@zero_point") if scheme == "affine" else None
    if group_size is not None:
        k = numel // max(shape[0], 1)
        even = group_size > 0 and groups == shape[0] * -(-k // group_size)
    else:
        even = not (numel and numel % max(groups, 1))
    if (
        scale.numel() != groups
        or not even
        or scale.dtype not in (torch.float32, torch.float16)
        or (zero_point is not None and (zero_point.numel() != groups or zero_point.dtype != scale.dtype))
    ):
        raise ValueError(f"{key}: {scale.numel()} {scale.dtype} scales for {groups} groups of a {list(shape)} weight")
    input_scale = tensors.pop(f"{key}@input_scale") if info.get("input_scale") else None
    if input_scale is not None and input_scale.numel() != numel // max(shape[0], 1):
        raise ValueError(f"{key}: {input_scale.numel()} input scales for rows of {numel // max(shape[0], 1)}")
    return CompressedWeight(
        shape,
        mask,
        bits,
        codes=codes,
        scale=scale,
        zero_point=zero_point,
        group_size=group_size,
        input_scale=input_scale,
    )


# -- entropy stage and checksum --------------------------------------------------


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _from_bytes(raw: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    if not raw:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()


def _compress(codec: str, raw: bytes) -> bytes:
    if codec == "lzma":
        return lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_lzma_filters(len(raw)))
    import zstandard

    return zstandard.ZstdCompressor(level=19).compress(raw)


def _decompress(codec: str, raw: bytes) -> bytes:
    if codec == "lzma":
        return lzma.decompress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    if codec == "zstd":
        import zstandard

        try:
            return zstandard.ZstdDecompressor().decompress(raw)
        except zstandard.ZstdError as e:
            raise ValueError(f"zstd: {e}") from None
    raise ValueError(f"unknown entropy codec {codec!r}")


def _coded_bytes(codec: str, tensors: Mapping[str, torch.Tensor]) -> int:
    return sum(min(len(raw), len(_compress(codec, raw))) for raw in map(_tensor_bytes, tensors.values()))


def _entropy_code(codec: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Replace each tensor by its compressed bytes where that is smaller; return the header entry."""
    coded = {}
    for key, t in tensors.items():
        raw = _tensor_bytes(t)
        packed = _compress(codec, raw)
        if len(packed) < len(raw):
            coded[key] = {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            tensors[key] = torch.frombuffer(bytearray(packed), dtype=torch.uint8).clone()
    return {"codec": codec, "tensors": coded}


def _entropy_decode(entropy: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    for key, spec in entropy["tensors"].items():
        dtype = getattr(torch, spec["dtype"])
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{key}: unknown dtype {spec['dtype']!r}")
        tensors[key] = _from_bytes(_decompress(entropy["codec"], _tensor_bytes(tensors[key])), dtype, spec["shape"])


def _checksum(header: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({k: v for k, v in header.items() if k != "checksum"}, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _serialise(compressed: CompressedModel, arch_json: str, metadata: Mapping[str, str], entropy: str | None) -> bytes:
    # Clone so tied / non-contiguous tensors serialise (safetensors refuses shared storage).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in compressed.model.state_dict().items()}
    layers = {}
    for name, cw in compressed.weights.items():
        key = _weight_key(name)
        del tensors[key]
        layers[name] = _encode(key, cw, tensors)
        if entropy is not None and cw.scheme != "float":
            # Keep whichever layout the entropy coder squeezes smaller.
            packed = {k: v for k, v in tensors.items() if k.startswith(f"{key}@")}
            aligned: dict[str, torch.Tensor] = {}
            aligned_info = _encode(key, cw, aligned, byte_aligned=True)
            if _coded_bytes(entropy, aligned) < _coded_bytes(entropy, packed):
                for k in packed:
                    del tensors[k]
                tensors.update(aligned)
                layers[name] = aligned_info
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "plan": compressed.plan.to_json(),
        "arch": arch_json,
        "layers": _dumps(layers),
        "structure": _dumps(compressed.structure),
        "metadata": _dumps(metadata),
    }
    if compressed.activations:  # absent otherwise, so files without them are byte-for-byte as before
        header["activations"] = _dumps(compressed.activations)
    if entropy is not None:
        header["entropy"] = _dumps(_entropy_code(entropy, tensors))
    header["checksum"] = _checksum(header, tensors)
    return _sorted_metadata(safetensors.torch.save(tensors, metadata=header))


def _sorted_metadata(data: bytes) -> bytes:
    """``data`` with its header's ``__metadata__`` entries in sorted key order: equal inputs, equal bytes.

    safetensors writes the metadata from a Rust ``HashMap``, in an order that
    changes with every save (safetensors issue #584), so two saves of one model
    differed byte for byte and no hash of a packed file could be compared.
    Sorting permutes the same JSON members: the header keeps its length and
    every tensor offset holds. The header is rewritten only where Python's
    compact JSON reproduces safetensors' own bytes exactly.
    """
    n = int.from_bytes(data[:8], "little")
    raw = data[8 : 8 + n].rstrip(b" ")  # safetensors pads the header with spaces to 8-byte alignment
    header = json.loads(raw)
    if "__metadata__" not in header or _compact_json(header) != raw:
        return data
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    return data[:8] + _compact_json(header) + data[8 + len(raw) :]


def _compact_json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def save_packed(
    compressed: CompressedModel,
    path: str | os.PathLike,
    *,
    arch: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
    entropy: str | None = None,
) -> int:
    """Write ``compressed`` as one safetensors file (never pickle).

    Args:
        compressed: Result of :func:`compression.compress`.
        path: Destination file; overwritten.
        arch: ``{"factory": "package.module:function", "kwargs": {...}}``;
            ``factory(**kwargs)`` must rebuild the untrained architecture.
        metadata: Extra strings stored in the file (e.g. run ids).
        entropy: Optional lossless stage over every tensor: ``"lzma"``
            (stdlib), ``"zstd"`` (zstandard) or None. Applied only where it
            makes the file smaller; :attr:`PackedInfo.entropy` says whether it was.

    Returns:
        The file's size in bytes (``os.path.getsize(path)``).

    Raises:
        ConfigError: ``arch``, ``metadata`` or ``entropy`` malformed.
    """
    if entropy is not None and entropy not in ENTROPY_CODECS:
        raise ConfigError("entropy", entropy, [*ENTROPY_CODECS, None])
    factory = arch.get("factory") if isinstance(arch, Mapping) else None
    if not isinstance(factory, str) or factory.count(":") != 1 or not all(factory.split(":")):
        raise ConfigError("arch.factory", factory, "a 'package.module:function' string")
    arch = {"kwargs": {}, **arch}
    if not isinstance(arch["kwargs"], Mapping):
        raise ConfigError("arch.kwargs", arch["kwargs"], "a mapping of keyword arguments")
    try:
        arch_json = json.dumps(arch, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError):
        raise ConfigError("arch", arch, "JSON-serialisable values") from None
    metadata = dict(metadata or {})
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ConfigError(f"metadata[{k!r}]", v, "str keys and str values")

    blob = _serialise(compressed, arch_json, metadata, None)
    if entropy is not None:
        # The entropy stage is kept only where it pays: its header entries cost bytes too.
        coded = _serialise(compressed, arch_json, metadata, entropy)
        blob = coded if len(coded) < len(blob) else blob
    with open(path, "wb") as f:
        f.write(blob)
    return os.path.getsize(path)


def _read(
    file: str | os.PathLike, label: str | None = None, allow_unverified: bool = False
) -> tuple[PackedInfo, dict[str, torch.Tensor]]:
    """Decode a packed file into its info and the remaining plain state-dict tensors.

    Errors name the file ``label`` (e.g. ``run ID`` for a download in a
    temporary folder), else its path. Every version's checksum is verified;
    a file that has none is refused unless ``allow_unverified``.
    """
    path = label or os.fspath(file)
    try:
        with safe_open(os.fspath(file), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise PackedFormatError(
            f"{path}: not a rayzor packed file, or a truncated or corrupt one (safetensors: {e})"
        ) from None
    if header.get("format") != FORMAT:
        raise PackedFormatError(f"{path}: not a rayzor packed file (no format={FORMAT!r} in its metadata)")
    version = header.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise PackedFormatError(
            f"{path}: packed format version {version!r} is not supported; this rayzor "
            f"reads versions {', '.join(_READABLE_VERSIONS)}"
        )
    if "checksum" not in header and not allow_unverified:
        raise PackedFormatError(
            f"{path}: packed format version {version} file without a checksum: its integrity cannot be "
            "verified; pass allow_unverified=True (rayzor export --allow-unverified) to read it anyway"
        )
    if "checksum" in header and header["checksum"] != _checksum(header, tensors):
        raise PackedFormatError(
            f"{path}: corrupt rayzor packed file (checksum mismatch: the file was damaged "
            "or modified after it was written)"
        )
    try:
        entropy = json.loads(header["entropy"]) if "entropy" in header else None
        if entropy is not None:
            _entropy_decode(entropy, tensors)
        plan = CompressionPlan.from_json(header["plan"])
        layers = json.loads(header["layers"])
        weights = {name: _decode(_weight_key(name), info, tensors) for name, info in layers.items()}
        structure = json.loads(header.get("structure", "{}"))
        info = PackedInfo(
            plan,
            json.loads(header["arch"]),
            json.loads(header["metadata"]),
            weights,
            structure,
            None if entropy is None else entropy["codec"],
            json.loads(header.get("activations", "{}")),
        )
    except (KeyError, ValueError, TypeError, lzma.LZMAError, RuntimeError) as e:  # ConfigError is a ValueError
        raise PackedFormatError(f"{path}: corrupt rayzor packed file ({type(e).__name__}: {e})") from None
    return info, tensors


def read_packed_info(
    path: str | os.PathLike, *, label: str | None = None, allow_unverified: bool = False
) -> PackedInfo:
    """Plan, arch, metadata and decoded weights of a packed file, without building a model.

    Raises:
        PackedFormatError: Not a rayzor packed file, or an unsupported version.
    """
    return _read(path, label, allow_unverified)[0]


def _build(arch: Mapping[str, Any]) -> nn.Module:
    try:
        factory = resolve(arch.get("factory"), "arch.factory", error=PackedFormatError)
    except ConfigError as e:
        raise PackedFormatError(f"cannot import the architecture factory: {e}") from None
    return factory(**arch.get("kwargs", {}))


def load_packed(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    *,
    label: str | None = None,
    allow_unverified: bool = False,
) -> tuple[nn.Module, PackedInfo]:
    """Rebuild the compressed model stored at ``path``.

    Args:
        path: A file written by :func:`save_packed`.
        model: Skeleton to load into (deep-copied, left untouched); by default
            the file's ``arch`` factory builds one.
        label: What errors call the file instead of its path (``run ID``).
        allow_unverified: Read a file without a checksum (older writers).

    Returns:
        The model in eval mode, whose outputs equal the original compressed
        model's exactly, and the file's :class:`PackedInfo`.

    Raises:
        PackedFormatError: Not a rayzor packed file, unsupported version, a
            checksum that does not match or is missing, an unimportable factory, or tensors that do not fit the model.
    """
    info, tensors = _read(path, label, allow_unverified)
    path = label or os.fspath(path)
    model = _build(info.arch) if model is None else copy.deepcopy(model)
    try:
        apply_structure(model, info.structure)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        raise PackedFormatError(f"{path}: cannot rebuild the factorised layers {list(info.structure)}: {e}") from None
    try:
        apply_activation_quantization(model, info.activations)
    except (AttributeError, KeyError, ValueError, TypeError) as e:
        raise PackedFormatError(
            f"{path}: cannot rebuild the activation-quantized layers {list(info.activations)}: {e}"
        ) from None
    for name, cw in info.weights.items():
        tensors[_weight_key(name)] = cw.dense()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise PackedFormatError(f"{path}: stored tensors do not fit the model: {e}") from None
    return model.eval(), info
