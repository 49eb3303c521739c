"""Structural choices of a space: channel and head pruning, factorization with a conditional rank, the pruning
criterion, activation bit-widths."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from torch import nn

from rayzor.compression import (
    ActivationQuantization,
    ChannelPruning,
    CompressionPlan,
    HeadPruning,
    LowRank,
    MagnitudePruning,
    RandomPruning,
    Tucker2,
    UniformQuantization,
    compress,
)
from rayzor.errors import ConfigError
from rayzor.search import evaluate_plan, validate_config
from rayzor.spaces import NO_FACTORIZATION, CompressionSpace, SpaceConfig
from rayzor.tasks import CALIBRATION_BATCHES
from tests.compression.tiny_models import tiny_bert

optuna.logging.set_verbosity(optuna.logging.WARNING)

ALL = ("conv1", "conv2", "fc1", "fc2")
STRUCTURE = {
    "channels": (0.25, 0.5),
    "factorize": ("lowrank", "tucker2"),
    "rank_ratio": (0.1, 0.9),
    "pruning": ("magnitude", "random"),
}
FACTORIZATIONS = {"low_rank": LowRank, "tucker2": Tucker2}


@pytest.fixture(scope="module")
def space(digits):
    """Every digits layer searched, with every structural choice on."""
    return CompressionSpace.from_model(digits.model, example_input=digits.example_input, bits=(4, 8, 32), **STRUCTURE)


def _sample(space: CompressionSpace, n: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
    return study.trials


def _saves(method: str, layer: str, module: nn.Module, ratio: float) -> bool:
    try:
        FACTORIZATIONS[method](rank_ratio=ratio).validate(layer, module)
    except ConfigError:
        return False
    return True


def test_default_space_is_unchanged(digits):
    space = SpaceConfig().build(digits.model)
    assert space.layers == ("conv2", "fc1") and space.dimensions == 4 and not space.channel_units
    assert set(space.describe()) == {"layers", "sparsity", "bits", "dimensions", "default_excluded"}
    trial = _sample(space, 1)[0]
    assert set(trial.params) == {"conv2.sparsity", "conv2.bits", "fc1.sparsity", "fc1.bits"}


def test_where_each_choice_applies(space, digits):
    # fc2's outputs are the model's: its channels cannot go; Tucker-2 needs a conv.
    assert [c.layers for c in space.channel_units] == [("conv1",), ("conv2",), ("fc1",)]
    assert "model's output" in space.channels_refused["fc2"]
    factorize = {u.prefix: dict(u.factorize) for u in space.units}
    assert set(factorize["conv2"]) == {"low_rank", "tucker2"} and set(factorize["fc2"]) == {"low_rank"}
    assert set(factorize["fc1"]) == {"low_rank"}
    modules = dict(digits.model.named_modules())
    for layer, ranges in factorize.items():
        for method, (low, high) in ranges.items():
            # the range is capped at the largest rank_ratio (in steps of 0.001) that still saves parameters
            assert low == 0.1 and high < 0.9
            assert _saves(method, layer, modules[layer], high)
            assert not _saves(method, layer, modules[layer], high + 0.001)
    # per unit: channels, factorize, rank_ratio, sparsity, prune, bits (fc2: no channels)
    assert space.layer_dimensions() == {"conv1": 6, "conv2": 6, "fc1": 6, "fc2": 5}
    described = space.describe()
    assert described["factorize"] == ["low_rank", "tucker2"] and described["pruning"] == [
        "magnitude_pruning",
        "random_pruning",
    ]
    assert described["channel_units"][1] == {"name": "conv2", "layers": ["conv2"], "channels": [0.25, 0.5]}


def test_rank_ratio_only_when_a_factorization_is_chosen(space):
    trials = _sample(space, 40)
    ranges = {u.prefix: dict(u.factorize) for u in space.units}
    chosen = set()
    for t in trials:
        p, d = t.params, t.distributions
        assert d["conv2.channels"] == FloatDistribution(0.25, 0.5) and "fc2.channels" not in p
        assert d["conv2.factorize"] == CategoricalDistribution((NO_FACTORIZATION, "low_rank", "tucker2"))
        assert d["fc1.factorize"] == CategoricalDistribution((NO_FACTORIZATION, "low_rank"))
        assert d["fc1.prune"] == CategoricalDistribution(("magnitude_pruning", "random_pruning"))
        for layer in ALL:
            method = p[f"{layer}.factorize"]
            chosen.add(method)
            assert (f"{layer}.rank_ratio" in p) == (method != NO_FACTORIZATION)
            if method != NO_FACTORIZATION:  # in the chosen method's own capped range
                assert d[f"{layer}.rank_ratio"] == FloatDistribution(*ranges[layer][method])
    assert chosen == {NO_FACTORIZATION, "low_rank", "tucker2"}


def test_decode_compress_and_round_trip(space, digits):
    seen: set[type] = set()
    for t in _sample(space, 6, seed=1):
        p = t.params
        plan = space.decode(p)
        assert space.encode(plan) == p
        for layer in ALL:
            methods = {type(m): m for m in plan.layers[layer]}
            seen |= set(methods)
            if layer != "fc2":
                assert methods[ChannelPruning] == ChannelPruning(p[f"{layer}.channels"], "l1")
            method = p[f"{layer}.factorize"]
            if method != NO_FACTORIZATION:
                assert methods[FACTORIZATIONS[method]] == FACTORIZATIONS[method](rank_ratio=p[f"{layer}.rank_ratio"])
            pruning = MagnitudePruning if p[f"{layer}.prune"] == "magnitude_pruning" else RandomPruning
            assert methods[pruning].sparsity == pytest.approx(p[f"{layer}.sparsity"])
        out = compress(digits.model, plan, example_input=digits.example_input)
        logits = out.model(digits.example_input)
        assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    assert {ChannelPruning, LowRank, Tucker2, MagnitudePruning, RandomPruning, UniformQuantization} <= seen


def test_uniform_params_are_the_mildest_structure(space):
    params = space.uniform_params(8)
    plan = space.decode(params)
    assert space.encode(plan) == params
    for layer in ALL:
        kinds = {type(m) for m in plan.layers[layer]}
        assert LowRank not in kinds and Tucker2 not in kinds and RandomPruning not in kinds
        assert (ChannelPruning(0.25) in plan.layers[layer]) == (layer != "fc2")  # the lowest ratio


def test_tied_group_shares_channels_and_factorization(digits):
    groups = [
        {
            "name": "convs",
            "match": ["conv*"],
            "tie": True,
            "channels": [0.1, 0.3],
            "factorize": ["tucker2"],
            "rank_ratio": 0.2,
        }
    ]
    space = CompressionSpace.from_model(digits.model, example_input=digits.example_input, groups=groups)
    assert [(c.prefix, c.layers) for c in space.channel_units] == [("convs", ("conv1", "conv2"))]
    for t in _sample(space, 4):
        p = t.params
        assert {"convs.channels", "convs.factorize"} <= set(p) and "convs.rank_ratio" not in p  # rank fixed at 0.2
        assert not any(k.startswith("conv1.") for k in p) and "fc1.factorize" not in p
        plan = space.decode(p)
        assert plan.layers["conv1"][0] == plan.layers["conv2"][0] == ChannelPruning(p["convs.channels"])
        if p["convs.factorize"] == "tucker2":
            assert Tucker2(rank_ratio=0.2) in plan.layers["conv1"] and Tucker2(rank_ratio=0.2) in plan.layers["conv2"]
        assert space.encode(plan) == p
        compress(digits.model, plan, example_input=digits.example_input)
    assert space.describe()["groups"][0]["channels"] == [0.1, 0.3]


class Residual(nn.Module):
    """``stem -> (a -> b) + shortcut -> head``: b and shortcut lose the same output channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 16, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.a(x))) + self.shortcut(x)
        return self.head(y.mean((2, 3)))


