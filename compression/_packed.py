"""The packed artifact: one safetensors file holding a compressed model.

Layout (format version 1). ``__metadata__`` holds JSON strings under
``format`` (``"rayzor.packed"``), ``format_version``, ``plan``, ``arch``,
``layers`` (per-layer encoding) and ``metadata`` (user strings). Tensors are
the model's state dict, except that each compressed weight ``<key>`` is
replaced by:

* ``<key>@codes``: uint8, codes offset by ``qmax`` and bit-packed at exactly
  ``bits`` bits each, plus ``<key>@scale``: fp32 per output channel; or
  ``<key>@values``: fp32 kept values when the layer is not quantized;
* for sparse layers, whichever is smaller: ``<key>@bitmap`` (packbits of the
  mask, ``ceil(numel / 8)`` bytes) or ``<key>@indices`` (flat positions of the
  kept weights in the smallest unsigned dtype that fits).

This is the storage scheme of Deep Compression (Han et al. 2015,
https://arxiv.org/abs/1510.00149) minus Huffman coding.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from compression._bitpack import pack_bits, unpack_bits
from compression._engine import CompressedModel
from compression._plan import CompressionPlan
from compression._weights import CompressedWeight
from compression.errors import ConfigError, RayzorError

__all__ = ["FORMAT", "FORMAT_VERSION", "PackedFormatError", "PackedInfo", "save_packed", "load_packed",
           "read_packed_info"]

FORMAT = "rayzor.packed"
FORMAT_VERSION = 1

# Candidate index dtypes, smallest first; signed ones are fallbacks where
# torch/safetensors lack the unsigned type.
_INDEX_DTYPES = [dt for dt in (torch.uint8, getattr(torch, "uint16", None), getattr(torch, "uint32", None),
                               torch.int32, torch.int64) if dt is not None]


class PackedFormatError(RayzorError):
    """A file is not a rayzor packed file, has an unsupported version, or does not fit the model."""


@dataclass
class PackedInfo:
    """Everything a packed file says about itself.

    Attributes:
        plan: The compression plan.
        arch: ``{"factory": "pkg.mod:fn", "kwargs": {...}}`` to rebuild the architecture.
        metadata: User metadata strings.
        weights: Decoded stored weight of every compressed layer.
    """

    plan: CompressionPlan
    arch: dict[str, Any]
    metadata: dict[str, str]
    weights: dict[str, CompressedWeight]


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


def _encode(key: str, cw: CompressedWeight, out: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Add ``cw``'s tensors to ``out``; return its JSON encoding info."""
    info: dict[str, Any] = {"shape": list(cw.shape), "bits": cw.bits, "kept": cw.kept, "mask": "dense"}
    if cw.mask is not None:
        flat = cw.mask.flatten().numpy()
        dtype = _index_dtype(flat.size)
        if cw.kept * dtype.itemsize < math.ceil(flat.size / 8):
            info["mask"] = "indices"
            out[f"{key}@indices"] = torch.from_numpy(np.flatnonzero(flat)).to(dtype)
        else:
            info["mask"] = "bitmap"
            out[f"{key}@bitmap"] = torch.from_numpy(np.packbits(flat, bitorder="little"))
    if cw.bits == 32:
        out[f"{key}@values"] = cw.values.detach().to(torch.float32).contiguous().clone()
    else:
        qmax = 2 ** (cw.bits - 1) - 1
        out[f"{key}@codes"] = torch.from_numpy(pack_bits(cw.codes.numpy().astype(np.int64) + qmax, cw.bits))
        out[f"{key}@scale"] = cw.scale.detach().to(torch.float32).contiguous().clone()
    return info


