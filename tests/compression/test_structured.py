"""Structured pruning (channels, heads) with DepGraph, random and global magnitude pruning."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rayzor.compression import (
    ChannelPruning,
    CompressionPlan,
    ConfigError,
    HeadPruning,
    MagnitudePruning,
    RandomPruning,
    compress,
    global_magnitude_plan,
    load_packed,
    model_stats,
    save_packed,
)
from tests.compression.tiny_models import contract_net, resnet18, tiny_bert

RESNET_ARCH = {"factory": "tests.compression.tiny_models:resnet18", "kwargs": {}}
BERT_ARCH = {"factory": "tests.compression.tiny_models:tiny_bert", "kwargs": {}}


def _params(model):
    return sum(p.numel() for p in model.parameters())


def _dropped(spec):
    return [i for i in range(spec["channels"]) if i not in spec["keep"]]


# -- ResNet-18: residual additions ------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    return resnet18()


@pytest.fixture(scope="module")
def image():
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def pruned_resnet(resnet, image):
    convs = [n for n, m in resnet.named_modules() if isinstance(m, nn.Conv2d)]
    return compress(resnet, CompressionPlan({n: (ChannelPruning(0.5),) for n in convs}), example_input=image)


def test_resnet_every_conv_halved_and_residuals_stay_aligned(resnet, pruned_resnet, image):
    dense = dict(resnet.named_modules())
    for name, module in pruned_resnet.model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels == dense[name].out_channels // 2, name
        if isinstance(module, nn.BatchNorm2d):
            assert module.num_features == dense[name].num_features // 2, name
    # the stem and both convs feeding stage 0's residual additions are one group: pruned once, same channels
    structure = pruned_resnet.structure
    stem = "resnet.embedder.embedder.convolution"
    assert f"{stem}@channel_pruning" in structure
    assert "resnet.encoder.stages.0.layers.0.layer.1.convolution@channel_pruning" not in structure
    touched = {op[0] for op in structure[f"{stem}@channel_pruning"]["ops"] if op[1] == "out"}
    assert {
        "resnet.encoder.stages.0.layers.0.layer.1.convolution",
        "resnet.encoder.stages.0.layers.1.layer.1.convolution",
    } <= touched
    with torch.no_grad():
        logits = pruned_resnet.model(image).logits
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
    assert _params(pruned_resnet.model) < 0.3 * _params(resnet)


def test_resnet_packed_round_trip(pruned_resnet, image, tmp_path):
    save_packed(pruned_resnet, tmp_path / "r.rzp", arch=RESNET_ARCH)
    loaded, info = load_packed(tmp_path / "r.rzp")
    assert info.structure == pruned_resnet.structure
    with torch.no_grad():
        torch.testing.assert_close(loaded(image).logits, pruned_resnet.model(image).logits, rtol=0, atol=0)


def test_resnet_pruned_really_does_less_work(resnet, pruned_resnet, image):
    # Half the channels of every conv: about a quarter of the MACs, counted by torch's FLOP counter on
    # the physically smaller model (the measured CPU latency is in BENCHMARKS.md: benchmarks/engine.py).
    dense = model_stats(resnet, image)
    pruned = model_stats(pruned_resnet.model, image)
    assert pruned["macs"] < 0.35 * dense["macs"]
    assert pruned["params"] < 0.3 * dense["params"]


class _Residual(nn.Module):
    """Two convs added together: one DepGraph group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        y = self.a(x)
        return self.head((y + self.b(torch.relu(y))).mean((2, 3)))


def test_one_group_is_pruned_once_and_needs_one_config():
    torch.manual_seed(0)
    model, x = _Residual(), torch.randn(1, 3, 8, 8)
    out = compress(model, CompressionPlan({"a": (ChannelPruning(0.5),), "b": (ChannelPruning(0.5),)}), example_input=x)
    assert list(out.structure) == ["a@channel_pruning"]
    assert out.model.a.out_channels == out.model.b.out_channels == out.model.b.in_channels == 4
    plan = CompressionPlan({"a": (ChannelPruning(0.5),), "b": (ChannelPruning(0.25),)})
    with pytest.raises(ConfigError, match=r"plan.layers\['b'\]: got ChannelPruning\(ratio=0.25.*shares its output"):
        compress(model, plan, example_input=x)


