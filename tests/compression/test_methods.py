"""Contract tests over every registered method, and each method's defining property."""

from __future__ import annotations

import copy
import json
import lzma
import os

import pytest
import torch
from safetensors import safe_open
from torch import nn

from rayzor.compression import (
    AWQ,
    GPTQ,
    ActivationQuantization,
    BinaryQuantization,
    ChannelPruning,
    CompressedWeight,
    CompressionPlan,
    ConfigError,
    HalfPrecision,
    HeadPruning,
    KMeansQuantization,
    LowRank,
    MagnitudePruning,
    OrtModule,
    RandomPruning,
    SmoothQuant,
    TernaryQuantization,
    Tucker2,
    UniformQuantization,
    compress,
    export_onnx,
    get_handler,
    get_method,
    list_methods,
    load_packed,
    max_abs_diff,
    save_packed,
)
from tests.compression.tiny_models import CONTRACT_FACTORY, contract_net

ARCH = {"factory": CONTRACT_FACTORY, "kwargs": {}}

#: Configs the contract runs, covering every registered method (checked below).
VARIANTS = [
    MagnitudePruning(0.7),
    UniformQuantization(4),
    UniformQuantization(1, symmetric=False),
    UniformQuantization(3, symmetric=False, granularity="per_tensor", clipping="mse"),
    UniformQuantization(5, granularity="per_tensor", clipping="percentile", percentile=99.0),
    UniformQuantization(6, clipping="mse"),
    UniformQuantization(16, symmetric=False),
    KMeansQuantization(2),
    KMeansQuantization(5, iterations=5),
    BinaryQuantization(),
    BinaryQuantization("per_tensor"),
    TernaryQuantization(),
    TernaryQuantization(0.5, "per_tensor"),
    HalfPrecision("fp16"),
    HalfPrecision("bf16"),
    LowRank(rank_ratio=0.25),
    LowRank(energy=0.9),
    Tucker2(rank_ratio=0.5),
    Tucker2(energy=0.9),
    ActivationQuantization(),
    ActivationQuantization(4, symmetric=True, calibration="mse"),
    ActivationQuantization(6, calibration="percentile", percentile=99.0),
    RandomPruning(0.6, seed=1),
    ChannelPruning(0.5),
    ChannelPruning(0.25, "l2", round_to=4),
    ChannelPruning(0.5, "taylor"),
    HeadPruning(0.5, "taylor"),
    UniformQuantization(4, group_size=16),
    UniformQuantization(2, symmetric=False, group_size=32, clipping="mse"),
    UniformQuantization(8, group_size=16, clipping="percentile", percentile=99.0),
    GPTQ(4, group_size=16),
    GPTQ(3, group_size=None, symmetric=False, act_order=True),
    GPTQ(2, group_size=16, act_order=True),
    AWQ(4, group_size=16),
    AWQ(8, group_size=None, symmetric=True, grid=5, clip_search=False),
    SmoothQuant(),
    SmoothQuant(4, alpha=0.8),
]
#: Composite plans: one layer factorised, pruned and quantized.
COMBOS = [
    (MagnitudePruning(0.5), UniformQuantization(3)),
    (MagnitudePruning(0.6), KMeansQuantization(3)),
    (MagnitudePruning(0.5), BinaryQuantization()),
    (MagnitudePruning(0.9), HalfPrecision("bf16")),
    (LowRank(rank_ratio=0.25), UniformQuantization(4, symmetric=False)),
    (LowRank(rank_ratio=0.5), MagnitudePruning(0.5), TernaryQuantization()),
    (UniformQuantization(4), ActivationQuantization(8)),
    (Tucker2(rank_ratio=0.5), MagnitudePruning(0.5), UniformQuantization(4), ActivationQuantization(8, symmetric=True)),
    (ChannelPruning(0.5), MagnitudePruning(0.5), UniformQuantization(4)),
    (ChannelPruning(0.25), LowRank(rank_ratio=0.25), KMeansQuantization(3)),
    (MagnitudePruning(0.5), GPTQ(4, group_size=16)),
    (ChannelPruning(0.5), LowRank(rank_ratio=0.5), GPTQ(4, group_size=16)),
    (MagnitudePruning(0.5), AWQ(4, group_size=32)),
    (SmoothQuant(8, alpha=0.5), ActivationQuantization(8, symmetric=True)),
    (AWQ(4, group_size=16), ActivationQuantization(8)),
]
LAYERS = {"Conv2d": "conv", "Linear": "fc"}


