"""Deployment targets: what a search space may offer when its models must run in a given runtime.

``packed`` is rayzor's own file (every method, any bit-width; for archival and
research). ``onnxruntime`` offers only what onnxruntime's CPU kernels execute
natively, so the deploy artifact a trial measures is as small and as fast as
its numbers say: block-wise 2/4/8-bit Linear weights (``MatMulNBits``), 2/4/8-bit
embeddings (``GatherBlockQuantized``), per-channel int8 convolutions
(``DequantizeLinear`` weights), fp16 weights, and the structural methods
(pruned channels and heads, low-rank and Tucker factors), which give real
smaller shapes. Unstructured sparsity stays allowed: it shrinks the packed
file but not a dense runtime file, and ``deploy_bytes`` shows it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from rayzor.errors import ConfigError
from rayzor.spaces._settings import takes_group_size

__all__ = [
    "DEFAULT_TARGET",
    "RUNTIME_DEFAULTS",
    "RUNTIME_METHODS",
    "TARGETS",
    "check_target",
    "int8_kernels",
    "runtime_bits",
]

TARGETS: tuple[str, ...] = ("onnxruntime", "packed")
DEFAULT_TARGET = "onnxruntime"
#: Quantization methods whose codes onnxruntime runs as they are stored.
RUNTIME_METHODS: tuple[str, ...] = ("awq", "gptq", "half_precision", "uniform_quantization")
#: Weight bit-widths per layer kind under onnxruntime; 32 = fp32. MatMulNBits and GatherBlockQuantized (uint8
#: data) unpack 2, 4 and 8 bits; integer convolutions take int8.
_KIND_BITS: dict[str, tuple[int, ...]] = {"linear": (2, 4, 8, 32), "embedding": (2, 4, 8, 32), "conv": (8, 32)}
#: Space settings a search under onnxruntime starts from where the config leaves them out.
RUNTIME_DEFAULTS: dict[str, Any] = {"bits": (2, 4, 8, 32), "group_size": (32, 128)}


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Embedding):
        return "embedding"
    return "conv" if isinstance(module, (nn.Conv1d, nn.Conv2d)) else "linear"


def runtime_bits(target: str, module: nn.Module, bits: tuple[int, ...]) -> tuple[int, ...]:
    """The candidate bit-widths of ``bits`` that ``target`` executes natively on ``module`` (32 at least)."""
    if target == "packed":
        return bits
    return tuple(b for b in bits if b in _KIND_BITS[_kind(module)]) or (32,)


def int8_kernels(target: str, accuracy_level: int, module: nn.Module) -> bool:
    """Whether ``target`` runs ``module``'s symmetric per-channel int8 codes on integer GEMMs.

    onnxruntime does for MatMul / Gemm layers at ``accuracy_level`` 4
    (``DynamicQuantizeLinear`` + ``MatMulInteger``; see ``export_deploy``).
    """
    return target == "onnxruntime" and accuracy_level == 4 and _kind(module) == "linear"


def runtime_methods(target: str, module: nn.Module, methods: tuple[str, ...]) -> tuple[str, ...]:
    """The methods of ``methods`` whose codes ``target`` runs as stored on ``module``.

    Convolutions under onnxruntime take per-channel int8 only: the block-wise
    calibrated quantizers stay on MatMul layers.
    """
    if target == "packed":
        return methods
    if _kind(module) == "conv":
        return tuple(m for m in methods if m in ("uniform_quantization", "half_precision")) or ("uniform_quantization",)
    return methods


def check_target(target: str, space: Any) -> None:
    """Refuse space settings ``target`` cannot execute, naming the field, before any compute.

    Args:
        target: One of :data:`TARGETS`.
        space: The validated space settings (``SpaceSettings``).

    Raises:
        ConfigError: e.g. ``space.bits: [3]`` under ``target: onnxruntime``.
    """
    if target not in TARGETS:
        raise ConfigError("target", target, TARGETS)
    if target == "packed":
        return
    scopes = [("space", space)] + [(f"space.groups[{g.name}]", g) for g in space.groups]
    hint = "; set target: packed to search it in rayzor's packed format"
    for where, s in scopes:
        bits = s.bits if where == "space" or s.bits is not None else None
        if bits is not None:
            bad = [b for b in ((bits,) if isinstance(bits, int) else bits) if b not in _KIND_BITS["linear"]]
            if bad:
                raise ConfigError(
                    f"{where}.bits",
                    list(bits) if not isinstance(bits, int) else bits,
                    f"bit-widths from 2, 4, 8 and 32 under target onnxruntime (MatMulNBits){hint}",
                )
        methods = s.methods
        if methods is not None:
            bad = [m for m in methods if m not in RUNTIME_METHODS]
            if bad:
                raise ConfigError(
                    f"{where}.methods",
                    list(methods),
                    f"methods from {', '.join(RUNTIME_METHODS)} under target onnxruntime{hint}",
                )
        act = s.act_bits
        if act and any(b != 32 for b in ((act,) if isinstance(act, int) else act)):
            raise ConfigError(
                f"{where}.act_bits",
                list(act) if not isinstance(act, int) else act,
                "[] under target onnxruntime (calibrated activation ranges have no native kernel there)" + hint,
            )
    if not space.group_size and any(takes_group_size(m) for m in space.methods):
        raise ConfigError(
            "space.group_size",
            [],
            "one or more block sizes from 16..256 (or 0: per output channel) under target onnxruntime "
            "(MatMulNBits is block-wise)" + hint,
        )
