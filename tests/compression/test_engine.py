from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import compression._registry as registry
from compression import (
    CompressedWeight,
    CompressionPlan,
    ConfigError,
    FinetuneConfig,
    MagnitudePruning,
    UniformQuantization,
    compress,
    compressible_layers,
    get_method,
    list_methods,
)
from tests.compression.test_plan import EXAMPLES

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _weight(model, name):
    return dict(model.named_modules())[name].weight.detach()


def test_compressible_layers_in_model_order(model):
    assert list(compressible_layers(model)) == LAYERS
    mixed = nn.Sequential(nn.Conv1d(2, 3, 3), nn.ConvTranspose2d(3, 3, 2), nn.Sequential(nn.Linear(3, 2)))
    assert list(compressible_layers(mixed)) == ["0", "2.0"]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.77, 0.95])
def test_exact_sparsity_per_layer(model, sparsity):
    out = compress(model, CompressionPlan({n: (MagnitudePruning(sparsity),) for n in LAYERS}))
    for name in LAYERS:
        cw, w = out.weights[name], _weight(model, name).abs().flatten()
        k = round(sparsity * w.numel())
        if k == 0:
            assert cw.mask is None
            continue
        mask = cw.mask.flatten()
        assert int((~mask).sum()) == k
        assert w[~mask].max() <= w[mask].min()  # the smallest magnitudes went
        assert int((_weight(out.model, name).flatten() == 0).sum()) >= k


def test_ties_broken_by_position():
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    out = compress(nn.Sequential(layer), CompressionPlan({"0": (MagnitudePruning(0.5),)}))
    assert out.weights["0"].mask.flatten().tolist() == [False] * 4 + [True] * 4


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8, 11, 16])
@pytest.mark.parametrize("sparsity", [0.0, 0.6])
def test_quantization_codes_and_zeros(model, bits, sparsity):
    methods = (MagnitudePruning(sparsity), UniformQuantization(bits)) if sparsity else (UniformQuantization(bits),)
    out = compress(model, CompressionPlan({n: methods for n in LAYERS}))
    qmax = 2 ** (bits - 1) - 1
    for name in LAYERS:
        cw, w = out.weights[name], _weight(out.model, name)
        assert cw.bits == bits and cw.values is None and cw.codes.dtype == torch.int32
        assert cw.codes.numel() == cw.kept and int(cw.codes.abs().max()) <= qmax
        assert cw.scale.shape == (w.shape[0],) and cw.scale.dtype == torch.float32
        assert torch.equal(w, cw.dense())
        for channel in w.reshape(w.shape[0], -1):
            assert channel.unique().numel() <= 2**bits
        if cw.mask is not None:
            assert torch.all(w[~cw.mask] == 0)
        # symmetric: the largest kept magnitude of each channel maps to +-qmax
        if sparsity == 0:
            orig = _weight(model, name).reshape(w.shape[0], -1).abs().max(1).values
            torch.testing.assert_close(cw.scale * qmax, orig)


def test_all_zero_channel_is_safe():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0] = 0
    out = compress(nn.Sequential(layer), CompressionPlan({"0": (UniformQuantization(4),)}))
    cw = out.weights["0"]
    assert torch.isfinite(cw.scale).all() and torch.all(cw.dense()[0] == 0)


def test_original_model_untouched(model, loader):
    before = copy.deepcopy(model)
    plan = CompressionPlan(
        {n: (MagnitudePruning(0.5), UniformQuantization(3)) for n in LAYERS}, FinetuneConfig(epochs=1, lr=1e-2)
    )
    out = compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy)
    assert out.model is not model and not model.training
    for (k, a), (_, b) in zip(model.state_dict().items(), before.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert not out.model.training


def test_finetune_changes_kept_weights_but_keeps_masks(model, loader):
    layers = {n: (MagnitudePruning(0.7),) for n in LAYERS}
    plain = compress(model, CompressionPlan(layers))
    tuned = compress(
        model, CompressionPlan(layers, FinetuneConfig(epochs=2, lr=1e-2)),
        train_loader=loader, loss_fn=nn.functional.cross_entropy,
    )
    for name in LAYERS:
        mask = plain.weights[name].mask
        assert torch.equal(tuned.weights[name].mask, mask)
        w = _weight(tuned.model, name)
        assert torch.all(w[~mask] == 0)
        assert not torch.equal(w[mask], _weight(plain.model, name)[mask])
    # BN statistics were updated by training-mode forwards
    assert not torch.equal(tuned.model.bn1.running_mean, model.bn1.running_mean)


def test_finetune_then_quantize_keeps_zeros_and_is_deterministic(model, loader):
    plan = CompressionPlan(
        {n: (MagnitudePruning(0.8), UniformQuantization(4)) for n in LAYERS}, FinetuneConfig(epochs=1, seed=7)
    )
    a = compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy)
    b = compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy)
    for name in LAYERS:
        w = _weight(a.model, name)
        assert torch.all(w[~a.weights[name].mask] == 0)
        assert torch.equal(w, _weight(b.model, name))


def test_layers_outside_plan_untouched(model):
    out = compress(model, CompressionPlan({"fc1": (UniformQuantization(2),), "fc2": ()}))
    assert set(out.weights) == {"fc1"}
    for name in ["conv1", "conv2", "fc2"]:
        assert torch.equal(_weight(out.model, name), _weight(model, name))


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).stage != "factorize"])
@pytest.mark.parametrize("make_layer", [lambda: nn.Conv2d(3, 6, 3), lambda: nn.Linear(12, 5), lambda: nn.Conv1d(2, 4, 3)],
                         ids=["Conv2d", "Linear", "Conv1d"])
def test_handler_contract(name, make_layer):
    layer = make_layer()
    cfg = EXAMPLES[name]
    assert type(cfg) is get_method(name)
    before = layer.weight.detach().clone()
    cw_in = CompressedWeight.from_dense(layer.weight)
    cw = registry.get_handler(cfg)(layer, cw_in, cfg)
    assert torch.equal(layer.weight, before)  # handlers never touch the module
    assert isinstance(cw, CompressedWeight) and cw.shape == tuple(before.shape)
    dense = cw.dense()
    assert dense.shape == before.shape and dense.dtype == torch.float32
    if cw.mask is not None:
        assert torch.all(dense[~cw.mask] == 0)
    stored = cw.values if cw.scheme == "float" else cw.codes
    assert stored.numel() == cw.kept
    # and through the engine, on a model holding that layer
    out = compress(nn.Sequential(layer), CompressionPlan({"0": (cfg,)}))
    assert torch.equal(out.model[0].weight, out.weights["0"].dense())
    assert torch.equal(layer.weight, before)


def test_unknown_layer_rejected_before_work(model):
    with pytest.raises(ConfigError) as exc:
        compress(model, CompressionPlan({"conv9": (MagnitudePruning(0.5),)}))
    msg = str(exc.value)
    assert "plan.layers['conv9']" in msg and all(n in msg for n in LAYERS)


def test_finetune_requires_loader_and_loss(model, loader):
    plan = CompressionPlan({"fc1": (MagnitudePruning(0.5),)}, FinetuneConfig(epochs=1))
    with pytest.raises(ConfigError, match="train_loader: got None"):
        compress(model, plan)
    with pytest.raises(ConfigError, match="loss_fn: got None"):
        compress(model, plan, train_loader=loader)


def test_bad_plan_and_device(model):
    with pytest.raises(ConfigError, match="plan"):
        compress(model, {"fc1": ()})
    with pytest.raises(ConfigError, match="device.*'gpu-ish'"):
        compress(model, CompressionPlan({}), device="gpu-ish")
