from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rayzor.compression import (
    CompressedWeight,
    CompressionPlan,
    ConfigError,
    FinetuneConfig,
    MagnitudePruning,
    UniformQuantization,
    collect_layer_stats,
    compress,
    compressible_layers,
    get_handler,
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
        model,
        CompressionPlan(layers, FinetuneConfig(epochs=2, lr=1e-2)),
        train_loader=loader,
        loss_fn=nn.functional.cross_entropy,
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


@pytest.mark.parametrize("name", [n for n in list_methods() if get_method(n).stage in ("sparsify", "quantize")])
@pytest.mark.parametrize(
    "make_layer",
    [lambda: nn.Conv2d(3, 6, 3), lambda: nn.Linear(12, 5), lambda: nn.Conv1d(2, 4, 3)],
    ids=["Conv2d", "Linear", "Conv1d"],
)
def test_handler_contract(name, make_layer):
    layer = make_layer()
    cfg = EXAMPLES[name]
    assert type(cfg) is get_method(name)
    before = layer.weight.detach().clone()
    try:
        cfg.validate("0", layer)
    except ConfigError as exc:  # a method may refuse a layer type, but only this way: before any work
        assert cfg.method in str(exc) and type(layer).__name__ in str(exc)
        return
    cw_in = CompressedWeight.from_dense(layer.weight)
    calibration = [_layer_input(layer)]
    if cfg.stage == "sparsify":
        cw = get_handler(cfg)(layer, cw_in, cfg)
    else:
        stats = collect_layer_stats(nn.Sequential(layer), ["0"], calibration)["0"] if cfg.calibrated else None
        cw = get_handler(cfg)(layer, cw_in, cfg, stats)
    assert torch.equal(layer.weight, before)  # handlers never touch the module
    assert isinstance(cw, CompressedWeight) and cw.shape == tuple(before.shape)
    dense = cw.dense()
    assert dense.shape == before.shape and dense.dtype == torch.float32
    if cw.mask is not None:
        assert torch.all(dense[~cw.mask] == 0)
    stored = cw.values if cw.scheme == "float" else cw.codes
    assert stored.numel() == cw.kept
    # and through the engine, on a model holding that layer
    out = compress(nn.Sequential(layer), CompressionPlan({"0": (cfg,)}), calibration_data=calibration)
    assert torch.equal(out.model[0].weight, out.weights["0"].dense())
    assert torch.equal(layer.weight, before)


def _layer_input(layer: nn.Module) -> torch.Tensor:
    """A batch of random inputs shaped for ``layer``."""
    g = torch.Generator().manual_seed(0)
    if isinstance(layer, nn.Linear):
        return torch.randn(16, layer.in_features, generator=g)
    if isinstance(layer, nn.Conv1d):
        return torch.randn(4, layer.in_channels, 9, generator=g)
    return torch.randn(4, layer.in_channels, 9, 9, generator=g)


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


# -- recovery fine-tune: distillation from the original model, QAT, per-epoch hook ----


@pytest.fixture
def one_thread():
    # Two intra-op threads on two shared cores thrash; one is enough for these small nets.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _shuffled(dataset, seed=0, batch_size=16):
    from torch.utils.data import DataLoader

    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _random_data(n=64, seed=3):
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"distill_alpha": 1.5}, "finetune.distill_alpha"),
        ({"distill_alpha": -0.1}, "finetune.distill_alpha"),
        ({"temperature": 0}, "finetune.temperature"),
        ({"qat": 1}, "finetune.qat"),
    ],
)
def test_finetune_distill_and_qat_fields_validated(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field}: got"):
        FinetuneConfig(**kwargs)


def test_finetune_fields_round_trip_and_old_plans_load():
    plan = CompressionPlan(
        {"fc1": (MagnitudePruning(0.5),)}, FinetuneConfig(epochs=2, distill_alpha=0.5, temperature=2.0, qat=True)
    )
    assert CompressionPlan.from_json(plan.to_json()) == plan
    old = {
        "version": 1,
        "layers": {"fc1": [{"method": "magnitude_pruning", "sparsity": 0.5}]},
        "finetune": {"epochs": 2, "lr": 0.01, "batch_size": 32, "seed": 3},
    }
    loaded = CompressionPlan.from_dict(old).finetune
    assert loaded == FinetuneConfig(epochs=2, lr=0.01, batch_size=32, seed=3)
    assert (loaded.distill_alpha, loaded.temperature, loaded.qat) == (0.0, 4.0, False)


def _kl_to(teacher, student, x):
    with torch.no_grad():
        return float(
            nn.functional.kl_div(
                student(x).log_softmax(1), teacher(x).log_softmax(1), reduction="batchmean", log_target=True
            )
        )