def test_coupled_layers_share_one_ratio():
    model, x = Residual().eval(), torch.randn(2, 1, 6, 6)
    space = CompressionSpace.from_model(model, example_input=x, channels=(0.25, 0.5), factorize=["tucker2"])
    units = {c.prefix: c.layers for c in space.channel_units}
    assert units == {"stem": ("stem",), "a": ("a",), "b": ("b", "shortcut")}
    assert "shortcut.factorize" not in _sample(space, 1)[0].params  # 1x1: no Tucker-2
    for t in _sample(space, 3):
        assert "shortcut.channels" not in t.params
        plan = space.decode(t.params)
        assert ChannelPruning(t.params["b.channels"]) in plan.layers["shortcut"]
        assert space.encode(plan) == t.params
        assert compress(model, plan, example_input=x).model(x).shape == (2, 3)
    # b's channels go with the shortcut's: excluding one leaves the other without a ratio
    partial = CompressionSpace.from_model(model, example_input=x, channels=(0.25, 0.5), exclude=["shortcut"])
    assert "shortcut" in partial.channels_refused["b"] and "b" not in {c.prefix for c in partial.channel_units}
    # ranges that cannot both hold for coupled layers are refused
    with pytest.raises(ConfigError, match=r"space.groups\[sc\].channels: got \[0.6, 0.7\]; valid: a range overlapping"):
        CompressionSpace.from_model(
            model,
            example_input=x,
            channels=(0.25, 0.5),
            groups=[{"name": "sc", "match": ["shortcut"], "channels": [0.6, 0.7]}],
        )