def test_output_layer_refused():
    with pytest.raises(ConfigError, match=r"head'\].channel_pruning.*reach the model's output"):
        compress(
            contract_net(), CompressionPlan({"head": (ChannelPruning(0.5),)}), example_input=torch.randn(1, 3, 8, 8)
        )


# -- exactness on the contract net -------------------------------------------------------


@pytest.mark.parametrize("layer", ["stem", "conv", "fc"])
@pytest.mark.parametrize("importance", ["l1", "l2", "random"])
def test_pruned_model_equals_original_with_channels_zeroed(layer, importance):
    """Each layer is followed by ReLU: a zeroed channel contributes nothing, exactly like a removed one."""
    net = contract_net()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = compress(net, CompressionPlan({layer: (ChannelPruning(0.5, importance),)}), example_input=x[:1])
    spec = out.structure[f"{layer}@channel_pruning"]
    reference = copy.deepcopy(net)
    with torch.no_grad():
        module = reference.get_submodule(layer)
        module.weight[_dropped(spec)] = 0
        module.bias[_dropped(spec)] = 0
        torch.testing.assert_close(out.model(x), reference(x), rtol=1e-5, atol=1e-5)
    assert out.model.get_submodule(layer).weight.shape[0] == spec["channels"] // 2
    again = compress(net, CompressionPlan({layer: (ChannelPruning(0.5, importance),)}), example_input=x[:1])
    assert again.structure == out.structure  # reproducible


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor"])
def test_weak_channels_go_first(importance):
    net = contract_net()
    weak = [1, 4, 6]
    with torch.no_grad():  # channels whose every coupled weight is tiny: every criterion ranks them last
        net.stem.weight[weak] *= 1e-3
        net.stem.bias[weak] *= 1e-3
        net.conv.weight[:, weak] *= 1e-3
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    batches = [(x, torch.arange(8) % 5)]
    cfg = ChannelPruning(3 / 8, importance)
    out = compress(
        net,
        CompressionPlan({"stem": (cfg,)}),
        example_input=x[:1],
        train_loader=batches,
        loss_fn=nn.functional.cross_entropy,
    )
    assert _dropped(out.structure["stem@channel_pruning"]) == weak


@pytest.mark.parametrize(
    ("ratio", "round_to", "kept"), [(0.5, 1, 4), (0.6, 4, 4), (0.1, 4, 8), (0.3, 4, 8), (0.9, 1, 1), (0.9, 4, 4)]
)
def test_kept_channels_rounding(ratio, round_to, kept):
    """8 stem channels: remove round(ratio * 8), round the kept count to the nearest multiple (ties: keep more)."""
    net = contract_net()
    out = compress(
        net,
        CompressionPlan({"stem": (ChannelPruning(ratio, round_to=round_to),)}),
        example_input=torch.randn(1, 3, 8, 8),
    )
    assert out.model.stem.out_channels == kept == out.model.conv.in_channels


# -- BERT heads -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 100, (3, 10), generator=torch.Generator().manual_seed(0))


