"""The deploy artifact: codes and scales stored as they are, in ops onnxruntime runs natively."""

from __future__ import annotations

import time

import onnx
import pytest
import torch
from torch import nn

from rayzor.compression import (
    AWQ,
    GPTQ,
    ActivationQuantization,
    CompressionPlan,
    ConfigError,
    HalfPrecision,
    KMeansQuantization,
    MagnitudePruning,
    OrtModule,
    UniformQuantization,
    compress,
    deploy_kind,
    export_deploy,
    export_onnx,
    max_abs_diff,
    measure_deploy_latency,
    quantize_onnx_int8,
    runtime_refusal,
)


def _mlp() -> nn.Sequential:
    # K = 40 is not a multiple of 16 or 32: the last block of each row is short.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 300), nn.ReLU(), nn.Linear(300, 5)).eval()


def _calibration() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(32, 40, generator=g) for _ in range(4)]


def _ops(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _check_parity(compressed, x, path, **kwargs) -> list[str]:
    path = export_deploy(compressed, x, path, **kwargs)
    onnx.checker.check_model(onnx.load(str(path)))
    with torch.inference_mode():
        ref = compressed.model(x)
        out = OrtModule(path)(x)
    assert max_abs_diff(out, ref) <= 1e-4 * (1 + float(ref.abs().max()))
    return _ops(path)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [16, 32, 128])
def test_block_wise_linear_runs_as_matmul_nbits(bits, symmetric, group_size, tmp_path):
    cfg = UniformQuantization(bits, symmetric, group_size=group_size)
    compressed = compress(_mlp(), CompressionPlan({name: (cfg,) for name in ("0", "2", "4")}))
    assert {deploy_kind(cw, compressed.model.get_submodule(n)) for n, cw in compressed.weights.items()} == {
        "matmul_nbits"
    }
    ops = _check_parity(compressed, torch.randn(7, 40), tmp_path / "m.onnx")
    assert ops.count("MatMulNBits") == 3 and "Gemm" not in ops and "MatMul" not in ops


@pytest.mark.parametrize(
    "cfg", [GPTQ(4, group_size=16), GPTQ(4, group_size=32, symmetric=False), AWQ(4, group_size=16)], ids=repr
)
def test_calibrated_methods_run_as_matmul_nbits(cfg, tmp_path):
    compressed = compress(
        _mlp(), CompressionPlan({name: (cfg,) for name in ("0", "2", "4")}), calibration_data=_calibration()
    )
    ops = _check_parity(compressed, torch.randn(7, 40), tmp_path / "m.onnx")
    assert ops.count("MatMulNBits") == 3
    if isinstance(cfg, AWQ):  # the per-input scales divide the activation
        assert ops.count("Div") == 3


def test_per_channel_gptq_runs_as_matmul_nbits(tmp_path):
    # Whole-row scales with integer zero points, repeated over MatMulNBits blocks: decoded exactly.
    cfg = GPTQ(4, group_size=None, symmetric=False)
    compressed = compress(_mlp(), CompressionPlan({"2": (cfg,), "4": (cfg,)}), calibration_data=_calibration())
    assert runtime_refusal(cfg, nn.Linear(40, 8)) is None
    assert {deploy_kind(compressed.weights[n], compressed.model.get_submodule(n)) for n in ("2", "4")} == {
        "matmul_nbits"
    }
    ops = _check_parity(compressed, torch.randn(7, 40), tmp_path / "m.onnx")
    assert ops.count("MatMulNBits") == 2 and "DequantizeLinear" not in ops


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("bits", [8, 6])
def test_whole_row_linear_codes_compute_in_fp32_at_accuracy_level_0(granularity, bits, tmp_path):
    # onnxruntime fuses DequantizeLinear + MatMul into its own MatMulNBits at accuracy_level 4 (int8 activations);
    # the artifact states its own, so a level-0 file computes with exactly the torch model's weights.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(384, 96), nn.ReLU(), nn.Linear(96, 16)).eval()
    cfg = UniformQuantization(bits, granularity=granularity)  # symmetric: asymmetric RTN zero points are fractional
    compressed = compress(model, CompressionPlan({"0": (cfg,), "2": (cfg,)}))
    x = torch.randn(2, 5, 384)  # 3-D: exported as MatMul, the pattern onnxruntime fuses
    path = export_deploy(compressed, x, tmp_path / "m.onnx")
    assert _ops(path).count("MatMulNBits") == 2
    with torch.inference_mode():
        torch.testing.assert_close(OrtModule(path)(x), compressed.model(x), atol=2e-5, rtol=0)