def test_pruning_choice():
    only_random = CompressionSpace(["fc"], pruning=["random"])
    trial = _sample(only_random, 1)[0]
    assert "fc.prune" not in trial.params and only_random.dimensions == 2
    assert isinstance(only_random.decode(trial.params).layers["fc"][0], RandomPruning)
    both = CompressionSpace(["fc"], pruning=["magnitude", "random"], sparsity=(0.0, 0.0))
    assert both.dimensions == 1  # nothing pruned: no criterion to choose


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"channels": (0.5, 1.0)}, "space.channels", "0 <= low <= high < 1"),
        ({"channels": (0.6, 0.5)}, "space.channels", "0 <= low <= high < 1"),
        ({"factorize": ("svd",)}, "space.factorize", "lowrank, tucker2"),
        ({"factorize": ("lowrank",), "rank_ratio": (0.0, 0.5)}, "space.rank_ratio", "0 < low"),
        ({"rank_ratio": (0.1, 0.5)}, "space.rank_ratio", "only with space.factorize"),
        ({"pruning": ()}, "space.pruning", "non-empty"),
        ({"pruning": ("l0",)}, "space.pruning", "magnitude, random"),
        ({"channel_importance": "taylor"}, "space.channel_importance", "'l1'"),
        ({"channels": (0.1, 0.5), "example_input": None}, "example_input", "one input batch"),
        ({"groups": [{"name": "g", "match": ["fc1"], "channels": 0.3}]}, "example_input", "one input batch"),
    ],
)
def test_bad_structure_options(digits, kwargs, field, text):
    with pytest.raises(ConfigError) as exc:
        CompressionSpace.from_model(digits.model, **kwargs)
    assert exc.value.field == field and text in str(exc.value) and "\n" not in str(exc.value)


def test_structure_needs_the_model():
    with pytest.raises(ConfigError, match=r"^space.factorize: got \['low_rank'\]; valid: a space built from its model"):
        CompressionSpace(list(ALL), factorize=["lowrank"])


