"""The deploy artifact: an ONNX file that stores each layer's codes and scales as they are.

:func:`compression.export_onnx` writes every weight as fp32, so the file is
as large as the uncompressed model whatever the plan. :func:`export_deploy`
starts from that export and replaces each compressed weight by the stored
codes and scales of its :class:`CompressedWeight`, written into operators
that onnxruntime's CPU provider executes natively (nothing is rounded a second
time, so the artifact computes with exactly the weights the torch model uses):

* ``"matmul_nbits"``: a Linear with block-wise 2/4/8-bit codes becomes
  ``com.microsoft.MatMulNBits`` (AWQ's per-input scales as a ``Div`` of its
  input); so does one with per-channel or per-tensor codes of up to 8 bits,
  its scale repeated over blocks (onnxruntime would otherwise fuse
  ``DequantizeLinear`` + ``MatMul`` into a MatMulNBits of its own at
  ``accuracy_level`` 4, quantizing the activations of a file meant to compute
  in fp32);
* ``"gather_block_quantized"``: an Embedding with block-wise 2/4/8-bit codes
  becomes ``com.microsoft.GatherBlockQuantized``;
* ``"int8_dequantize"``: a Conv with per-channel or per-tensor codes of at
  most 8 bits (symmetric, or affine with integer zero points) becomes an
  int8 / uint8 initializer behind ``DequantizeLinear``;
* ``"half"``: fp16 / bf16 values stay 16-bit behind a ``Cast`` to fp32;
* ``"dense"``: anything else (k-means codebooks, fractional zero points,
  3/5/6/7-bit block codes, ...) stays an fp32 initializer.

GatherBlockQuantized with uint8 data runs at the exporter's opset 17 (checked
on onnxruntime 1.32), so the graph is not converted to opset 21.

Pruned weights of a sparse layer are written as codes that decode to exactly
zero, so a mask never forces the dense kind (but brings no saving either:
these ops store every element). Byte layouts follow onnxruntime's contrib-op
kernels (``matmul_nbits.cc``, ``gather_block_quantized.cc``) and were checked
against its ``quantize_matmul_{2,4,8}bits`` helpers: within a byte, element
``j`` of ``8 // bits`` sits at bit ``j * bits`` (lowest first); zero points
are packed the same way along each row's blocks; without zero points the
kernels use ``2**(bits-1)``.

Block scales are stored as they are kept, at fp16, behind a ``Cast`` to fp32
(both kernels take fp32 scales with fp32 activations). The cast of an
initializer is constant-folded when onnxruntime loads the file, so the kernels
see the same fp32 scales (fp16 -> fp32 is exact), prepack them as before, and
the file holds half the scale bytes: 352 KB of MiniLM's int4 artifact. Only a
scale tensor large enough to pay for the extra node (:data:`_HALF_SCALES_MIN`)
is stored this way.
"""

from __future__ import annotations

import hashlib
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rayzor.compression._actquant import QuantizedInput
from rayzor.compression._calibration import LayerStats
from rayzor.compression._engine import CompressedModel
from rayzor.compression._onnx import _session, export_onnx
from rayzor.compression._registry import MethodConfig, get_handler
from rayzor.compression._weights import CompressedWeight
from rayzor.errors import ConfigError

__all__ = [
    "DEPLOY_KINDS",
    "LATENCY_SECONDS",
    "deploy_kind",
    "runtime_refusal",
    "export_deploy",
    "measure_deploy_latency",
]

#: Least span of :func:`measure_deploy_latency`'s timed rounds: long enough to meet the core's fast
#: speed on a VM whose speed alternates (BENCHMARKS.md "latency_agreement").
LATENCY_SECONDS = 0.3