def test_distill_recovery_keeps_masks_and_follows_the_original_model(model, one_thread):
    from rayzor.compression import teacher_outputs

    data = _random_data()
    layers = {n: (MagnitudePruning(0.6),) for n in LAYERS}

    def run(alpha, **kw):
        plan = CompressionPlan(layers, FinetuneConfig(epochs=3, lr=1e-2, distill_alpha=alpha, temperature=2.0))
        return compress(model, plan, train_loader=_shuffled(data), loss_fn=nn.functional.cross_entropy, **kw)

    plain, kd = run(0.0), run(0.9)
    for name in LAYERS:
        mask = plain.weights[name].mask
        assert torch.equal(kd.weights[name].mask, mask)
        assert torch.all(_weight(kd.model, name)[~mask] == 0)
    # random labels pull plain fine-tuning away from the original model; the teacher term holds it close
    x = data.tensors[0]
    assert _kl_to(model, kd.model, x) < 0.5 * _kl_to(model, plain.model, x)
    # precomputed teacher outputs (dataset order) follow the loader's shuffle: same training as the live teacher
    pre = run(0.9, teacher_logits=teacher_outputs(model, data))
    flipped = run(0.9, teacher_logits=teacher_outputs(model, data).flip(0))
    for name in LAYERS:
        torch.testing.assert_close(_weight(pre.model, name), _weight(kd.model, name))
    assert not torch.allclose(_weight(flipped.model, "fc2"), _weight(kd.model, "fc2"), atol=1e-4)


def test_teacher_logits_refused_when_they_cannot_align(model, loader):
    plan = CompressionPlan({"fc1": (MagnitudePruning(0.5),)}, FinetuneConfig(epochs=1, distill_alpha=0.5))
    data = _random_data()
    with pytest.raises(ConfigError, match=r"^teacher_logits: got \(10, 10\)"):
        compress(
            model,
            plan,
            train_loader=_shuffled(data),
            loss_fn=nn.functional.cross_entropy,
            teacher_logits=torch.zeros(10, 10),
        )
    with pytest.raises(ConfigError, match="^train_loader: got 'list'"):
        compress(
            model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy, teacher_logits=torch.zeros(64, 10)
        )
    with pytest.raises(ConfigError, match="^on_epoch: got 3"):
        compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy, on_epoch=3)


def test_qat_trains_through_the_quantizer_and_keeps_masks(model, loader, one_thread):
    layers = {n: (MagnitudePruning(0.5), UniformQuantization(3)) for n in LAYERS}

    def run(qat):
        plan = CompressionPlan(layers, FinetuneConfig(epochs=2, lr=1e-2, seed=1, qat=qat))
        return compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy)

    a, b, plain = run(True), run(True), run(False)
    for name in LAYERS:
        w = _weight(a.model, name)
        assert torch.equal(w, _weight(b.model, name))  # deterministic
        assert torch.all(w[~a.weights[name].mask] == 0)
        assert torch.equal(a.weights[name].mask, plain.weights[name].mask)
    assert not torch.equal(_weight(a.model, "fc1"), _weight(plain.model, "fc1"))
    # the parameter swap runs the real modules: BN statistics still learn
    assert not torch.equal(a.model.bn1.running_mean, model.bn1.running_mean)


@pytest.mark.statistical
def test_qat_keeps_the_2_bit_grid_and_beats_post_training_quantization(digits, one_thread):
    """Measured on finetune seeds 0-2 (2 epochs): QAT 0.939-0.955 val accuracy, no QAT 0.287-0.331 (up to 0.69
    on other trainings of the baseline). On CI's machine one baseline gave QAT 0.883 against 0.448 without."""
    layers = {n: (UniformQuantization(2),) for n in LAYERS if n in dict(digits.model.named_modules())}
    acc = {}
    for qat in (True, False):
        plan = CompressionPlan(layers, FinetuneConfig(epochs=2, seed=0, qat=qat))
        out = compress(
            digits.model, plan, train_loader=_shuffled(digits.data["train"], batch_size=64), loss_fn=digits.loss_fn
        )
        acc[qat] = digits.score(out.model)["accuracy"]
        for name in layers:
            w = _weight(out.model, name)
            for channel in w.reshape(w.shape[0], -1):
                assert channel.unique().numel() <= 2**2
    # The session's digits baseline is trained anew (its weights vary with thread scheduling), and 2-bit
    # post-training quantization of it has ranged 0.28-0.69; QAT has stayed within 15 points of the fp32 accuracy
    # (one session: QAT 0.838, fp32 0.983, no QAT 0.284), so the bound is on that gap and on the margin over
    # post-training quantization, not on one machine's run.
    assert acc[True] >= digits.baseline["val"]["accuracy"] - 0.2 and acc[True] >= acc[False] + 0.15, acc


def test_on_epoch_sees_what_compress_would_return_at_each_epoch(model, loader, one_thread):
    plan = CompressionPlan(
        {n: (MagnitudePruning(0.5), UniformQuantization(3)) for n in LAYERS},
        FinetuneConfig(epochs=3, lr=1e-2, qat=True),
    )
    seen = []

    def on_epoch(epoch, m):
        seen.append((epoch, m.training, next(m.parameters()).device.type, copy.deepcopy(m.state_dict())))

    out = compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy, on_epoch=on_epoch)
    assert [(e, training, dev) for e, training, dev, _ in seen] == [
        (0, False, "cpu"),
        (1, False, "cpu"),
        (2, False, "cpu"),
    ]
    for k, v in out.model.state_dict().items():
        assert torch.equal(seen[-1][3][k], v), k
    assert not torch.equal(seen[0][3]["fc1.weight"], seen[-1][3]["fc1.weight"])
    for channel in seen[0][3]["fc1.weight"]:  # already on the 3-bit grid
        assert channel.unique().numel() <= 2**3
    # the hook observes; the result is the same without it
    quiet = compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy)
    for k, v in out.model.state_dict().items():
        assert torch.equal(quiet.model.state_dict()[k], v), k
