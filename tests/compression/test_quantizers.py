"""Block-wise round-to-nearest, GPTQ and AWQ: their defining properties, storage and calibration statistics."""

from __future__ import annotations

import pytest
import safetensors
import torch
from torch import nn

from rayzor.compression import (
    AWQ,
    GPTQ,
    ActivationQuantization,
    CompressedWeight,
    CompressionPlan,
    ConfigError,
    LowRank,
    SmoothQuant,
    UniformQuantization,
    collect_layer_stats,
    compress,
    get_handler,
    load_packed,
    read_packed_info,
    save_packed,
)
from tests.compression.tiny_models import CONTRACT_FACTORY, contract_net

ARCH = {"factory": CONTRACT_FACTORY, "kwargs": {}}


def _correlated_inputs(n: int = 2048, k: int = 256, seed: int = 0) -> torch.Tensor:
    """Low-rank inputs with a few large channels: what transformer activations look like, and where GPTQ/AWQ pay."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=g) @ torch.randn(32, k, generator=g)
    x[:, :8] *= 20
    return x + 0.1 * torch.randn(n, k, generator=g)


@pytest.fixture(scope="module")
def layer_and_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(256, 64)
    x = _correlated_inputs()
    stats = collect_layer_stats(nn.Sequential(layer), ["0"], [x])["0"]
    return layer, x, stats


def _output_error(layer: nn.Linear, x: torch.Tensor, stats, cfg) -> float:
    cw = get_handler(cfg)(layer, CompressedWeight.from_dense(layer.weight), cfg, stats if cfg.calibrated else None)
    delta = cw.dense() - layer.weight.detach()
    return float(((x @ delta.T) ** 2).mean())


@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_reconstructs_the_layer_output_better_than_rounding_to_nearest(layer_and_inputs, bits):
    layer, x, stats = layer_and_inputs
    rtn = _output_error(layer, x, stats, UniformQuantization(bits, group_size=128))
    gptq = _output_error(layer, x, stats, GPTQ(bits, group_size=128))
    ordered = _output_error(layer, x, stats, GPTQ(bits, group_size=128, act_order=True))
    # Measured: 4 bits 0.69 (RTN) vs 0.005 / 0.004; 3 bits 3.7 vs 0.03 / 0.02.
    assert gptq < 0.1 * rtn and ordered < 0.1 * rtn


def test_awq_never_does_worse_than_its_own_rounding(layer_and_inputs):
    layer, x, stats = layer_and_inputs
    # alpha = 0 (s = 1) is on AWQ's grid: it is plain block-wise RTN with the same settings.
    rtn = _output_error(layer, x, stats, UniformQuantization(4, symmetric=False, group_size=128))
    awq = _output_error(layer, x, stats, AWQ(4, group_size=128))
    assert awq < rtn  # measured 0.36 vs 0.51


def test_awq_scaling_alone_preserves_the_layer(layer_and_inputs):
    """Before quantization, W diag(s) applied to x / s is the layer itself: the folding AWQ relies on."""
    layer, x, stats = layer_and_inputs
    cw = get_handler(AWQ(4))(layer, CompressedWeight.from_dense(layer.weight), AWQ(4), stats)
    s = cw.input_scale
    assert s is not None and s.dtype == torch.float16 and s.shape == (256,)
    w = layer.weight.detach()
    folded = CompressedWeight(cw.shape, None, 32, values=(w * s.float()).flatten(), input_scale=s)
    torch.testing.assert_close(folded.dense(), w, rtol=1e-5, atol=1e-6)
    scaled = nn.functional.linear(x / s.float(), w * s.float(), layer.bias)
    torch.testing.assert_close(scaled, layer(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "cfg",
    [
        UniformQuantization(4, group_size=16),
        UniformQuantization(2, symmetric=False, group_size=16),
        GPTQ(3, group_size=16, symmetric=False),
        AWQ(4, group_size=16),
    ],
    ids=["rtn4", "rtn2-asym", "gptq3-asym", "awq4"],
)
def test_block_codes_lie_on_fp16_scale_grids_of_ragged_blocks(cfg):
    layer = nn.Linear(40, 6)  # 40 inputs: blocks of 16, 16 and 8
    x = torch.randn(64, 40, generator=torch.Generator().manual_seed(1))
    stats = collect_layer_stats(nn.Sequential(layer), ["0"], [x])["0"]
    cw = get_handler(cfg)(layer, CompressedWeight.from_dense(layer.weight), cfg, stats if cfg.calibrated else None)
    assert cw.group_size == 16 and cw.groups == 6 * 3 and cw.scale.dtype == torch.float16
    if cw.zero_point is not None:
        assert cw.zero_point.dtype == torch.float16 and torch.equal(cw.zero_point, cw.zero_point.round())
        assert int(cw.codes.min()) >= 0 and int(cw.codes.max()) < 2**cfg.bits
    else:
        assert int(cw.codes.abs().max()) <= 2 ** (cfg.bits - 1) - 1
    # block index of column 35 in row 2 is 2 * 3 + 2
    assert int(cw.group_of(torch.tensor([2 * 40 + 35]))) == 8


def test_block_wise_weights_round_trip_byte_exact(tmp_path):
    net = contract_net()
    plan = CompressionPlan({"fc": (UniformQuantization(4, group_size=16),), "conv": (GPTQ(3, group_size=16),)})
    calibration = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))]
    out = compress(net, plan, calibration_data=calibration)
    first = tmp_path / "a.rzp"
    save_packed(out, first, arch=ARCH)
    model, info = load_packed(first)
    for name, cw in out.weights.items():
        back = info.weights[name]
        assert back.group_size == cw.group_size and torch.equal(back.codes, cw.codes)
        assert back.scale.dtype == cw.scale.dtype and torch.equal(back.scale, cw.scale)
        torch.testing.assert_close(back.dense(), cw.dense(), rtol=0, atol=0)
    second = tmp_path / "b.rzp"
    save_packed(type(out)(model, info.plan, info.weights, info.structure, info.activations), second, arch=ARCH)
    # Every stored byte is the same (safetensors writes its header's keys in a hash order of its own).
    a, b = safetensors.safe_open(str(first), "pt"), safetensors.safe_open(str(second), "pt")
    assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        x, y = a.get_tensor(key), b.get_tensor(key)
        assert (
            x.dtype == y.dtype
            and x.shape == y.shape
            and x.view(-1).view(torch.uint8).equal(y.view(-1).view(torch.uint8))
        )


def test_precomputed_statistics_are_reused_where_they_fit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    batches = [torch.randn(16, 32) for _ in range(2)]
    stats = collect_layer_stats(model, ["0", "2", "4"], batches)
    plan = CompressionPlan({"0": (GPTQ(4, group_size=16),), "2": (AWQ(4, group_size=32),)})
    fresh = compress(model, plan, calibration_data=batches)
    reused = compress(model, plan, calibration_data=batches, calibration_stats=stats)
    assert fresh.stats_computed == ("0", "2") and reused.stats_computed == ()
    for name in ("0", "2"):  # same statistics, same codes
        assert torch.equal(fresh.weights[name].codes, reused.weights[name].codes)
    # a factorised layer's parts have inputs of their own: computed on the model as it then is
    factorised = CompressionPlan({"2": (LowRank(rank_ratio=0.25), GPTQ(4, group_size=16))})
    out = compress(model, factorised, calibration_data=batches, calibration_stats=stats)
    assert out.stats_computed == ("2.0", "2.1")


def test_calibrated_quantizers_refuse_bad_settings_before_work():
    with pytest.raises(ConfigError, match=r"gptq.group_size: got 48.*16, 32, 64, 128, 256"):
        GPTQ(4, group_size=48)
    with pytest.raises(ConfigError, match=r"uniform_quantization.bits: got 12.*at most 8 with a group_size"):
        UniformQuantization(12, group_size=32)
    with pytest.raises(ConfigError, match=r"awq.*Conv2d.*Linear"):
        compress(contract_net(), CompressionPlan({"conv": (AWQ(4),)}), calibration_data=[torch.randn(2, 3, 8, 8)])
    with pytest.raises(ConfigError, match=r"calibration_data: got None.*calibrated quantizers of \['fc'\]"):
        compress(contract_net(), CompressionPlan({"fc": (GPTQ(4, group_size=16),)}))


def _outlier_inputs(n: int = 512, k: int = 64, seed: int = 0) -> torch.Tensor:
    """Inputs whose few channels are 50x the others: the activation outliers SmoothQuant migrates."""
    x = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    x[:, :4] *= 50
    return x


def test_smoothquant_scaling_alone_preserves_the_layer():
    torch.manual_seed(0)
    layer = nn.Linear(64, 32)
    x = _outlier_inputs()
    stats = collect_layer_stats(nn.Sequential(layer), ["0"], [x])["0"]
    cw = get_handler(SmoothQuant(8))(layer, CompressedWeight.from_dense(layer.weight), SmoothQuant(8), stats)
    s = cw.input_scale.float()
    assert float(s[:4].min()) > float(s[4:].max())  # the outlier channels are scaled down the most on the input
    w = layer.weight.detach()
    torch.testing.assert_close(nn.functional.linear(x / s, w * s, layer.bias), layer(x), rtol=1e-5, atol=1e-4)


def test_smoothquant_w8a8_beats_plain_w8a8_on_activation_outliers(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    x = _outlier_inputs()
    act = ActivationQuantization(8, symmetric=True)
    plain = compress(model, CompressionPlan({"0": (UniformQuantization(8), act)}), calibration_data=[x])
    smooth = compress(model, CompressionPlan({"0": (SmoothQuant(8, alpha=0.5), act)}), calibration_data=[x])
    with torch.inference_mode():
        ref = model(x)
        err_plain = float((plain.model(x) - ref).pow(2).mean())
        err_smooth = float((smooth.model(x) - ref).pow(2).mean())
    assert err_smooth < 0.5 * err_plain, (err_smooth, err_plain)
    # the smoothed input quantizer is part of the packed file: reloads to identical outputs
    path = tmp_path / "w8a8.rzp"
    save_packed(smooth, path, arch={"factory": "torch.nn:Sequential", "kwargs": {}})
    info = read_packed_info(path)
    assert info.activations["0"]["smooth"] == 64