#: What :func:`deploy_kind` can answer (see the module doc).
DEPLOY_KINDS: tuple[str, ...] = ("matmul_nbits", "gather_block_quantized", "int8_dequantize", "half", "dense")
#: Code widths MatMulNBits and GatherBlockQuantized (uint8 storage) unpack.
_NBITS: tuple[int, ...] = (2, 4, 8)
#: Block sizes MatMulNBits' CPU kernels take.
_NBITS_BLOCKS: tuple[int, ...] = (16, 32, 64, 128, 256)
_MS_DOMAIN = "com.microsoft"
#: Fewest block scales stored at fp16 behind a Cast: below it the node costs more bytes than it saves.
_HALF_SCALES_MIN = 64


def _unwrap(module: nn.Module | None) -> nn.Module | None:
    # An activation-quantized layer's weight is keyed name.layer, but callers may pass the wrapper.
    return module.layer if isinstance(module, QuantizedInput) else module


def _integer_zero_points(cw: CompressedWeight, hi: int) -> bool:
    zp = cw.zero_point.to(torch.float32)
    return bool(torch.all(zp == torch.round(zp)) and torch.all((zp >= 0) & (zp <= hi)))


def deploy_kind(cw: CompressedWeight, module: nn.Module | None) -> str:
    """How :func:`export_deploy` stores ``cw``, one of :data:`DEPLOY_KINDS`.

    A search can refuse settings whose answer is ``"dense"``: their artifact
    keeps fp32 weights, whatever the packed size says.

    Args:
        cw: The stored weight.
        module: The layer it belongs to (a :class:`QuantizedInput` counts as its wrapped layer).
    """
    module = _unwrap(module)
    scheme = cw.scheme
    if scheme == "float":
        return "half" if cw.values.dtype in (torch.float16, torch.bfloat16) else "dense"
    if scheme not in ("symmetric", "affine") or cw.bits > 8:
        return "dense"
    if scheme == "affine" and not _integer_zero_points(cw, 2**cw.bits - 1):
        return "dense"  # fractional zero points: no integer op decodes them exactly
    if cw.group_size is not None:
        if cw.bits not in _NBITS:
            return "dense"
        if isinstance(module, nn.Linear):
            return "matmul_nbits"
        # The kernel unpacks whole bytes per row: an odd row at 4 bits would grow by one element.
        if isinstance(module, nn.Embedding) and cw.input_scale is None and cw.row_size % (8 // cw.bits) == 0:
            return "gather_block_quantized"
        return "dense"
    if cw.input_scale is None and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        if cw.groups in (1, cw.shape[0]):  # one scale per tensor or per output channel
            return "matmul_nbits" if isinstance(module, nn.Linear) else "int8_dequantize"
    return "dense"


def runtime_refusal(config: MethodConfig, module: nn.Module) -> str | None:
    """Why ``config`` on ``module`` would deploy as a dense fp32 weight, or None when it deploys compressed.

    Only quantize-stage methods change how a weight is stored; for any other
    config the answer is None. The storage format is read off the method's
    output on a small stand-in weight (calibrated methods with identity
    statistics), so the rule cannot drift from :func:`deploy_kind`.
    """
    if getattr(config, "stage", None) != "quantize":
        return None
    module = _unwrap(module)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    stand_in = torch.randn(
        (min(int(weight.shape[0]), 4), *weight.shape[1:]), generator=torch.Generator().manual_seed(0)
    )
    stats = None
    if getattr(config, "calibrated", False):
        # The format does not depend on the statistics: identity ones on a (4, <=256) slice keep this cheap.
        stand_in = stand_in.reshape(stand_in.shape[0], -1)[:, :256].contiguous()
        stats = LayerStats(torch.eye(stand_in.shape[1]), 1)
    cw = get_handler(config)(module, CompressedWeight.from_dense(stand_in), config, stats)
    if deploy_kind(cw, module) != "dense":
        return None
    return (
        f"{config.method} on {type(module).__name__} deploys as a dense fp32 weight: onnxruntime stores block-wise "
        "2/4/8-bit codes (MatMulNBits, GatherBlockQuantized), <=8-bit per-channel or per-tensor codes with integer "
        "zero points (DequantizeLinear) and fp16/bf16 values, nothing else"
    )


# -- codes in runtime layouts --------------------------------------------------------------------


def _full_codes(cw: CompressedWeight) -> np.ndarray:
    """int64 code of every element (row-major), pruned ones set to what decodes to exactly zero."""
    n = cw.numel
    if cw.scheme == "affine":
        full = cw.zero_point.to(torch.float32).round().to(torch.int64)[cw.group_of(torch.arange(n))]
    else:
        full = torch.zeros(n, dtype=torch.int64)
    full[cw.positions()] = cw.codes.to(torch.int64)
    return full.numpy()


def _pack(a: np.ndarray, bits: int) -> np.ndarray:
    """uint8 packing of the last axis (length a multiple of ``8 // bits``), element j at bit ``(j % per) * bits``."""
    per = 8 // bits
    a = a.astype(np.uint8)
    out = np.zeros((*a.shape[:-1], a.shape[-1] // per), dtype=np.uint8)
    for j in range(per):
        out |= a[..., j::per] << np.uint8(j * bits)
    return out


def _pad_last(a: np.ndarray, multiple: int, fill: np.ndarray | int) -> np.ndarray:
    pad = -a.shape[-1] % multiple
    if not pad:
        return a
    filler = np.broadcast_to(np.asarray(fill)[..., None] if np.ndim(fill) else fill, (*a.shape[:-1], pad))
    return np.concatenate([a, filler.astype(a.dtype)], axis=-1)


def _nbits_block(k: int, bits: int) -> int:
    """MatMulNBits block size for codes with one scale per row: the one with the fewest bytes of codes and scales."""
    return min(_NBITS_BLOCKS, key=lambda b: (-(-k // b) * (b * bits // 8 + 2), -b))


def _nbits_tensors(cw: CompressedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int, int]:
    """MatMulNBits' view of a Linear's codes: unsigned codes ``(rows, K)``, fp32 scales ``(rows, blocks)``, integer
    zero points (None if symmetric), bits and block size.

    Block-wise codes are taken as they are. Per-channel and per-tensor codes
    keep their values, widened to the next width the kernel unpacks, and
    their scale (and zero point) is repeated over every block of the row.
    """
    if cw.group_size is not None:
        codes, scales, zero_points = _block_tensors(cw)
        return codes, scales, zero_points, cw.bits, cw.group_size
    bits = next(b for b in _NBITS if b >= cw.bits)
    rows, k = cw.shape[0], cw.row_size
    block = _nbits_block(k, bits)
    blocks = -(-k // block)

    def over_blocks(a: np.ndarray) -> np.ndarray:  # one value per row (or per tensor) -> (rows, blocks)
        return np.broadcast_to(a.reshape(-1, 1), (rows, blocks)).copy()

    scales = over_blocks(cw.scale.to(torch.float32).numpy())  # fp16 -> fp32 is exact
    codes = _full_codes(cw).reshape(rows, k)
    if cw.scheme == "symmetric":
        return codes + 2 ** (bits - 1), scales, None, bits, block
    zero_points = over_blocks(cw.zero_point.to(torch.float32).round().to(torch.int64).numpy())
    return codes, scales, zero_points, bits, block


def _block_tensors(cw: CompressedWeight) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Unsigned codes ``(rows, K)``, fp32 scales ``(rows, blocks)`` and integer zero points (None if symmetric)."""
    rows, k = cw.shape[0], cw.row_size
    blocks = -(-k // cw.group_size)
    codes = _full_codes(cw).reshape(rows, k)
    scales = cw.scale.to(torch.float32).numpy().reshape(rows, blocks)  # fp16 -> fp32 is exact
    if cw.scheme == "symmetric":
        return codes + 2 ** (cw.bits - 1), scales, None  # the kernels' default zero point
    zero_points = cw.zero_point.to(torch.float32).round().to(torch.int64).numpy().reshape(rows, blocks)
    return codes, scales, zero_points


# -- graph rewriting -----------------------------------------------------------------------------


def _digest(a: np.ndarray) -> tuple:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.shape, hashlib.sha1(a.tobytes()).hexdigest()


class _Rewriter:
    """Replaces weight initializers of an exported graph by their stored representation."""

    def __init__(self, model: Any, accuracy_level: int) -> None:
        import onnx

        self.onnx = onnx
        self.model = model
        self.graph = model.graph
        self.accuracy_level = accuracy_level
        self.inits = {t.name: t for t in self.graph.initializer}
        self.new_inits: list[Any] = []
        self.pending: list[Any] = []  # nodes the next rewritten node needs first (scale casts)
        self.uses_ms = False
        self._cache: dict[tuple, Any] = {}
        self._names: set[str] = {t.name for t in self.graph.initializer} | {
            o for n in self.graph.node for o in (*n.input, *n.output)
        }

    def name(self, base: str) -> str:
        base = base.replace("/", "_").replace(":", "_")
        candidate, i = base, 0
        while candidate in self._names:
            i += 1
            candidate = f"{base}_{i}"
        self._names.add(candidate)
        return candidate

    def init(self, array: np.ndarray, base: str, dtype: int | None = None) -> str:
        from onnx import helper, numpy_helper

        name = self.name(base)
        if dtype is None:
            tensor = numpy_helper.from_array(np.ascontiguousarray(array), name)
        else:  # bf16 has no numpy dtype here: raw bytes of its uint16 bit patterns
            tensor = helper.make_tensor(name, dtype, array.shape, np.ascontiguousarray(array).tobytes(), raw=True)
        self.new_inits.append(tensor)
        return name

    def scales(self, scales: np.ndarray, base: str) -> str:
        """Block scales (fp16 values held as fp32) as an fp32 tensor name: an fp16 initializer behind a Cast."""
        from onnx import TensorProto, helper

        half = scales.astype(np.float16)
        if scales.size < _HALF_SCALES_MIN or not np.array_equal(half.astype(np.float32), scales):
            return self.init(scales, base)
        stored = self.init(half, f"{base}_fp16")
        name = self.name(base)
        self.pending.append(
            helper.make_node("Cast", [stored], [name], name=self.name(f"{base}.cast"), to=TensorProto.FLOAT)
        )
        return name

    def take_pending(self) -> list[Any]:
        nodes, self.pending = self.pending, []
        return nodes

    def array(self, name: str) -> np.ndarray:
        return self.onnx.numpy_helper.to_array(self.inits[name])

    # Each returns the nodes replacing ``node`` (which it may edit in place).

    def matmul_nbits(self, node: Any, layer: str, cw: CompressedWeight) -> list[Any]:
        from onnx import helper

        n, k = cw.shape[0], cw.row_size
        key = ("nbits", layer)
        if key not in self._cache:
            codes, scales, zero_points, bits, block = _nbits_tensors(cw)
            per = 8 // bits
            blocks = scales.shape[1]
            # The short last block is padded with its zero point: those elements decode to 0 (K bounds them anyway).
            pad_fill = zero_points[:, -1] if zero_points is not None else 2 ** (bits - 1)
            codes = _pad_last(codes, block, pad_fill).reshape(n, blocks, block)
            b = self.init(_pack(codes, bits), f"{layer}.qweight")
            s = self.scales(scales.reshape(-1), f"{layer}.scales")
            zp = ""
            if zero_points is not None:
                zp = self.init(_pack(_pad_last(zero_points, per, 0), bits).reshape(-1), f"{layer}.zero_points")
            divisor = None
            if cw.input_scale is not None:
                divisor = self.init(cw.input_scale.to(torch.float32).numpy(), f"{layer}.input_scale")
            self._cache[key] = (b, s, zp, divisor, bits, block)
        b, s, zp, divisor, bits, block = self._cache[key]
        nodes = self.take_pending()
        x = node.input[0]
        if divisor is not None:
            # AWQ: W = decoded / input_scale per input column, i.e. decoded applied to x / input_scale.
            scaled = self.name(f"{layer}.scaled_input")
            nodes.append(helper.make_node("Div", [x, divisor], [scaled], name=self.name(f"{layer}.awq_div")))
            x = scaled
        bias, add = "", None
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            c = node.input[2]
            if c in self.inits and tuple(self.inits[c].dims) == (n,):
                bias = c
            else:  # a broadcast or computed C: add it after, as Gemm would
                add = c
        out = node.output[0]
        mm_out = self.name(f"{layer}.matmul") if add else out
        attrs = {"K": k, "N": n, "bits": bits, "block_size": block}
        if self.accuracy_level:  # 0 is the default; left out as onnxruntime's own quantizer does
            attrs["accuracy_level"] = self.accuracy_level
        inputs = [x, b, s, zp, "", bias]
        while inputs[-1] == "":
            inputs.pop()
        nodes.append(
            helper.make_node(
                "MatMulNBits", inputs, [mm_out], domain=_MS_DOMAIN, name=self.name(f"{layer}.MatMulNBits"), **attrs
            )
        )
        if add:
            nodes.append(helper.make_node("Add", [mm_out, add], [out], name=self.name(f"{layer}.bias")))
        self.uses_ms = True
        return nodes

    def gather_block_quantized(self, node: Any, layer: str, cw: CompressedWeight) -> list[Any]:
        from onnx import helper

        key = ("gather", layer)
        if key not in self._cache:
            codes, scales, zero_points = _block_tensors(cw)
            data = self.init(_pack(codes, cw.bits), f"{layer}.qweight")
            s = self.scales(scales, f"{layer}.scales")
            zp = None
            if zero_points is not None:
                zp = self.init(_pack(_pad_last(zero_points, 8 // cw.bits, 0), cw.bits), f"{layer}.zero_points")
            self._cache[key] = (data, s, zp)
        data, s, zp = self._cache[key]
        inputs = [data, node.input[1], s] + ([zp] if zp else [])
        self.uses_ms = True
        return [
            *self.take_pending(),
            helper.make_node(
                "GatherBlockQuantized",
                inputs,
                list(node.output),
                domain=_MS_DOMAIN,
                name=self.name(f"{layer}.GatherBlockQuantized"),
                gather_axis=0,
                quantize_axis=1,
                block_size=cw.group_size,
                bits=cw.bits,
            ),
        ]

    def int8_dequantize(self, node: Any, layer: str, cw: CompressedWeight, index: int, transposed: bool) -> list[Any]:
        from onnx import helper

        key = ("dq", layer, transposed)
        if key not in self._cache:
            codes = _full_codes(cw).reshape(cw.shape)
            per_axis = cw.groups > 1
            scale = cw.scale.to(torch.float32).numpy()
            if cw.scheme == "affine":
                q = codes.astype(np.uint8)
                zp = cw.zero_point.to(torch.float32).round().numpy().astype(np.uint8)
            else:
                q, zp = codes.astype(np.int8), None
            if transposed:  # a MatMul's initializer is the weight transposed: the channel axis is 1
                q = q.reshape(cw.shape[0], -1).T
            attrs = {"axis": 1 if transposed else 0} if per_axis else {}
            if not per_axis:
                scale = scale.reshape(())
                zp = None if zp is None else zp.reshape(())
            inputs = [self.init(q, f"{layer}.qweight"), self.init(scale, f"{layer}.scale")]
            if zp is not None:
                inputs.append(self.init(zp, f"{layer}.zero_point"))
            out = self.name(f"{layer}.weight_dequantized")
            dq = helper.make_node("DequantizeLinear", inputs, [out], name=self.name(f"{layer}.dequantize"), **attrs)
            self._cache[key] = (out, dq)
            node.input[index] = out
            return [dq, node]
        node.input[index] = self._cache[key][0]
        return [node]

    def int8_dynamic(self, node: Any, layer: str, cw: CompressedWeight) -> list[Any]:
        """A Linear with symmetric per-channel int8 codes run on integer kernels, activations quantized on the fly.

        ``DynamicQuantizeLinear`` -> ``MatMulInteger`` (uint8 x int8 -> int32) -> ``Cast`` -> ``Mul`` by
        (activation scale x channel scales): onnxruntime's dynamic int8 graph, built on the stored codes.
        """
        from onnx import TensorProto, helper

        key = ("dyn", layer)
        if key not in self._cache:
            codes = _full_codes(cw).reshape(cw.shape[0], -1).T.astype(np.int8)  # (K, N): MatMulInteger's B
            self._cache[key] = (
                self.init(np.ascontiguousarray(codes), f"{layer}.qweight"),
                self.init(cw.scale.to(torch.float32).numpy(), f"{layer}.channel_scale"),
            )
        weight, channel_scale = self._cache[key]
        x, out = node.input[0], node.output[0]
        q, s, zp = self.name(f"{layer}.x_q"), self.name(f"{layer}.x_scale"), self.name(f"{layer}.x_zero_point")
        acc, acc_f = self.name(f"{layer}.acc_int32"), self.name(f"{layer}.acc")
        scale = self.name(f"{layer}.out_scale")
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        scaled = self.name(f"{layer}.scaled") if bias else out
        nodes = [
            helper.make_node("DynamicQuantizeLinear", [x], [q, s, zp], name=self.name(f"{layer}.quantize_input")),
            helper.make_node("MatMulInteger", [q, weight, zp], [acc], name=self.name(f"{layer}.MatMulInteger")),
            helper.make_node("Cast", [acc], [acc_f], name=self.name(f"{layer}.cast"), to=TensorProto.FLOAT),
            helper.make_node("Mul", [s, channel_scale], [scale], name=self.name(f"{layer}.scales")),
            helper.make_node("Mul", [acc_f, scale], [scaled], name=self.name(f"{layer}.rescale")),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [scaled, bias], [out], name=self.name(f"{layer}.bias")))
        return nodes

    def half(self, node: Any, layer: str, cw: CompressedWeight, index: int, transposed: bool) -> list[Any]:
        from onnx import TensorProto, helper

        key = ("half", layer, transposed)
        if key not in self._cache:
            full = torch.zeros(cw.numel, dtype=cw.values.dtype)
            full[cw.positions()] = cw.values
            full = full.reshape(cw.shape)
            if transposed:
                full = full.reshape(cw.shape[0], -1).T.contiguous()
            if full.dtype == torch.bfloat16:
                src = self.init(full.view(torch.int16).numpy(), f"{layer}.weight_bf16", TensorProto.BFLOAT16)
            else:
                src = self.init(full.numpy(), f"{layer}.weight_fp16")
            out = self.name(f"{layer}.weight_fp32")
            cast = helper.make_node("Cast", [src], [out], name=self.name(f"{layer}.cast"), to=TensorProto.FLOAT)
            self._cache[key] = (out, cast)
            node.input[index] = out
            return [cast, node]
        node.input[index] = self._cache[key][0]
        return [node]


def _weight_slot(node: Any) -> tuple[int, bool] | None:
    """(input index of the weight, whether the initializer must be the transposed weight) of a rewritable node."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "MatMul":
        return 1, True
    if node.op_type == "Gemm":
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        if alpha != 1.0 or beta != 1.0 or ("transA" in attrs and attrs["transA"].i):
            return None
        return 1, not ("transB" in attrs and attrs["transB"].i)
    if node.op_type in ("Conv",):
        return 1, False
    if node.op_type == "Gather":
        if "axis" in attrs and attrs["axis"].i != 0:
            return None
        return 0, False
    return None


def _dynamic_int8(node: Any, cw: CompressedWeight) -> bool:
    """Whether ``cw`` on ``node`` runs as onnxruntime's dynamic int8 MatMul: a Linear (MatMul / plain Gemm)
    with symmetric per-output-channel codes (int8 x int8 products need no zero point on the weight side)."""
    return (
        node.op_type in ("MatMul", "Gemm")
        and cw.scheme == "symmetric"
        and cw.group_size is None
        and cw.groups == cw.shape[0]
        and len(cw.shape) == 2
    )


_ALLOWED_OPS = {
    "matmul_nbits": ("MatMul", "Gemm"),
    "gather_block_quantized": ("Gather",),
    "int8_dequantize": ("Conv",),
    "half": ("MatMul", "Gemm", "Conv", "Gather"),
}


#: onnxruntime's MatMulNBits ``accuracy_level`` values (0: fp32 compute, 4: int8 activations).
ACCURACY_LEVELS: tuple[int, ...] = (0, 1, 2, 3, 4)


def check_accuracy_level(accuracy_level: object) -> None:
    """Refuse an ``accuracy_level`` onnxruntime does not define, in one line.

    Raises:
        ConfigError: not one of :data:`ACCURACY_LEVELS`.
    """
    if isinstance(accuracy_level, bool) or accuracy_level not in ACCURACY_LEVELS:
        raise ConfigError("accuracy_level", accuracy_level, f"one of {', '.join(map(str, ACCURACY_LEVELS))}")


def export_deploy(
    compressed: CompressedModel, example_input: torch.Tensor, path: str | Path, *, accuracy_level: int = 0
) -> Path:
    """Write the deploy artifact of ``compressed``: one ONNX file whose weights are stored as compressed.

    Exports ``compressed.model`` with :func:`compression.export_onnx`, finds
    each entry of ``compressed.weights`` in the graph by the exact values of
    its dense weight (either orientation: a MatMul holds the transposed
    weight), and rewrites it as :func:`deploy_kind` says; unused
    initializers are dropped and the model is checked with ``onnx.checker``.
    Structured pruning and low-rank factors already have their smaller shapes
    in the fp32 export.

    Args:
        compressed: What :func:`compression.compress` returned.
        example_input: One input batch (traced; the batch axis stays dynamic).
        path: Output ``.onnx`` file (single file, no external data).
        accuracy_level: MatMulNBits' ``accuracy_level``: 0 computes in fp32 on
            the decoded weights, 4 lets onnxruntime quantize activations to
            int8 per block (faster, not bit-faithful); 1..3 as onnxruntime defines.
            At 4, Linear layers with symmetric per-channel int8 codes also run
            on integer kernels (``DynamicQuantizeLinear`` + ``MatMulInteger``,
            activations quantized per tensor on the fly) instead of a
            dequantized fp32 weight: onnxruntime's fastest CPU path for them.

    Returns:
        ``path``.

    Raises:
        ConfigError: ``compressed`` is not a CompressedModel or ``accuracy_level`` is not 0..4.
    """
    import onnx

    if not isinstance(compressed, CompressedModel):
        raise ConfigError("compressed", type(compressed).__name__, "a CompressedModel returned by compress()")
    check_accuracy_level(accuracy_level)
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(compressed.model, example_input, Path(tmp) / "fp32.onnx")
        model = onnx.load(str(fp32))

    modules = dict(compressed.model.named_modules())
    # Dense-weight digest -> (layer, weight, kind, transposed) for every weight stored compressed.
    index: dict[tuple, list[tuple[str, CompressedWeight, str, bool]]] = {}
    for layer, cw in compressed.weights.items():
        kind = deploy_kind(cw, modules.get(layer))
        if kind == "dense":
            continue
        dense = cw.dense().numpy()
        index.setdefault(_digest(dense), []).append((layer, cw, kind, False))
        if dense.ndim == 2:
            index.setdefault(_digest(dense.T), []).append((layer, cw, kind, True))

    rw = _Rewriter(model, accuracy_level)
    digests: dict[str, tuple] = {}
    nodes = []
    found: set[str] = set()
    for node in model.graph.node:
        slot = _weight_slot(node)
        weight = node.input[slot[0]] if slot and len(node.input) > slot[0] else None
        if weight not in rw.inits:
            nodes.append(node)
            continue
        if weight not in digests:
            digests[weight] = _digest(rw.array(weight))
        index_, transposed = slot
        match = next(
            (
                m
                for m in index.get(digests[weight], ())
                if m[3] == transposed and node.op_type in _ALLOWED_OPS[m[2]]
                # Gemm / MatMul need the (N, K) weight to read as a Linear's; a square weight matches both ways.
            ),
            None,
        )
        if match is None:
            nodes.append(node)
            continue
        layer, cw, kind, _ = match
        found.add(layer)
        if kind == "matmul_nbits" and accuracy_level >= 4 and _dynamic_int8(node, cw):
            nodes.extend(rw.int8_dynamic(node, layer, cw))
        elif kind == "matmul_nbits":
            nodes.extend(rw.matmul_nbits(node, layer, cw))
        elif kind == "gather_block_quantized":
            nodes.extend(rw.gather_block_quantized(node, layer, cw))
        elif kind == "int8_dequantize":
            nodes.extend(rw.int8_dequantize(node, layer, cw, index_, transposed))
        else:
            nodes.extend(rw.half(node, layer, cw, index_, transposed))

    missing = sorted({m[0] for matches in index.values() for m in matches} - found)
    if missing:
        # E.g. a Conv the exporter fused with its BatchNorm: its initializer no longer equals the stored weight.
        warnings.warn(
            f"export_deploy: no graph weight equals the stored weight of {missing}; they stay fp32", stacklevel=2
        )
    graph = model.graph
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(rw.new_inits)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    live = {t.name for t in kept}
    graph_inputs = [i for i in graph.input if i.name not in rw.inits or i.name in live]
    del graph.input[:]
    graph.input.extend(graph_inputs)
    if rw.uses_ms and not any(op.domain == _MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(_MS_DOMAIN, 1))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def measure_deploy_latency(
    path: str | Path,
    example_input: torch.Tensor,
    *,
    threads: int = 1,
    warmup: int = 5,
    round_size: int = 10,
    min_seconds: float = LATENCY_SECONDS,
) -> float:
    """Wall milliseconds of one onnxruntime run of ``example_input``: the lowest round median over a time span.

    Protocol: one CPU session with ``intra_op_num_threads=threads``,
    ``inter_op_num_threads=1`` and sequential execution (default graph
    optimisations); ``warmup`` untimed runs; then rounds of ``round_size``
    timed runs (``time.perf_counter`` around each ``run``), back to back, for
    at least two rounds and ``min_seconds`` of rounds. Returns the lowest
    round median.

    Why the lowest over a span: the core of a shared cloud VM can run at two
    speeds that alternate every few tens to hundreds of milliseconds (1.6x
    apart on the machine of BENCHMARKS.md "latency_agreement", slow 2-66% of
    the time from one minute to the next). A median of a few milliseconds of
    runs lands in either speed, so two timings of one file differed up to
    1.75x there. The lowest round median over 0.3 s is the core's uncontended
    speed, what a dedicated core runs: a trial's figure and its export's
    re-time agreed within 15% for 8 of 9 and 11 of 13 points there, against
    1 of 11 before. A slow spell longer than the span still moves it. The
    same rule (``timeit``'s "take the minimum") also discounts a neighbour's
    bursts on the other core.

    Args:
        path: ONNX file (input named ``input``), e.g. from :func:`export_deploy`.
        example_input: One input batch.
        threads: Intra-op threads.
        warmup: Untimed runs first.
        round_size: Timed runs per round.
        min_seconds: Least span of the timed rounds (0: two rounds).

    Raises:
        ConfigError: a count is not a positive integer or ``min_seconds`` is negative.
    """
    for field, value, lo in (("threads", threads, 1), ("warmup", warmup, 0), ("round_size", round_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(field, value, f"an integer >= {lo}")
    if isinstance(min_seconds, bool) or not isinstance(min_seconds, (int, float)) or not min_seconds >= 0:
        raise ConfigError("min_seconds", min_seconds, f"seconds >= 0, such as {LATENCY_SECONDS}")
    session = _session(path, threads)
    feed = {session.get_inputs()[0].name: example_input.detach().cpu().numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    medians: list[float] = []
    started = time.perf_counter()
    while len(medians) < 2 or time.perf_counter() - started < min_seconds:
        current = []
        for _ in range(round_size):
            start = time.perf_counter()
            session.run(None, feed)
            current.append((time.perf_counter() - start) * 1000)
        medians.append(statistics.median(current))
    return float(min(medians))