def _decode(key: str, info: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> CompressedWeight:
    shape, bits, kept = tuple(info["shape"]), int(info["bits"]), int(info["kept"])
    numel = math.prod(shape)
    mask = None
    if info["mask"] == "bitmap":
        bitmap = tensors.pop(f"{key}@bitmap").numpy()
        mask = torch.from_numpy(np.unpackbits(bitmap, count=numel, bitorder="little").astype(bool)).reshape(shape)
    elif info["mask"] == "indices":
        mask = torch.zeros(numel, dtype=torch.bool)
        mask[tensors.pop(f"{key}@indices").to(torch.int64)] = True
        mask = mask.reshape(shape)
    elif info["mask"] != "dense":
        raise ValueError(f"unknown mask encoding {info['mask']!r}")
    if mask is not None and int(mask.sum()) != kept:
        raise ValueError(f"mask keeps {int(mask.sum())} weights, header says {kept}")
    if bits == 32:
        values = tensors.pop(f"{key}@values")
        if values.numel() != kept:
            raise ValueError(f"{values.numel()} values for {kept} kept weights")
        return CompressedWeight(shape, mask, 32, values=values)
    qmax = 2 ** (bits - 1) - 1
    codes = unpack_bits(tensors.pop(f"{key}@codes").numpy(), bits, kept).astype(np.int32) - qmax
    return CompressedWeight(shape, mask, bits, codes=torch.from_numpy(codes), scale=tensors.pop(f"{key}@scale"))


def save_packed(compressed: CompressedModel, path: str | os.PathLike, *, arch: Mapping[str, Any],
                metadata: Mapping[str, str] | None = None) -> int:
    """Write ``compressed`` as one safetensors file (never pickle).

    Args:
        compressed: Result of :func:`compression.compress`.
        path: Destination file; overwritten.
        arch: ``{"factory": "package.module:function", "kwargs": {...}}``;
            ``factory(**kwargs)`` must rebuild the untrained architecture.
        metadata: Extra strings stored in the file (e.g. run ids).

    Returns:
        The file's size in bytes (``os.path.getsize(path)``).

    Raises:
        ConfigError: ``arch`` or ``metadata`` malformed.
    """
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

    # Clone so tied / non-contiguous tensors serialise (safetensors refuses shared storage).
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in compressed.model.state_dict().items()}
    layers = {}
    for name, cw in compressed.weights.items():
        key = _weight_key(name)
        del tensors[key]
        layers[name] = _encode(key, cw, tensors)
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "plan": compressed.plan.to_json(),
        "arch": arch_json,
        "layers": json.dumps(layers, sort_keys=True, separators=(",", ":")),
        "metadata": json.dumps(metadata, sort_keys=True, separators=(",", ":")),
    }
    with open(path, "wb") as f:
        f.write(safetensors.torch.save(tensors, metadata=header))
    return os.path.getsize(path)


def _read(path: str | os.PathLike) -> tuple[PackedInfo, dict[str, torch.Tensor]]:
    """Decode a packed file into its info and the remaining plain state-dict tensors."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        raise PackedFormatError(f"{path}: not a rayzor packed file (not safetensors: {e})") from None
    if header.get("format") != FORMAT:
        raise PackedFormatError(f"{path}: not a rayzor packed file (no format={FORMAT!r} in its metadata)")
    if header.get("format_version") != str(FORMAT_VERSION):
        raise PackedFormatError(f"{path}: packed format version {header.get('format_version')!r} is not "
                                f"supported; this rayzor reads version {FORMAT_VERSION}")
    try:
        plan = CompressionPlan.from_json(header["plan"])
        layers = json.loads(header["layers"])
        weights = {name: _decode(_weight_key(name), info, tensors) for name, info in layers.items()}
        info = PackedInfo(plan, json.loads(header["arch"]), json.loads(header["metadata"]), weights)
    except (KeyError, ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise PackedFormatError(f"{path}: corrupt rayzor packed file ({type(e).__name__}: {e})") from None
    return info, tensors


def read_packed_info(path: str | os.PathLike) -> PackedInfo:
    """Plan, arch, metadata and decoded weights of a packed file, without building a model.

    Raises:
        PackedFormatError: Not a rayzor packed file, or an unsupported version.
    """
    return _read(path)[0]


def _build(arch: Mapping[str, Any]) -> nn.Module:
    module_name, _, attr = str(arch.get("factory", "")).partition(":")
    try:
        factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError, ValueError) as e:
        raise PackedFormatError(f"cannot import the architecture factory {arch.get('factory')!r}: {e}") from None
    return factory(**arch.get("kwargs", {}))


def load_packed(path: str | os.PathLike, model: nn.Module | None = None) -> tuple[nn.Module, PackedInfo]:
    """Rebuild the compressed model stored at ``path``.

    Args:
        path: A file written by :func:`save_packed`.
        model: Skeleton to load into (deep-copied, left untouched); by default
            the file's ``arch`` factory builds one.

    Returns:
        The model in eval mode, whose outputs equal the original compressed
        model's exactly, and the file's :class:`PackedInfo`.

    Raises:
        PackedFormatError: Not a rayzor packed file, unsupported version, an
            unimportable factory, or tensors that do not fit the model.
    """
    info, tensors = _read(path)
    model = _build(info.arch) if model is None else copy.deepcopy(model)
    for name, cw in info.weights.items():
        tensors[_weight_key(name)] = cw.dense()
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise PackedFormatError(f"{path}: stored tensors do not fit the model: {e}") from None
    return model.eval(), info