def _id(methods):
    return "+".join(
        f"{m.method}({','.join(str(v) for v in m.to_dict().values() if v is not None and v != m.method)})"
        for m in methods
    )


def test_variants_cover_every_method():
    assert {v.method for v in VARIANTS} == set(list_methods())


@pytest.fixture(scope="module")
def net():
    return contract_net()


@pytest.fixture(scope="module")
def x():
    return torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(3))


def _onnx_max_diff(model, x, path):
    export_onnx(model, x[:1], path)
    with torch.inference_mode():
        return max_abs_diff(OrtModule(path)(x), model(x))


@pytest.mark.parametrize("layer", list(LAYERS), ids=list(LAYERS))
@pytest.mark.parametrize("methods", [(v,) for v in VARIANTS] + COMBOS, ids=_id)
def test_contract(net, x, tmp_path, layer, methods):
    reference = copy.deepcopy(net)
    plan = CompressionPlan({LAYERS[layer]: methods})
    # plan JSON round trip
    assert CompressionPlan.from_json(plan.to_json()) == plan
    if layer == "Linear" and any(isinstance(m, Tucker2) for m in methods):
        with pytest.raises(ConfigError, match="tucker2.*Conv1d or Conv2d"):  # a kernel method, refused up front
            compress(net, plan)
        return
    if layer == "Conv2d" and any(isinstance(m, (AWQ, SmoothQuant)) for m in methods):
        with pytest.raises(ConfigError, match="(awq|smoothquant).*Linear"):  # per-input scales need a Linear's
            compress(net, plan)
        return
    if any(isinstance(m, HeadPruning) for m in methods):
        if layer == "Conv2d":  # heads live in an attention's query projection
            with pytest.raises(ConfigError, match="head_pruning.*'query' Linear"):
                compress(net, plan, example_input=x[:1])
            return
        plan = CompressionPlan({"attn.query": methods})
    # activation-stage methods calibrate on a few input batches
    calibration = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    needs = any(m.stage == "activation" or m.calibrated for m in methods)
    # structure-stage methods trace one example input; Taylor importance takes gradients from labelled batches
    labelled = [(x, torch.arange(len(x)) % 5)]
    out = compress(
        net,
        plan,
        calibration_data=calibration if needs else None,
        example_input=x[:1],
        train_loader=labelled,
        loss_fn=nn.functional.cross_entropy,
    )
    # the input model is untouched
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=0, atol=0)
    # forward works, no NaNs, outputs close-ish to the original (a sanity bound, not an accuracy claim)
    with torch.no_grad():
        y, y0 = out.model(x), net(x)
    assert y.shape == y0.shape and torch.isfinite(y).all()
    # every stored weight is what the model runs with
    modules = dict(out.model.named_modules())
    for name, cw in out.weights.items():
        assert torch.equal(modules[name].weight, cw.dense()), name
        if cw.mask is not None:
            assert torch.all(cw.dense()[~cw.mask] == 0)
    # packed round trip: identical outputs, size_bytes is the file length
    path = tmp_path / "m.rzp"
    size = save_packed(out, path, arch=ARCH)
    assert size == os.path.getsize(path)
    loaded, info = load_packed(path)
    assert info.plan == plan and info.structure == out.structure and info.activations == out.activations
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), y, rtol=0, atol=0)
    for k, v in out.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    # ONNX parity
    assert _onnx_max_diff(loaded, x, tmp_path / "m.onnx") <= 1e-4