def test_encode_refuses_plans_outside_the_space(space):
    with pytest.raises(ConfigError, match=r"plan.layers\['fc2'\].structure: got 'channel_pruning'"):
        space.encode(CompressionPlan({"conv1": (), "conv2": (), "fc1": (), "fc2": (ChannelPruning(0.3),)}))
    with pytest.raises(ConfigError, match=r"plan.layers\['fc1'\].rank_ratio: got 0.95; valid: within \[0.1, 0.8"):
        space.encode(
            CompressionPlan(
                {
                    "conv1": (ChannelPruning(0.3),),
                    "conv2": (ChannelPruning(0.3),),
                    "fc1": (ChannelPruning(0.3), LowRank(rank_ratio=0.95)),
                    "fc2": (),
                }
            )
        )
    with pytest.raises(ConfigError, match=r"plan.layers\['conv1'\].ratio: got 0.0; valid: within \[0.25, 0.5\]"):
        space.encode(CompressionPlan({"conv1": (), "conv2": (), "fc1": (), "fc2": ()}))


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"channels": [0.5, 1.0]}, "space.channels: got [0.5, 1.0]; valid: [low, high] with 0 <= low <= high < 1"),
        ({"factorize": ["svd"]}, "space.factorize: got ['svd']; valid: names from lowrank, tucker2"),
        ({"rank_ratio": 1.5, "factorize": ["tucker2"]}, "space.rank_ratio: got 1.5; valid: [low, high] with 0 < low"),
        ({"channel_importance": "taylor"}, "space.channel_importance: got 'taylor'; valid: 'l1', 'l2' or 'random'"),
        ({"groups": [{"name": "g", "match": ["x"], "pruning": ["l0"]}]}, "space.groups[0].pruning: got ['l0']"),
    ],
)
def test_config_errors_are_one_line(space, message):
    with pytest.raises(ConfigError) as exc:
        validate_config({"space": space})
    assert str(exc.value).startswith(message)


def test_config_builds_the_space(digits):
    config = validate_config(
        {
            "target": "packed",
            "space": {
                "channels": [0.25, 0.5],
                "factorize": ["lowrank"],
                "rank_ratio": [0.1, 0.5],
                "pruning": ["random", "magnitude"],
            },
        }
    ).space
    assert config.factorize == ("low_rank",) and config.pruning == ("random_pruning", "magnitude_pruning")
    space = config.build(digits.model, example_input=digits.example_input)
    assert space.layers == ("conv2", "fc1") and [c.prefix for c in space.channel_units] == ["conv2", "fc1"]
    # channels, factorize, rank_ratio, sparsity, prune, bits on each of the two layers
    assert space.dimensions == 12


# -- attention heads and activation bit-widths --------------------------------------------


QUERIES = tuple(f"encoder.layer.{i}.attention.self.query" for i in range(2))


@pytest.fixture(scope="module")
def bert():
    """A 2-layer, 4-head BERT encoder and one batch of token ids."""
    return tiny_bert(), torch.randint(0, 100, (3, 10), generator=torch.Generator().manual_seed(0))


def test_heads_only_on_queries_and_compress_accepts_them(bert):
    model, tokens = bert
    space = CompressionSpace.from_model(
        model, example_input=tokens[:1], heads=(0.25, 0.75), act_bits=(8, 32), bits=(8, 32)
    )
    assert [(h.prefix, h.layers, h.heads) for h in space.head_units] == [(q, (q,), (0.25, 0.75)) for q in QUERIES]
    assert not space.heads_refused
    dims = space.layer_dimensions()
    # query: heads, sparsity, bits, act_bits; key: no heads; an Embedding: no act_bits (its inputs are token ids)
    assert dims[QUERIES[0]] == 4 and dims["encoder.layer.0.attention.self.key"] == 3
    assert dims["embeddings.word_embeddings"] == 2
    assert space.describe()["head_units"][1] == {"name": QUERIES[1], "layers": [QUERIES[1]], "heads": [0.25, 0.75]}
    kept = set()
    for t in _sample(space, 3, seed=2):
        p, d = t.params, t.distributions
        assert d[f"{QUERIES[0]}.heads"] == FloatDistribution(0.25, 0.75)
        assert d["pooler.dense.act_bits"] == CategoricalDistribution((8, 32))
        assert not any(k.startswith("embeddings.") and k.endswith(".act_bits") for k in p)
        plan = space.decode(p)
        assert space.encode(plan) == p
        for q in QUERIES:
            assert HeadPruning(p[f"{q}.heads"]) in plan.layers[q]
            assert (ActivationQuantization(8) in plan.layers[q]) == (p[f"{q}.act_bits"] == 8)
        out = compress(model, plan, example_input=tokens[:1], calibration_data=[tokens])
        for i, q in enumerate(QUERIES):
            heads = out.model.encoder.layer[i].attention.self.num_attention_heads
            assert heads == 4 - round(p[f"{q}.heads"] * 4)
            kept.add(heads)
        assert torch.isfinite(out.model(tokens).last_hidden_state).all()
    assert len(kept) > 1
    mild = space.decode(space.uniform_params(8))  # lowest head ratio, fp32 activations
    assert HeadPruning(0.25) in mild.layers[QUERIES[0]]
    assert not any(m.stage == "activation" for ms in mild.layers.values() for m in ms)