def test_pruned_and_activation_quantized_layers_deploy(tmp_path):
    # Pruned weights decode to exactly zero; an activation-quantized layer is found at name.layer.
    plan = CompressionPlan(
        {
            "0": (MagnitudePruning(0.5), UniformQuantization(4, group_size=16)),
            "2": (UniformQuantization(8, symmetric=False, group_size=32), ActivationQuantization(8)),
        }
    )
    compressed = compress(_mlp(), plan, calibration_data=_calibration())
    assert "2.layer" in compressed.weights
    ops = _check_parity(compressed, torch.randn(7, 40), tmp_path / "m.onnx", accuracy_level=0)
    assert ops.count("MatMulNBits") == 2


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(50, 48)
        self.fc = nn.Linear(48, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x).mean(dim=1))


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_block_wise_embedding_runs_as_gather_block_quantized(bits, symmetric, tmp_path):
    compressed = compress(
        _Embed().eval(), CompressionPlan({"emb": (UniformQuantization(bits, symmetric, group_size=32),)})
    )
    assert deploy_kind(compressed.weights["emb"], compressed.model.emb) == "gather_block_quantized"
    x = torch.randint(0, 50, (4, 6))
    ops = _check_parity(compressed, x, tmp_path / "m.onnx")
    assert "GatherBlockQuantized" in ops and "Gather" not in ops


def test_int8_conv_and_fp16_layers(digits, tmp_path):
    plan = CompressionPlan(
        {
            "conv1": (UniformQuantization(8),),
            "conv2": (UniformQuantization(6),),
            "fc1": (HalfPrecision(),),
            "fc2": (HalfPrecision("bf16"),),
        }
    )
    compressed = compress(digits.model, plan)
    kinds = {n: deploy_kind(cw, compressed.model.get_submodule(n)) for n, cw in compressed.weights.items()}
    assert kinds == {"conv1": "int8_dequantize", "conv2": "int8_dequantize", "fc1": "half", "fc2": "half"}
    x = digits.data["val"].tensors[0][:16]
    ops = _check_parity(compressed, x, tmp_path / "m.onnx")
    assert ops.count("DequantizeLinear") == 2 and ops.count("Cast") == 2
    model = onnx.load(str(tmp_path / "m.onnx"))
    dtypes = {t.data_type for t in model.graph.initializer}
    assert {onnx.TensorProto.INT8, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16} <= dtypes


def test_digits_artifact_is_smaller_than_fp32(digits, tmp_path):
    block4 = UniformQuantization(4, group_size=32)
    plan = CompressionPlan(
        {"conv1": (UniformQuantization(8),), "conv2": (UniformQuantization(8),), "fc1": (block4,), "fc2": (block4,)}
    )
    compressed = compress(digits.model, plan)
    fp32 = export_onnx(compressed.model, digits.example_input, tmp_path / "fp32.onnx")
    deploy = export_deploy(compressed, digits.example_input, tmp_path / "deploy.onnx", accuracy_level=4)
    ops = _ops(deploy)
    assert ops.count("MatMulNBits") == 2 and ops.count("DequantizeLinear") == 2
    # 4-bit fc weights (~90% of the parameters) plus int8 convs: well under a third of the fp32 file.
    assert deploy.stat().st_size < 0.3 * fp32.stat().st_size
    assert not list(tmp_path.glob("*.data"))  # one file, no external data
    assert abs(digits.score(OrtModule(deploy))["accuracy"] - digits.score(compressed.model)["accuracy"]) <= 0.02
    assert measure_deploy_latency(deploy, digits.example_input, round_size=3, min_seconds=0) > 0


def test_deploy_latency_times_rounds_over_its_span_and_refuses_a_bad_span(digits, tmp_path):
    path = export_onnx(digits.model, digits.example_input, tmp_path / "fp32.onnx")
    started = time.perf_counter()
    ms = measure_deploy_latency(path, digits.example_input, warmup=0, min_seconds=0.2)
    # rounds run back to back until the span is reached, whatever the machine's speed
    assert time.perf_counter() - started >= 0.2
    assert 0 < ms < 200
    for bad in (-0.1, "0.3", True, float("nan")):
        with pytest.raises(ConfigError, match=r"^min_seconds: got .*; valid: seconds >= 0"):
            measure_deploy_latency(path, digits.example_input, min_seconds=bad)


def test_dense_kinds_keep_fp32(tmp_path):
    plan = CompressionPlan({"0": (KMeansQuantization(4),), "2": (UniformQuantization(3, group_size=16),)})
    compressed = compress(_mlp(), plan)
    assert deploy_kind(compressed.weights["0"], compressed.model[0]) == "dense"
    assert deploy_kind(compressed.weights["2"], compressed.model[2]) == "dense"
    ops = _check_parity(compressed, torch.randn(5, 40), tmp_path / "m.onnx")
    assert "MatMulNBits" not in ops and "DequantizeLinear" not in ops