def test_bert_heads_pruned(tokens, tmp_path):
    bert = tiny_bert()
    queries = [f"encoder.layer.{i}.attention.self.query" for i in range(2)]
    plan = CompressionPlan(
        {**{q: (HeadPruning(0.5),) for q in queries}, "encoder.layer.0.intermediate.dense": (ChannelPruning(0.5),)}
    )
    out = compress(bert, plan, example_input=tokens[:1])
    reference = copy.deepcopy(bert)
    for i, q in enumerate(queries):
        spec = out.structure[f"{q}@head_pruning"]
        attention = out.model.encoder.layer[i].attention
        assert attention.self.num_attention_heads == 2 == len(spec["heads"])
        assert attention.self.query.out_features == attention.self.value.out_features == 32
        assert attention.output.dense.in_features == 32
        with torch.no_grad():  # a head whose values are zero adds nothing: the same as a removed head
            value = reference.encoder.layer[i].attention.self.value
            value.weight[_dropped(spec)] = 0
            value.bias[_dropped(spec)] = 0
    with torch.no_grad():
        ffn = reference.encoder.layer[0]
        drop = _dropped(out.structure["encoder.layer.0.intermediate.dense@channel_pruning"])
        # GELU(0) = 0: a zeroed FFN neuron adds nothing either
        ffn.intermediate.dense.weight[drop] = 0
        ffn.intermediate.dense.bias[drop] = 0
        hidden = out.model(tokens).last_hidden_state
        torch.testing.assert_close(hidden, reference(tokens).last_hidden_state, rtol=1e-4, atol=1e-5)
    assert _params(out.model) < _params(bert) - 2 * 3 * 64 * 32
    save_packed(out, tmp_path / "b.rzp", arch=BERT_ARCH)
    loaded, _ = load_packed(tmp_path / "b.rzp")
    assert loaded.encoder.layer[1].attention.self.num_attention_heads == 2
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).last_hidden_state, hidden, rtol=0, atol=0)


def test_bert_taylor_heads_need_calibration(tokens):
    bert = tiny_bert()
    plan = CompressionPlan({"encoder.layer.0.attention.self.query": (HeadPruning(0.25, "taylor"),)})
    with pytest.raises(ConfigError) as exc:
        compress(bert, plan, example_input=tokens[:1])
    assert exc.value.field == "train_loader" and "taylor" in str(exc.value)
    batches = [(tokens, torch.zeros(3))]
    out = compress(
        bert,
        plan,
        example_input=tokens[:1],
        train_loader=batches,
        loss_fn=lambda output, _: output.last_hidden_state.pow(2).mean(),
    )
    assert out.model.encoder.layer[0].attention.self.num_attention_heads == 3
    assert all(p.grad is None for p in out.model.parameters())


@pytest.mark.parametrize(
    ("layer", "cfg", "match"),
    [
        (
            "encoder.layer.0.attention.self.key",
            ChannelPruning(0.5),
            "use HeadPruning on 'encoder.layer.0.attention.self.query'",
        ),
        ("encoder.layer.0.attention.output.dense", ChannelPruning(0.5), "reach the model's output"),
        ("embeddings.word_embeddings", ChannelPruning(0.5), "got 'Embedding'.*Linear, Conv1d or Conv2d"),
        ("encoder.layer.0.attention.self.value", HeadPruning(0.5), "head_pruning.*the 'query' Linear"),
    ],
)
def test_bert_layers_refused(tokens, layer, cfg, match):
    with pytest.raises(ConfigError, match=match):
        compress(tiny_bert(), CompressionPlan({layer: (cfg,)}), example_input=tokens[:1])


# -- refusals --------------------------------------------------------------------------


def test_structured_plan_needs_example_input():
    with pytest.raises(ConfigError) as exc:
        compress(contract_net(), CompressionPlan({"conv": (ChannelPruning(0.5),)}))
    assert exc.value.field == "example_input" and "'conv'" in str(exc.value)
    with pytest.raises(ConfigError, match="example_input: got 'x'"):
        compress(contract_net(), CompressionPlan({"conv": (ChannelPruning(0.5),)}), example_input="x")


