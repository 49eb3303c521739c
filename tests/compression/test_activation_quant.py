"""Post-training activation quantization: calibration, the quantized input, QAT gradients, errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rayzor.compression import (
    ActivationQuantization,
    CompressionPlan,
    ConfigError,
    QuantizedInput,
    UniformQuantization,
    compress,
)


def _batches(n=3, shape=(32, 10), seed=0, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * scale + shift for _ in range(n)]


def _calibrate(cfg, batches, model=None):
    model = model or nn.Sequential(nn.Linear(10, 4))
    name = str(len(model) - 1)
    out = compress(model, CompressionPlan({name: (cfg,)}), calibration_data=batches)
    return out, out.model.get_submodule(name)


@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_scale_is_the_calibration_range(bits):
    batches = _batches(shift=0.3)
    allx = torch.cat(batches)
    lo, hi = float(allx.min()), float(allx.max())
    # (input, target) pairs work the same as bare inputs
    out, qi = _calibrate(ActivationQuantization(bits), [(b, torch.zeros(len(b))) for b in batches])
    assert isinstance(qi, QuantizedInput) and out.activations == {
        "0": {"method": "activation_quantization", "bits": bits, "symmetric": False}
    }
    torch.testing.assert_close(qi.scale, torch.tensor((hi - lo) / (2**bits - 1)))
    assert float(qi.zero_point) == round(-lo / float(qi.scale))
    _, sym = _calibrate(ActivationQuantization(bits, symmetric=True), batches)
    torch.testing.assert_close(sym.scale, torch.tensor(max(-lo, hi) / (2 ** (bits - 1) - 1)))
    assert float(sym.zero_point) == 0.0


def test_relu_inputs_get_zero_point_zero_and_zero_is_exact():
    model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    _, qi = _calibrate(ActivationQuantization(4), _batches(), model)
    assert float(qi.zero_point) == 0.0
    x = torch.tensor([[0.0, 1e-4, -3.0]])
    assert float(torch.round(x / qi.scale + qi.zero_point).clamp(0, 15)[0, 0]) == 0.0


@pytest.mark.parametrize(("bits", "symmetric"), [(3, False), (3, True), (8, False)])
def test_layer_sees_at_most_2_pow_bits_values(bits, symmetric):
    _, qi = _calibrate(ActivationQuantization(bits, symmetric=symmetric), _batches())
    seen = []
    qi.layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))  # test-side probe only
    x = torch.randn(500, 10, generator=torch.Generator().manual_seed(9)) * 1.5  # also outside the range
    with torch.no_grad():
        y = qi(x)
    levels = seen[0].unique()
    assert 2 < levels.numel() <= 2**bits
    # the codes are the quantizer's grid: integer multiples of the scale, shifted by the zero point
    codes = levels / qi.scale + qi.zero_point
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-3)
    torch.testing.assert_close(y, qi.layer(seen[0]), rtol=0, atol=0)


@pytest.mark.parametrize("symmetric", [False, True])
def test_percentile_clips_outliers_at_the_percentile(symmetric):
    batches = _batches(n=4, shape=(256, 10))
    batches[0][0, 0] = 40.0  # one outlier stretches min-max
    allx = torch.cat(batches).flatten()
    _, qi = _calibrate(
        ActivationQuantization(8, symmetric=symmetric, calibration="percentile", percentile=99.0), batches
    )
    if symmetric:
        clip, bin_width = torch.quantile(allx.abs(), 0.99), 40.0 / 2048
        torch.testing.assert_close(qi.scale * 127, clip, rtol=0, atol=bin_width)
    else:
        lo, hi = torch.quantile(allx, 0.01), torch.quantile(allx, 0.99)
        bin_width = float(allx.max() - allx.min()) / 2048
        torch.testing.assert_close(qi.scale * 255, hi - lo, rtol=0, atol=2 * bin_width)
    _, minmax = _calibrate(ActivationQuantization(8, symmetric=symmetric), batches)
    assert float(qi.scale) < 0.2 * float(minmax.scale)


@pytest.mark.parametrize("symmetric", [False, True])
def test_mse_calibration_has_less_error_than_minmax_with_outliers(symmetric):
    batches = _batches(n=3, shape=(256, 10), seed=4)
    batches[1][5, :3] = torch.tensor([30.0, -25.0, 28.0])  # a few outliers: min-max wastes most levels on them
    allx = torch.cat(batches)

    def err(calibration):
        _, qi = _calibrate(ActivationQuantization(4, symmetric=symmetric, calibration=calibration), batches)
        seen = []
        qi.layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        with torch.no_grad():
            qi(allx)
        return float(((seen[0] - allx) ** 2).mean())

    assert err("mse") < 0.5 * err("minmax")


def test_training_mode_passes_gradients_straight_through():
    out, qi = _calibrate(ActivationQuantization(4), _batches())
    model = out.model.train()
    lo = float((qi.qmin - qi.zero_point) * qi.scale)
    hi = float((qi.qmax - qi.zero_point) * qi.scale)
    x = torch.tensor(
        [
            [lo * 0.5, hi * 0.5, hi * 0.9, lo * 0.1, 0.0, hi * 0.3, lo * 0.7, hi * 0.2, 0.1, -0.1],
            [hi * 2, lo * 2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        ],
        requires_grad=True,
    )
    model(x).sum().backward()
    w = qi.layer.weight.detach()
    expected = w.sum(0).expand(2, -1).clone()
    expected[1, :2] = 0.0  # outside the calibrated range the clipped estimator blocks the gradient
    torch.testing.assert_close(x.grad, expected)
    assert qi.layer.weight.grad is not None and qi.layer.weight.grad.abs().sum() > 0
    # the forward value is the quantized one in both modes
    with torch.no_grad():
        torch.testing.assert_close(model.train()(x), model.eval()(x), rtol=0, atol=1e-6)


def test_digits_8bit_activations_within_one_point(digits):
    layers = ("conv1", "conv2", "fc1", "fc2")
    calibration = list(itertools.islice(iter(digits.loader("train")), 4))
    plan = CompressionPlan({n: (UniformQuantization(8), ActivationQuantization(8)) for n in layers})
    out = compress(digits.model, plan, calibration_data=calibration)
    assert set(out.activations) == set(layers)
    fp32 = digits.score(digits.model, "val")["accuracy"]
    assert digits.score(out.model, "val")["accuracy"] >= fp32 - 0.01
    # and low-bit activations do cost accuracy: the quantizer is really in the path
    low = compress(
        digits.model, CompressionPlan({n: (ActivationQuantization(1),) for n in layers}), calibration_data=calibration
    )
    assert digits.score(low.model, "val")["accuracy"] < fp32 - 0.05


def test_no_calibration_data_refused_before_any_work():
    calls = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            calls.append(x)
            return self.fc(x)

    plan = CompressionPlan({"fc": (UniformQuantization(4), ActivationQuantization())})
    with pytest.raises(ConfigError, match="calibration_data: got None; valid: .*quantizes activations"):
        compress(Spy(), plan)
    assert calls == []
    with pytest.raises(ConfigError, match="calibration_data: got 'no batches'"):
        compress(Spy(), plan, calibration_data=[])
    with pytest.raises(ConfigError, match="calibration_data: got 'str'"):
        compress(Spy(), plan, calibration_data=[("text", 1)])
    assert calls == []
    # a one-shot generator is read once, up front
    out = compress(Spy(), plan, calibration_data=(torch.ones(2, 4) * i for i in range(3)))
    assert len(calls) == 3 and float(out.model.fc.scale) == pytest.approx(2 / 255)


def test_layer_without_activations_refused():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match=r"plan.layers\['0'\].activation_quantization.*token indices"):
        compress(
            model, CompressionPlan({"0": (ActivationQuantization(),)}), calibration_data=[torch.zeros(2, 3).long()]
        )


def test_unreached_layer_is_named():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(4, 2), nn.Linear(4, 2)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(ConfigError, match="no input reached layer 'unused'"):
        compress(
            Branchy(), CompressionPlan({"unused": (ActivationQuantization(),)}), calibration_data=[torch.ones(2, 4)]
        )


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"bits": 0}, "bits", "1..16"),
        ({"bits": 1, "symmetric": True}, "bits", "symmetric=False"),
        ({"bits": 17}, "bits", "1..16"),
        ({"calibration": "kl"}, "calibration", "'mse'"),
        ({"percentile": 50}, "percentile", "(50.0, 100.0]"),
        ({"symmetric": "yes"}, "symmetric", "true or false"),
    ],
)
def test_bad_arguments(kwargs, field, text):
    with pytest.raises(ConfigError) as exc:
        ActivationQuantization(**kwargs)
    assert exc.value.field == f"activation_quantization.{field}" and text in str(exc.value)


def test_flat_settings_keep_weight_and_activation_bits_apart():
    plan = CompressionPlan({"fc": (UniformQuantization(4), ActivationQuantization(8, calibration="mse"))})
    flat = plan.settings()["fc"]
    assert flat["bits"] == 4 and flat["act_bits"] == 8 and flat["act_quant"] == "activation_quantization"
    assert CompressionPlan.from_settings(plan.settings()) == plan