def test_tied_group_shares_heads_and_act_bits(bert):
    model, tokens = bert
    groups = [
        {
            "name": "attn",
            "match": ["encoder.layer.*.attention.self.*"],
            "tie": True,
            "heads": [0.25, 0.5],
            "act_bits": [4, 8],
        },
        {"name": "emb", "match": ["embeddings.*", "pooler.dense"], "tie": True, "bits": 8, "act_bits": 8},
    ]
    space = CompressionSpace.from_model(
        model,
        example_input=tokens[:1],
        groups=groups,
        sparsity=(0.0, 0.0),
        exclude=["encoder.layer.*.output.dense", "encoder.layer.*.intermediate.*"],
    )
    assert [(h.prefix, h.layers) for h in space.head_units] == [("attn", QUERIES)]
    units = {u.prefix: u for u in space.units}
    assert units["emb"].act_layers == ("pooler.dense",) and len(units["attn"].act_layers) == 6
    assert space.dimensions == 3  # attn.heads, attn.bits, attn.act_bits; emb: all fixed
    for t in _sample(space, 3):
        p = t.params
        assert set(p) == {"attn.heads", "attn.bits", "attn.act_bits"}
        plan = space.decode(p)
        for q in QUERIES:
            assert HeadPruning(p["attn.heads"]) in plan.layers[q]
        assert ActivationQuantization(p["attn.act_bits"]) in plan.layers["encoder.layer.1.attention.self.value"]
        assert ActivationQuantization(8) in plan.layers["pooler.dense"]
        assert not any(m.stage == "activation" for m in plan.layers["embeddings.word_embeddings"])
        assert space.encode(plan) == p
        compress(model, plan, example_input=tokens[:1], calibration_data=[tokens])
    assert space.describe()["groups"][0]["heads"] == [0.25, 0.5]