@pytest.mark.parametrize("entropy", ["lzma", "zstd"])
@pytest.mark.parametrize("methods", [COMBOS[0], (UniformQuantization(2),), (UniformQuantization(5),)], ids=_id)
def test_entropy_stage_round_trip_and_shrinks(x, tmp_path, entropy, methods):
    net = contract_net()
    with torch.no_grad():  # bell-shaped like trained weights: quantized codes then carry < bits of entropy
        for p in net.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    out = compress(net, CompressionPlan({"conv": methods, "fc": methods}))
    plain = save_packed(out, tmp_path / "plain.rzp", arch=ARCH)
    coded = save_packed(out, tmp_path / "coded.rzp", arch=ARCH, entropy=entropy)
    assert coded == os.path.getsize(tmp_path / "coded.rzp") and coded < plain
    loaded, info = load_packed(tmp_path / "coded.rzp")
    assert info.entropy == entropy
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out.model(x), rtol=0, atol=0)


def test_lzma_streams_are_preset_9e_streams(tmp_path):
    """The entropy stage sizes LZMA's dictionary to each tensor and writes the bytes preset 9e's 64 MiB one does.

    So a plan's ``size_bytes`` is the one logged before the dictionary was sized (a resumed or
    repeated search compares like with like), and every stream decodes with the reader's filters.
    """
    net = contract_net()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05, generator=torch.Generator().manual_seed(p.numel()))
    plan = (MagnitudePruning(0.5), UniformQuantization(4))
    save_packed(
        compress(net, CompressionPlan({"conv": plan, "fc": plan})), tmp_path / "m.rzp", arch=ARCH, entropy="lzma"
    )
    with safe_open(tmp_path / "m.rzp", "pt") as f:
        coded = json.loads(f.metadata()["entropy"])["tensors"]
        streams = {key: f.get_tensor(key).numpy().tobytes() for key in coded}
    assert streams  # the 4-bit codes, at least, squeeze
    reference = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    for key, stream in streams.items():
        raw = lzma.decompress(stream, format=lzma.FORMAT_RAW, filters=reference)
        assert len(raw) == torch.Size(coded[key]["shape"]).numel() * getattr(torch, coded[key]["dtype"]).itemsize
        assert lzma.compress(raw, format=lzma.FORMAT_RAW, filters=reference) == stream, key


def test_entropy_stage_skipped_when_it_does_not_pay(net, tmp_path):
    # Uniform-init weights at 3-bit k-means: near-uniform codes, nothing to squeeze.
    out = compress(net, CompressionPlan({"conv": (KMeansQuantization(3),), "fc": (KMeansQuantization(3),)}))
    plain = save_packed(out, tmp_path / "plain.rzp", arch=ARCH)
    coded = save_packed(out, tmp_path / "coded.rzp", arch=ARCH, entropy="lzma")
    assert coded <= plain
    if coded == plain:
        assert load_packed(tmp_path / "coded.rzp")[1].entropy is None


# -- each method's defining property ---------------------------------------------------


def _quantize(cfg, weight, mask=None):
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    cw = CompressedWeight.from_dense(weight, mask)
    return get_handler(cfg)(layer, cw, cfg, None)


