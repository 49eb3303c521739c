"""ONNX export, and real int8 execution through onnxruntime.

rayzor's quantized layers are stored as low-bit codes but run fp32 kernels in
torch (the weights are materialised). :func:`quantize_onnx_int8` gives the
path where a compressed model really runs integer kernels on CPU: onnxruntime's
dynamic quantization turns MatMul/Gemm/Conv weights into int8 and runs
``MatMulInteger``/``ConvInteger`` with activations quantized on the fly
(https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html),
so latency gains are measured, not assumed. Given calibration batches it
quantizes statically instead: activation ranges are calibrated once
(min/max of the calibration inputs, like rayzor's activation stage) and the
graph runs ``QLinearConv`` / ``QLinearMatMul``-style int8 kernels with no
per-call range computation.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rayzor.compression._actquant import calibration_inputs

__all__ = ["OrtModule", "export_onnx", "max_abs_diff", "measure_onnx_latency", "quantize_onnx_int8"]


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, *, opset: int = 17) -> Path:
    """Export ``model`` with a dynamic batch axis (TorchScript-based exporter).

    Args:
        model: The model, in eval mode.
        example_input: One input batch used for tracing.
        path: Output ``.onnx`` file.
        opset: ONNX opset.
    """
    path = Path(path)
    # dynamo=False: the TorchScript exporter needs no onnxscript and traces
    # transformers' encoders as well as small CNNs.
    torch.onnx.export(
        model.eval(),
        (example_input,),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    return path


def quantize_onnx_int8(
    src: str | Path, dst: str | Path, *, per_channel: bool = True, calibration_data: Iterable[Any] | None = None
) -> Path:
    """int8 quantization of an ONNX model exported by :func:`export_onnx`.

    Without ``calibration_data``: dynamic quantization, int8 weights with
    activations quantized on the fly. With it: static quantization
    (onnxruntime's ``quantize_static``, QDQ format, which its CPU provider
    fuses into integer kernels): uint8 activations whose scales are the
    min/max calibration over those batches, int8 symmetric weights.

    Args:
        src: fp32 ONNX model (input named ``input``).
        dst: Output path.
        per_channel: One weight scale per output channel.
        calibration_data: Input batches or ``(input, target)`` batches, as
            for :func:`compression.compress`.

    Raises:
        ConfigError: ``calibration_data`` holds no tensors or no batches.
    """
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference + graph optimisation first, as onnxruntime recommends.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        # Weights stored as codes already (DequantizeLinear, MatMulNBits inputs) are not initializers of the
        # MatMul / Conv: those nodes are left alone, so no weight is quantized a second time.
        stored = _nodes_without_float_weight(prepared)
        if calibration_data is None:
            quantize_dynamic(
                str(prepared),
                str(dst),
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=stored,
            )
        else:
            quantize_static(
                str(prepared),
                str(dst),
                _calibration_reader(calibration_data),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=stored,
            )
    return Path(dst)


def _nodes_without_float_weight(path: Path) -> list[str]:
    """Names of MatMul / Gemm / Conv nodes whose weight is not an fp32 initializer (already-quantized weights)."""
    import onnx

    model = onnx.load(str(path))
    floats = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1 and node.input[1] not in floats
    ]


def _calibration_reader(calibration_data: Iterable[Any]) -> Any:
    """onnxruntime's CalibrationDataReader over the same batches :func:`compression.compress` accepts."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            inputs = calibration_inputs(calibration_data)
            self.batches = iter([{"input": x.detach().cpu().float().numpy()} for x in inputs])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader()


def _session(path: str | Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Sequential (the default, made explicit): latency protocols rely on one op running at a time.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtModule(nn.Module):
    """An onnxruntime session behind a torch-module interface, so a task's
    ``evaluate`` scores an exported model exactly as it scores a torch one."""

    def __init__(self, path: str | Path, *, threads: int = 1) -> None:
        super().__init__()
        self.session = _session(path, threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"input": x.detach().cpu().numpy()})[0])


def measure_onnx_latency(
    path: str | Path, example_input: torch.Tensor, *, threads: int = 1, warmup: int = 3, repeats: int = 20
) -> float:
    """Median wall milliseconds of one onnxruntime run of ``example_input``."""
    session = _session(path, threads)
    feed = {"input": example_input.detach().cpu().numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return float(statistics.median(times))


def max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Largest element-wise |a - b|."""
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))