class _Mixed(nn.Module):
    """conv -> flatten -> fc beside a Linear on 3-D tokens: torch-pruning 1.6 then mis-maps the flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 2)
        self.tok = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1)) + self.tok(x.flatten(2).transpose(1, 2)).mean(1)


def test_mis_traced_group_is_refused():
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"plan.layers\['conv'\].channel_pruning.*traces correctly"):
        compress(_Mixed(), CompressionPlan({"conv": (ChannelPruning(0.5),)}), example_input=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    ("make", "field", "text"),
    [
        (lambda: ChannelPruning(1.0), "channel_pruning.ratio", "[0.0, 1.0)"),
        (lambda: ChannelPruning(0.5, "l3"), "channel_pruning.importance", "'taylor'"),
        (lambda: ChannelPruning(0.5, round_to=0), "channel_pruning.round_to", ">= 1"),
        (lambda: HeadPruning(-0.1), "head_pruning.ratio", "[0.0, 1.0)"),
        (lambda: RandomPruning(1.0), "random_pruning.sparsity", "[0.0, 1.0)"),
        (lambda: RandomPruning(0.5, seed=-1), "random_pruning.seed", ">= 0"),
    ],
)
def test_bad_arguments(make, field, text):
    with pytest.raises(ConfigError) as exc:
        make()
    assert exc.value.field == field and text in str(exc.value)


def test_grouped_conv_refused():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2))
    with pytest.raises(ConfigError, match="groups=1"):
        compress(model, CompressionPlan({"0": (ChannelPruning(0.5),)}), example_input=torch.randn(1, 4, 8, 8))


def test_settings_round_trip():
    plan = CompressionPlan(
        {"conv": (ChannelPruning(0.5, "l2", round_to=4), MagnitudePruning(0.3)), "fc": (RandomPruning(0.4, seed=3),)}
    )
    flat = plan.settings()
    assert flat["conv"]["structure"] == "channel_pruning" and flat["fc"]["prune"] == "random_pruning"
    assert CompressionPlan.from_settings(flat) == plan


# -- random and global magnitude pruning ---------------------------------------------------


def test_random_pruning_exact_and_seeded():
    net = contract_net()
    masks = {}
    for seed in (0, 0, 1):
        out = compress(net, CompressionPlan({"fc": (RandomPruning(0.3, seed=seed),)}))
        mask = out.weights["fc"].mask
        assert int((~mask).sum()) == round(0.3 * mask.numel())
        masks.setdefault(seed, []).append(mask)
    assert torch.equal(masks[0][0], masks[0][1]) and not torch.equal(masks[0][0], masks[1][0])


@pytest.mark.parametrize("sparsity", [0.0, 0.35, 0.8])
def test_global_magnitude_one_threshold(sparsity):
    net = contract_net()
    layers = ["stem", "conv", "fc", "head"]
    plan = global_magnitude_plan(net, sparsity, layers)
    assert list(plan.layers) == layers and all(isinstance(m[0], MagnitudePruning) for m in plan.layers.values())
    out = compress(net, plan)
    kept, pruned = [], []
    for name in layers:
        w = net.get_submodule(name).weight.detach().abs()
        mask = out.weights[name].mask
        mask = torch.ones_like(w, dtype=torch.bool) if mask is None else mask
        kept.append(w[mask])
        pruned.append(w[~mask])
    kept, pruned = torch.cat(kept), torch.cat(pruned)
    assert pruned.numel() == round(sparsity * (kept.numel() + pruned.numel()))
    if pruned.numel():
        assert kept.min() >= pruned.max()
    # layers with smaller weights give up more of them: the threshold is global, not a per-layer share
    if sparsity == 0.35:
        assert len({m[0].sparsity for m in plan.layers.values()}) > 1


def test_global_magnitude_ties_reproducible_and_refusals():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.5)  # all tied: earlier layer, then lower index, goes first
    plan = global_magnitude_plan(model, 0.25)
    assert plan == global_magnitude_plan(model, 0.25)
    assert [m[0].sparsity for m in plan.layers.values()] == [0.5, 0.0]
    with pytest.raises(ConfigError, match="keeps some of '0'"):
        global_magnitude_plan(model, 0.6)
    with pytest.raises(ConfigError, match="layers: got 'nope'"):
        global_magnitude_plan(model, 0.5, ["nope"])
    with pytest.raises(ConfigError, match=r"sparsity: got 1\.0"):
        global_magnitude_plan(model, 1.0)