def _weights(shape=(8, 64), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("sparse", [False, True])
def test_kmeans_uses_exactly_2_pow_bits_values(bits, sparse):
    w = _weights((32, 64))
    mask = (torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.4) if sparse else None
    cw = _quantize(KMeansQuantization(bits), w, mask)
    kept = cw.dense()[mask] if sparse else cw.dense().flatten()
    assert kept.unique().numel() == 2**bits
    assert cw.codebook.numel() == 2**bits and int(cw.codes.max()) < 2**bits
    # Lloyd never does worse than its start, the uniform min-max grid of the same size.
    grid = _quantize(UniformQuantization(bits, symmetric=False, granularity="per_tensor"), w, mask).dense()
    ref = w if mask is None else w * mask
    assert ((cw.dense() - ref) ** 2).sum() <= ((grid - ref) ** 2).sum() * (1 + 1e-6)


def test_kmeans_with_few_distinct_weights():
    w = torch.tensor([[0.5, -0.5, 0.5, 1.0]])
    cw = _quantize(KMeansQuantization(3), w)
    torch.testing.assert_close(cw.dense(), w)  # 3 distinct values, each reproduced exactly


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_binary_two_values_per_channel(granularity):
    w = _weights()
    dense = _quantize(BinaryQuantization(granularity), w).dense()
    rows = w if granularity == "per_channel" else w.reshape(1, -1)
    for got, orig in zip(dense.reshape(rows.shape), rows, strict=True):
        alpha = orig.abs().mean()
        assert set(got.unique().tolist()) == {-alpha.item(), alpha.item()}
        assert torch.equal(got > 0, orig >= 0)


def test_ternary_threshold_and_scale():
    w = _weights()
    dense = _quantize(TernaryQuantization(), w).dense()
    for got, orig in zip(dense, w, strict=True):
        delta = 0.7 * orig.abs().mean()
        big = orig.abs() > delta
        alpha = orig.abs()[big].mean()
        torch.testing.assert_close(got, torch.sign(orig) * big * alpha)
        assert got.unique().numel() == 3


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_rounds_like_torch(dtype):
    w = _weights()
    cw = _quantize(HalfPrecision(dtype), w)
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert cw.values.dtype == torch_dtype and cw.bits == 16
    assert torch.equal(cw.dense(), w.to(torch_dtype).float())


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_asymmetric_minmax_hits_both_ends(bits):
    w = _weights() + 0.7  # off-centre: asymmetric is the point
    dense = _quantize(UniformQuantization(bits, symmetric=False), w).dense()
    torch.testing.assert_close(dense.amin(1), w.amin(1))
    torch.testing.assert_close(dense.amax(1), w.amax(1))
    assert all(row.unique().numel() <= 2**bits for row in dense)


def test_per_tensor_has_one_scale():
    cw = _quantize(UniformQuantization(4, granularity="per_tensor"), _weights())
    assert cw.scale.shape == (1,) and cw.groups == 1
    torch.testing.assert_close(cw.scale * 7, _weights().abs().max().reshape(1))


@pytest.mark.parametrize("symmetric", [True, False])
def test_clipping_mse_beats_minmax_and_percentile_clips(symmetric):
    w = _weights((4, 4096))
    w[:, 0] = 12.0  # an outlier per channel stretches min-max
    err = {
        c: float(((_quantize(UniformQuantization(3, symmetric=symmetric, clipping=c), w).dense() - w) ** 2).sum())
        for c in ("minmax", "percentile", "mse")
    }
    assert err["mse"] <= err["minmax"] and err["mse"] < err["minmax"] * 0.9
    pct = _quantize(UniformQuantization(3, symmetric=symmetric, clipping="percentile", percentile=99.0), w).dense()
    assert pct.abs().max() < 12.0 * 0.95


# -- low rank ---------------------------------------------------------------------------


@pytest.mark.parametrize("rank_ratio", [0.125, 0.25, 0.4])
def test_svd_is_the_best_rank_r_approximation(rank_ratio):
    """Eckart-Young: the Frobenius error of the rank-r factors is the tail of the singular values."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(48, 40))
    w = model[0].weight.detach().double()
    out = compress(model, CompressionPlan({"0": (LowRank(rank_ratio=rank_ratio),)}))
    a, b = out.model[0][0], out.model[0][1]
    r = out.structure["0"]["rank"]
    assert r == round(rank_ratio * 40) and a.weight.shape == (r, 48) and b.weight.shape == (40, r)
    s = torch.linalg.svdvals(w)
    err = torch.linalg.matrix_norm(b.weight.double() @ a.weight.double() - w) ** 2
    torch.testing.assert_close(err, (s[r:] ** 2).sum(), rtol=1e-4, atol=1e-6)
    assert torch.equal(b.bias, model[0].bias)


def test_conv_low_rank_matches_reconstructed_weight():
    conv = nn.Conv2d(6, 12, 3, stride=2, padding=1)
    x = torch.randn(2, 6, 9, 9)
    out = compress(nn.Sequential(conv), CompressionPlan({"0": (LowRank(rank_ratio=0.5),)}))
    a, b = out.model[0]
    w_r = (b.weight.flatten(1) @ a.weight.flatten(1)).reshape(conv.weight.shape)
    with torch.no_grad():
        torch.testing.assert_close(out.model(x), nn.functional.conv2d(x, w_r, conv.bias, 2, 1), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in out.model.parameters()) < sum(p.numel() for p in conv.parameters())


def test_energy_picks_smallest_rank():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    s = torch.linalg.svdvals(model[0].weight.detach().double())
    share = torch.cumsum(s**2, 0) / (s**2).sum()
    out = compress(model, CompressionPlan({"0": (LowRank(energy=0.5),)}))
    r = out.structure["0"]["rank"]
    assert share[r - 1] >= 0.5 and (r == 1 or share[r - 2] < 0.5)


@pytest.mark.parametrize(
    ("module", "cfg", "match"),
    [
        (nn.Linear(10, 10), LowRank(rank_ratio=0.6), r"plan.layers\['0'\].low_rank.rank_ratio: got 0.6.*rank <= 4"),
        (nn.Linear(10, 10), LowRank(energy=1.0), r"plan.layers\['0'\].low_rank.energy"),
        (nn.Conv2d(4, 4, 3, groups=2), LowRank(rank_ratio=0.1), "groups=1"),
    ],
)
def test_low_rank_refused_when_it_saves_nothing(module, cfg, match):
    plan = CompressionPlan({"0": (cfg,)})
    with pytest.raises(ConfigError, match=match):
        plan.validate(nn.Sequential(module))
    with pytest.raises(ConfigError, match=match):
        compress(nn.Sequential(module), plan)


@pytest.mark.parametrize(
    ("make", "field", "text"),
    [
        (lambda: UniformQuantization(1), "uniform_quantization.bits", "symmetric=False"),
        (lambda: UniformQuantization(17, symmetric=False), "uniform_quantization.bits", "1..16"),
        (lambda: UniformQuantization(4, granularity="per_row"), "uniform_quantization.granularity", "per_tensor"),
        (lambda: UniformQuantization(4, clipping="kl"), "uniform_quantization.clipping", "mse"),
        (lambda: UniformQuantization(4, percentile=50), "uniform_quantization.percentile", "(50.0, 100.0]"),
        (lambda: UniformQuantization(4, symmetric=1), "uniform_quantization.symmetric", "true or false"),
        (lambda: KMeansQuantization(9), "kmeans_quantization.bits", "1..8"),
        (lambda: KMeansQuantization(0), "kmeans_quantization.bits", "1..8"),
        (lambda: TernaryQuantization(0.0), "ternary_quantization.threshold", "(0.0, 2.0]"),
        (lambda: HalfPrecision("fp8"), "half_precision.dtype", "'bf16'"),
        (lambda: LowRank(), "low_rank.rank_ratio", "exactly one"),
        (lambda: LowRank(rank_ratio=0.5, energy=0.9), "low_rank.rank_ratio", "exactly one"),
        (lambda: LowRank(rank_ratio=1.5), "low_rank.rank_ratio", "(0.0, 1.0]"),
    ],
)
def test_bad_method_arguments(make, field, text):
    with pytest.raises(ConfigError) as exc:
        make()
    assert exc.value.field == field and text in str(exc.value)


def test_asymmetric_one_bit_is_valid_and_two_levels():
    assert UniformQuantization(1, symmetric=False).bits == 1
    assert get_method("uniform_quantization")(2).to_dict() == {
        "method": "uniform_quantization",
        "bits": 2,
        "symmetric": True,
        "granularity": "per_channel",
        "clipping": "minmax",
        "percentile": 99.9,
        "group_size": None,
    }