class NotAttention(nn.Module):
    """A Linear named ``query`` outside any self-attention: HeadPruning's validate() accepts it, the probe does not."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.query(x)))


def test_heads_refused_where_the_probe_fails():
    space = CompressionSpace.from_model(NotAttention(), example_input=torch.randn(2, 8), heads=(0.25, 0.5))
    assert not space.head_units and "self-attention" in space.heads_refused["query"]
    assert "query.heads" not in _sample(space, 1)[0].params


def test_act_bits_on_digits_through_a_trial(digits, tmp_path):
    space = CompressionSpace.from_model(digits.model, act_bits=(4, 8, 32), bits=(8,), sparsity=(0.0, 0.5))
    assert space.layer_dimensions() == {layer: 2 for layer in ALL}  # sparsity, act_bits
    assert not space.decode(space.uniform_params(8)).by_stage("activation")  # fp32 activations: no calibration
    params = {**space.uniform_params(8), "conv2.act_bits": 4, "fc1.act_bits": 8}
    plan = space.decode(params)
    assert space.encode(plan) == params
    assert ActivationQuantization(4) in plan.layers["conv2"] and ActivationQuantization(8) in plan.layers["fc1"]
    assert not any(m.stage == "activation" for m in plan.layers["conv1"])
    calibration = digits.calibration_batches()
    assert len(calibration) == CALIBRATION_BATCHES and calibration[0][0].shape[0] == digits.batch_size
    with pytest.raises(ConfigError, match="^calibration_data: got None"):
        compress(digits.model, plan)
    metrics = evaluate_plan(digits, space, params, tmp_path)  # the trial passes the calibration batches itself
    assert metrics["accuracy"] > 0.5 and (tmp_path / "packed.safetensors").is_file()
    for t in _sample(space, 4):
        assert t.distributions["fc1.act_bits"] == CategoricalDistribution((4, 8, 32))
        assert space.encode(space.decode(t.params)) == t.params


def test_encode_refuses_activations_outside_the_space(bert):
    model, tokens = bert
    space = CompressionSpace.from_model(
        model, example_input=tokens[:1], act_bits=(8, 32), groups=[{"name": "keys", "match": ["*.key"], "act_bits": []}]
    )
    plan = space.decode(space.uniform_params(8))
    layers = dict(plan.layers)
    layers["encoder.layer.0.attention.self.key"] += (ActivationQuantization(8),)
    with pytest.raises(
        ConfigError,
        match=r"plan.layers\['encoder.layer.0.attention.self.key'\].act_quant: got "
        r"'activation_quantization'; valid: no activation method",
    ):
        space.encode(CompressionPlan(layers))
    layers = dict(plan.layers)
    layers["pooler.dense"] += (ActivationQuantization(4),)
    with pytest.raises(ConfigError, match=r"plan.layers\['pooler.dense'\].act_bits: got 4; valid: 8, 32$"):
        space.encode(CompressionPlan(layers))
    with pytest.raises(ConfigError, match=r"structure: got 'head_pruning'; valid: no structure method"):
        space.encode(CompressionPlan({**plan.layers, QUERIES[0]: (HeadPruning(0.5),)}))


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"heads": (0.5, 1.0)}, "space.heads", "0 <= low <= high < 1 (fractions of attention heads"),
        ({"heads": (0.25, 0.5)}, "example_input", "space.heads traces"),
        ({"act_bits": (1, 8)}, "space.act_bits", "2..16 and 32"),
        ({"act_bits": (8.0,)}, "space.act_bits", "2..16 and 32"),
    ],
)
def test_bad_heads_and_act_bits(digits, kwargs, field, text):
    with pytest.raises(ConfigError) as exc:
        CompressionSpace.from_model(digits.model, **kwargs)
    assert exc.value.field == field and text in str(exc.value) and "\n" not in str(exc.value)


def test_act_bits_needs_the_model():
    with pytest.raises(ConfigError, match=r"^space.act_bits: got \[8\]; valid: a space built from its model"):
        CompressionSpace(list(ALL), act_bits=[8])


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"heads": [0.5, 1.0]}, "space.heads: got [0.5, 1.0]; valid: [low, high] with 0 <= low <= high < 1"),
        ({"act_bits": [8, 33]}, "space.act_bits: got [8, 33]; valid: a list of activation bit-widths from 2..16"),
        ({"act_bits": [8.5]}, "space.act_bits: got [8.5]; valid: a list of activation bit-widths"),
        ({"groups": [{"name": "g", "match": ["x"], "act_bits": [1]}]}, "space.groups[0].act_bits: got [1]"),
        ({"groups": [{"name": "g", "match": ["x"], "heads": 1.0}]}, "space.groups[0].heads: got 1.0"),
    ],
)
def test_heads_and_act_bits_config_errors_are_one_line(space, message):
    with pytest.raises(ConfigError) as exc:
        validate_config({"space": space})
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def test_config_builds_heads_and_act_bits(digits):
    config = validate_config({"target": "packed", "space": {"act_bits": [32, 8], "heads": [0.25, 0.5]}}).space
    assert config.act_bits == (8, 32) and config.heads == (0.25, 0.5)
    space = config.build(digits.model, example_input=digits.example_input)
    # no attention in the digits CNN: no heads; sparsity, bits, act_bits on conv2 and fc1
    assert not space.head_units and space.dimensions == 6
    described = space.describe()
    assert described["act_bits"] == [8, 32] and described["act_layers"] == ["conv2", "fc1"]
    assert described["heads"] == [0.25, 0.5] and described["head_units"] == []
