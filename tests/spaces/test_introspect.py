"""Introspection of real architectures against hand counts, the method table, and default exclusions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayzor.compression import CompressionPlan, LowRank, compress, get_method, list_methods
from rayzor.errors import ConfigError
from rayzor.search import load_config
from rayzor.spaces import (
    TINY_PARAMS,
    CompressionSpace,
    LayerInfo,
    LayerReport,
    default_exclusions,
    inspect_layers,
    introspect,
    uncovered_params,
)

transformers = pytest.importorskip("transformers")


def _total(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _check_records(model: nn.Module, reports: list[LayerReport]) -> None:
    """What every report must satisfy, whatever the model."""
    modules = dict(model.named_modules())
    assert [r.name for r in reports] == [i.name for i in inspect_layers(model)]
    for r in reports:
        assert isinstance(r, LayerInfo)
        module = modules[r.name]
        assert r.weight_shape == tuple(module.weight.shape) and r.params == module.weight.numel()
        assert r.share == pytest.approx(r.params / _total(model))
        # Every registered method (including ones added later) is either applicable or refused with a reason.
        assert set(r.methods) | set(r.refused) == set(list_methods()) and not set(r.methods) & set(r.refused)
        assert all(isinstance(why, str) and why for why in r.refused.values())
        # Weight-only pruning and quantization work on every compressible layer.
        assert {"magnitude_pruning", "uniform_quantization", "kmeans_quantization"} <= set(r.methods)
    # Compressible weights + everything else (biases, norms, bare parameters) = the model.
    assert sum(r.params for r in reports) + sum(uncovered_params(model).values()) == _total(model)


# -- ResNet-18 (transformers) ------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18():
    config = transformers.ResNetConfig(
        layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512], embedding_size=64, num_labels=1000
    )
    return transformers.ResNetForImageClassification(config)


def test_resnet18_hand_counts(resnet18):
    reports = introspect(resnet18)
    _check_records(resnet18, reports)
    # Hand count. Stem: one 7x7 conv 3->64 (9,408 weights). Four stages of two
    # basic blocks, each block two 3x3 convs: 16 convs; stages 2-4 start with a
    # stride-2 block whose shortcut is a 1x1 conv (64->128, 128->256, 256->512):
    # 3 convs. Head: one Linear 512->1000. 1 + 16 + 3 = 20 Conv2d + 1 Linear.
    kinds = [r.kind for r in reports]
    assert kinds.count("Conv2d") == 20 and kinds.count("Linear") == 1 and len(reports) == 21
    one_by_one = [r.name for r in reports if "1x1" in r.flags]
    assert len(one_by_one) == 3 and all(".shortcut." in n for n in one_by_one)
    # Weights: stem 64*3*49 = 9,408; stage 1: 4 * 64*64*9 = 147,456; stage s (c = 128, 256, 512):
    # c*(c/2)*9 + 3 * c*c*9 + c*(c/2) -> 524,288, 2,097,152, 8,388,608; fc 512*1000 = 512,000.
    assert sum(r.params for r in reports) == 9408 + 147456 + 524288 + 2097152 + 8388608 + 512000 == 11_678_912
    # The model: + fc bias 1,000 + BatchNorm weight and bias over 64 + 4*64 + 5*128 + 5*256 + 5*512
    # = 4,800 channels (9,600), torchvision's resnet18 count.
    assert _total(resnet18) == 11_678_912 + 1000 + 2 * 4800 == 11_689_512
    assert all("low_rank" in r.methods for r in reports)  # groups=1 convs and a Linear: rank 1 saves parameters


def test_resnet18_default_exclusions_and_override(resnet18):
    stem, head = "resnet.embedder.embedder.convolution", "classifier.1"
    # The smallest layer, a 64->128 shortcut, has 8,192 >= 4,096 weights: nothing is tiny.
    assert min(r.params for r in introspect(resnet18)) == 8192 > TINY_PARAMS
    assert default_exclusions(resnet18) == {stem: "first layer", head: "last layer"}
    space = load_config(target="packed").space.build(resnet18)
    assert len(space.layers) == 19 and stem not in space.layers and head not in space.layers
    assert space.dimensions == 2 * 19 and space.describe()["default_excluded"] == {
        stem: "first layer",
        head: "last layer",
    }
    kept = load_config(target="packed", space={"include": ["classifier.*"]}).space.build(resnet18)
    assert kept.layers[-1] == head and len(kept.layers) == 20
    assert len(load_config(target="packed", space={"default_exclusions": False}).space.build(resnet18).layers) == 21
    # A space built in code covers every layer unless asked.
    assert len(CompressionSpace.from_model(resnet18).layers) == 21


# -- BERT and ViT (transformers, small random configs) -----------------------------------


def test_bert_hand_counts_and_attention_flags():
    V, P, T, H, I, L = 1000, 128, 2, 64, 128, 2  # noqa: E741 - the config's names
    model = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=V,
            hidden_size=H,
            num_hidden_layers=L,
            num_attention_heads=4,
            intermediate_size=I,
            max_position_embeddings=P,
            type_vocab_size=T,
        )
    )
    reports = introspect(model)
    _check_records(model, reports)
    # 3 embeddings (word, position, token type) + per layer query, key, value,
    # attention.output.dense, intermediate.dense, output.dense + pooler.dense.
    assert len(reports) == 3 + 6 * L + 1
    assert [r.kind for r in reports].count("Embedding") == 3
    by_name = {r.name: r for r in reports}
    for i in range(L):
        prefix = f"encoder.layer.{i}."
        assert by_name[prefix + "attention.self.query"].flags == ("attention.q",)
        assert by_name[prefix + "attention.self.key"].flags == ("attention.k",)
        assert by_name[prefix + "attention.self.value"].flags == ("attention.v",)
        assert by_name[prefix + "attention.output.dense"].flags == ("attention.out",)
        assert by_name[prefix + "intermediate.dense"].flags == by_name[prefix + "output.dense"].flags == ()
    # Weights: embeddings (V + P + T) * H; per layer 4 H*H + 2 H*I; pooler H*H.
    assert sum(r.params for r in reports) == (V + P + T) * H + L * (4 * H * H + 2 * H * I) + H * H
    # Model: + embedding LayerNorm 2H; per layer biases 4H + I + H and two LayerNorms 4H; pooler bias H.
    assert _total(model) == (V + P + T) * H + 2 * H + L * (4 * H * H + 2 * H * I + 4 * H + I + H + 4 * H) + H * H + H
    # Low-rank factorises Linear and Conv only; an embedding table is refused, with the reason.
    for name in ("embeddings.word_embeddings", "embeddings.position_embeddings"):
        assert "Linear" in by_name[name].refused["low_rank"]
    # Defaults: the word embeddings (first, but an Embedding) stay; the 2-row token-type table is tiny; the pooler is last.
    assert default_exclusions(model) == {
        "embeddings.token_type_embeddings": f"tiny ({T * H} weights, 0.09%)",
        "pooler.dense": "last layer",
    }


def test_vit_hand_counts():
    H, I, L, C, S, K = 64, 128, 2, 3, 32, 8  # noqa: E741 - hidden, intermediate, layers, channels, image, patch
    model = transformers.ViTModel(
        transformers.ViTConfig(
            hidden_size=H,
            num_hidden_layers=L,
            num_attention_heads=4,
            intermediate_size=I,
            num_channels=C,
            image_size=S,
            patch_size=K,
        )
    )
    reports = introspect(model)
    _check_records(model, reports)
    # The patch embedding is one KxK stride-K Conv2d; per layer q, k, v, attention out, MLP in, MLP out; pooler.
    assert [r.kind for r in reports] == ["Conv2d"] + ["Linear"] * (6 * L + 1)
    flags = [f for r in reports for f in r.flags]
    assert all(flags.count(f"attention.{role}") == L for role in ("q", "k", "v", "out")) and len(flags) == 4 * L
    assert sum(r.params for r in reports) == H * C * K * K + L * (4 * H * H + 2 * H * I) + H * H
    # cls_token and position_embeddings are bare parameters, not layers: counted in the model, not covered.
    patches = (S // K) ** 2
    uncovered = uncovered_params(model)
    assert uncovered["embeddings.cls_token"] == H and uncovered["embeddings.position_embeddings"] == (patches + 1) * H
    assert _total(model) == (
        H * C * K * K
        + H
        + H
        + (patches + 1) * H
        + L * (4 * H * H + 2 * H * I + 4 * H + I + H + 4 * H)
        + 2 * H
        + H * H
        + H
    )
    assert set(default_exclusions(model).values()) == {"first layer", "last layer"}
    assert default_exclusions(model)[reports[0].name] == "first layer"


# -- torchvision and timm (where they import) --------------------------------------------


def test_torchvision_resnet18():
    models = pytest.importorskip("torchvision.models")
    model = models.resnet18(weights=None)
    reports = introspect(model)
    _check_records(model, reports)
    # Same architecture as above: 20 Conv2d (3 of them the 1x1 downsample.0) + fc.
    assert [r.kind for r in reports].count("Conv2d") == 20 and reports[-1].name == "fc" and len(reports) == 21
    assert [r.name for r in reports if "1x1" in r.flags] == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]
    assert sum(r.params for r in reports) == 11_678_912 and _total(model) == 11_689_512
    assert default_exclusions(model) == {"conv1": "first layer", "fc": "last layer"}


def test_timm_vit_tiny():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    reports = introspect(model)
    _check_records(model, reports)
    # patch_embed.proj + 12 blocks x (attn.qkv, attn.proj, mlp.fc1, mlp.fc2) + head = 50.
    assert len(reports) == 1 + 12 * 4 + 1
    assert sum("attention.qkv" in r.flags for r in reports) == sum("attention.out" in r.flags for r in reports) == 12
    # D = 192, MLP 768, 197 positions: patch conv 192*3*16*16 + 192, cls 192, pos 197*192,
    # 12 x (2 norms 768 + qkv 192*576 + 576 + proj 192*192 + 192 + fc1 192*768 + 768 + fc2 768*192 + 192),
    # final norm 384, head 192*1000 + 1000.
    assert _total(model) == 147648 + 192 + 37824 + 12 * 444864 + 384 + 193000 == 5_717_416
    assert set(default_exclusions(model)) == {"patch_embed.proj", "head"}


# -- structure flags and methods ---------------------------------------------------------


def test_multihead_attention_out_proj_and_depthwise_conv():
    layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True).eval()
    by_name = {r.name: r for r in introspect(layer)}
    # in_proj_weight (q, k, v packed) is a bare parameter of nn.MultiheadAttention: no layer covers it.
    assert list(by_name) == ["self_attn.out_proj", "linear1", "linear2"]
    assert uncovered_params(layer)["self_attn.in_proj_weight"] == 3 * 16 * 16
    out_proj = by_name["self_attn.out_proj"]
    assert out_proj.kind == "Linear" and out_proj.module_type == "NonDynamicallyQuantizableLinear"
    assert out_proj.flags == ("attention.out", "multihead_attention")
    # Low-rank would replace out_proj, whose weight MultiheadAttention reads itself: refused here, and rightly so.
    assert "low_rank" in out_proj.refused and "low_rank" in by_name["linear1"].methods
    assert all(get_method(m).stage in ("sparsify", "quantize") for m in out_proj.methods)
    with pytest.raises(AttributeError, match="weight"):
        compress(layer, CompressionPlan({"self_attn.out_proj": (LowRank(rank_ratio=0.25),)})).model(
            torch.randn(1, 3, 16)
        )

    convs = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.Conv2d(8, 16, 3, groups=2), nn.Conv1d(16, 16, 1))
    reports = introspect(convs)
    assert [r.flags for r in reports] == [("depthwise",), ("grouped",), ("1x1",)]
    assert "groups=1" in reports[0].refused["low_rank"] and "low_rank" in reports[2].methods


def test_tied_weights_are_counted_once():
    model = nn.Sequential(nn.Embedding(100, 32), nn.Linear(32, 32), nn.Linear(32, 100, bias=False))
    model[2].weight = model[0].weight  # a tied LM head
    reports = introspect(model)
    assert reports[2].flags == ("shared:0",)
    assert reports[0].share == pytest.approx(3200 / (3200 + 32 * 32 + 32))
    # 3,200 + 1,024 unique compressible weights: the 1,024-weight layer is not under 1% of them.
    assert "1" not in default_exclusions(model)


# -- default exclusions in a space ------------------------------------------------------


def test_digits_default_exclusions_and_overrides(digits):
    # conv1 (16x1x3x3 = 144 weights) is the first layer and under 1% of the 38,160 compressible weights; fc2 is the last.
    assert default_exclusions(digits.model) == {"conv1": "first layer, tiny (144 weights, 0.38%)", "fc2": "last layer"}
    space = load_config(target="packed").space.build(digits.model)
    assert space.layers == ("conv2", "fc1") and space.dimensions == 4
    assert load_config(target="packed", space={"include": ["fc*"]}).space.build(digits.model).layers == (
        "conv2",
        "fc1",
        "fc2",
    )
    assert load_config(target="packed", space={"default_exclusions": False}).space.build(digits.model).layers == (
        "conv1",
        "conv2",
        "fc1",
        "fc2",
    )
    # A group's glob is an explicit choice: it keeps a layer the defaults would leave out.
    grouped = load_config(
        target="packed", space={"groups": [{"name": "convs", "match": ["conv*"], "tie": True}]}
    ).space.build(digits.model)
    assert grouped.layers == ("conv1", "conv2", "fc1") and grouped.default_excluded == {"fc2": "last layer"}
    # exclude beats include.
    both = load_config(target="packed", space={"include": ["fc2"], "exclude": ["fc2"]}).space.build(digits.model)
    assert both.layers == ("conv2", "fc1")


def test_include_glob_matching_nothing_is_one_line():
    with pytest.raises(ConfigError) as info:
        CompressionSpace(["conv1", "conv2", "fc1", "fc2"], include=["fc3"], default_excluded={"fc2": "last layer"})
    message = str(info.value)
    assert info.value.field == "space.include" and "\n" not in message and "fc2" in message
    with pytest.raises(ConfigError) as info:
        CompressionSpace(["a", "b", "c"], exclude=["b"], default_excluded={"a": "first layer", "c": "last layer"})
    assert info.value.field == "space.exclude" and "space.include" in str(info.value)


def test_defaults_never_leave_nothing_and_norms_are_never_layers():
    two = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    assert default_exclusions(two) == {}  # first + last = everything: no defaults
    assert [r.name for r in introspect(two)] == ["0", "2"]
    assert CompressionSpace.from_model(two, default_exclusions=True).layers == ("0", "2")