def test_runtime_refusal_names_dense_settings():
    linear, emb = nn.Linear(40, 8), nn.Embedding(10, 33)
    assert runtime_refusal(UniformQuantization(4, group_size=16), linear) is None
    assert runtime_refusal(AWQ(4, group_size=16), linear) is None
    assert runtime_refusal(MagnitudePruning(0.5), linear) is None  # not a storage format
    assert "kmeans_quantization" in runtime_refusal(KMeansQuantization(4), linear)
    assert runtime_refusal(UniformQuantization(5, group_size=16), linear) is not None
    # An odd row cannot be packed two codes a byte by GatherBlockQuantized.
    assert runtime_refusal(UniformQuantization(4, group_size=16), emb) is not None
    assert runtime_refusal(UniformQuantization(8, group_size=16), emb) is None


def test_bad_arguments_raise_config_error(tmp_path):
    compressed = compress(_mlp(), CompressionPlan({"0": (UniformQuantization(4, group_size=16),)}))
    with pytest.raises(ConfigError):
        export_deploy(compressed, torch.randn(2, 40), tmp_path / "m.onnx", accuracy_level=7)
    with pytest.raises(ConfigError):
        export_deploy(compressed.model, torch.randn(2, 40), tmp_path / "m.onnx")


def test_a_weight_missing_from_the_graph_is_reported(tmp_path):
    class Folded(nn.Module):  # the exported weight is 2 * W: no initializer equals the stored one
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(x, self.fc.weight * 2)

    compressed = compress(Folded().eval(), CompressionPlan({"fc": (UniformQuantization(4, group_size=16),)}))
    with pytest.warns(UserWarning, match="fc"):
        export_deploy(compressed, torch.randn(2, 32), tmp_path / "m.onnx")


def test_per_channel_int8_linear_runs_on_integer_kernels_at_accuracy_level_4(tmp_path):
    model = _mlp()
    x = torch.cat(_calibration())
    out = compress(model, CompressionPlan({n: (UniformQuantization(8),) for n in ("0", "2", "4")}))
    # fp32 compute: the codes behind DequantizeLinear, exact
    assert "MatMulInteger" not in _check_parity(out, x, tmp_path / "a0.onnx")
    # int8 activations: onnxruntime's dynamic int8 graph on the stored codes (no second rounding of the weights)
    path = export_deploy(out, x, tmp_path / "a4.onnx", accuracy_level=4)
    ops = _ops(path)
    assert ops.count("MatMulInteger") == 3 and ops.count("DynamicQuantizeLinear") == 3
    weights = {t.name: t for t in onnx.load(str(path)).graph.initializer}
    codes = onnx.numpy_helper.to_array(next(t for name, t in weights.items() if name.startswith("0.qweight")))
    torch.testing.assert_close(torch.from_numpy(codes.T.astype("int32")), out.weights["0"].codes.reshape(8, 40))
    # per-tensor uint8 activations: not bit-exact, but as close as onnxruntime's own dynamic int8 of the same model
    peer = quantize_onnx_int8(export_onnx(out.model, x, tmp_path / "fp32.onnx"), tmp_path / "ort.onnx")
    with torch.inference_mode():
        ref, got, theirs = out.model(x), OrtModule(path)(x), OrtModule(peer)(x)

    def error(y: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(y - ref) / torch.linalg.vector_norm(ref))

    assert error(got) <= 1.25 * error(theirs) and error(got) < 0.15, (error(got), error(theirs))


class _Wide(nn.Module):
    """An embedding and a Linear with enough blocks that their scales are stored at fp16."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(300, 64)
        self.fc = nn.Linear(64, 96)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x).mean(dim=1))


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_block_scales_are_stored_at_fp16_and_decode_exactly(accuracy_level, tmp_path):
    cfg = UniformQuantization(4, symmetric=False, group_size=16)
    compressed = compress(_Wide().eval(), CompressionPlan({"emb": (cfg,), "fc": (cfg,)}))
    x = torch.randint(0, 300, (4, 6))
    path = export_deploy(compressed, x, tmp_path / "m.onnx", accuracy_level=accuracy_level)
    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    for op, layer in (("GatherBlockQuantized", "emb"), ("MatMulNBits", "fc")):
        node = next(n for n in graph.node if n.op_type == op)
        cast = producer[node.input[2]]  # the scales input: a Cast of an fp16 initializer
        assert cast.op_type == "Cast" and inits[cast.input[0]].data_type == onnx.TensorProto.FLOAT16
        stored = onnx.numpy_helper.to_array(inits[cast.input[0]]).copy()
        torch.testing.assert_close(torch.from_numpy(stored).flatten(), compressed.weights[layer].scale.flatten())
    with torch.inference_mode():
        ref, got = compressed.model(x), OrtModule(path)(x)
    # fp32 compute is exact up to summation order; int8 activations (level 4) quantize the inputs per block
    torch.testing.assert_close(got, ref, atol=1e-5 if accuracy_level == 0 else 0.05, rtol=0)
