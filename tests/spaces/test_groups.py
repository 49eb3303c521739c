"""Declarative spaces: glob groups, tied dimensions, fixed values, exclusions, and their errors."""

from __future__ import annotations

import optuna
import pytest
from torch import nn

from rayzor.compression import CompressionPlan
from rayzor.errors import ConfigError
from rayzor.search import load_config
from rayzor.spaces import MAX_SPARSITY, CompressionSpace, GroupSpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.ModuleDict({k: nn.Linear(8, 8) for k in ("query", "key", "value")})
        self.ffn = nn.Linear(8, 8)


class Encoder(nn.Module):
    """Transformer-like names: encoder.layer.<i>.attention.<q|k|v>, encoder.layer.<i>.ffn, head."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Block() for _ in range(blocks))
        self.head = nn.Linear(8, 2)


ATTENTION = [f"encoder.layer.{i}.attention.{k}" for i in range(3) for k in ("query", "key", "value")]
FFN = [f"encoder.layer.{i}.ffn" for i in range(3)]


def _study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))


def _space(**kwargs) -> CompressionSpace:
    return CompressionSpace.from_model(Encoder(), **kwargs)


@pytest.mark.parametrize("seed", [0, 1])
def test_tied_group_shares_one_value_per_dimension(seed):
    space = _space(bits=(4, 8, 32), groups=[{"name": "attn", "match": ["encoder.layer.*.attention.*"], "tie": True}])
    # 9 attention layers -> 2 dims; embed, 3 ffn, head -> 2 dims each.
    assert space.dimensions == 2 + 2 * 5
    trial = _study(seed).ask()
    space.suggest(trial)
    assert {"attn.sparsity", "attn.bits"} <= set(trial.params)
    assert not any(k.startswith("encoder.layer.0.attention") for k in trial.params)
    assert {"embed.sparsity", "head.bits", "encoder.layer.2.ffn.sparsity"} <= set(trial.params)
    plan = space.decode(trial.params)
    settings = plan.settings()
    assert tuple(settings) == space.layers  # model order
    for layer in ATTENTION:
        assert settings[layer] == {"sparsity": trial.params["attn.sparsity"], "bits": trial.params["attn.bits"]}
    # plan -> params -> plan, and an enqueued plan replays exactly
    params = space.encode(plan)
    assert params == trial.params
    study = _study(9)
    study.enqueue_trial(params)
    replay = study.ask()
    space.suggest(replay)
    assert space.decode(replay.params) == plan
    described = space.describe()["groups"]
    assert described == [
        {
            "name": "attn",
            "tie": True,
            "layers": ATTENTION,
            "sparsity": [0.0, MAX_SPARSITY],
            "bits": [4, 8, 32],
            "methods": ["uniform_quantization"],
            "dimensions": 2,
        }
    ]


def test_untied_group_overrides_ranges_per_layer():
    space = _space(groups=[GroupSpec(name="ffn", match=("*.ffn",), sparsity=(0.5, 0.8), bits=(4, 8))])
    assert space.group_of == {layer: "ffn" for layer in FFN}
    for seed in range(5):
        trial = _study(seed).ask()
        space.suggest(trial)
        for layer in FFN:
            assert 0.5 <= trial.params[f"{layer}.sparsity"] <= 0.8
            assert trial.params[f"{layer}.bits"] in (4, 8)
        assert trial.params["head.bits"] in space.bits and "ffn.bits" not in trial.params
        assert space.encode(space.decode(trial.params)) == trial.params


def test_fixed_values_and_exclusions_are_not_searched():
    space = _space(
        exclude=["embed", "head"],
        groups=[{"name": "attn", "match": ["*.attention.*"], "sparsity": 0.5, "bits": 8, "tie": True}],
    )
    assert "embed" not in space.layers and "head" not in space.layers
    assert space.dimensions == 2 * len(FFN)
    assert space.layer_dimensions()["encoder.layer.0.attention.key"] == 0
    trial = _study().ask()
    space.suggest(trial)
    assert sorted(trial.params) == sorted(f"{layer}.{d}" for layer in FFN for d in ("sparsity", "bits"))
    settings = space.decode(trial.params).settings()
    assert set(settings) == set(ATTENTION + FFN)  # excluded layers stay uncompressed
    assert all(settings[layer] == {"sparsity": 0.5, "bits": 8} for layer in ATTENTION)
    assert space.describe()["exclude"] == ["embed", "head"]


def test_tied_group_with_methods_is_conditional():
    space = _space(
        groups=[
            {
                "name": "attn",
                "match": ["*.attention.*"],
                "tie": True,
                "bits": [4, 8],
                "methods": ["uniform_quantization", "ternary_quantization"],
            }
        ]
    )
    seen = set()
    for seed in range(12):
        trial = _study(seed).ask()
        space.suggest(trial)
        method = trial.params["attn.quant"]
        seen.add(method)
        # bits only for a method that takes them
        assert ("attn.bits" in trial.params) == (method == "uniform_quantization")
        plan = space.decode(trial.params)
        assert space.encode(plan) == trial.params
    assert seen == {"uniform_quantization", "ternary_quantization"}


def test_encode_refuses_a_plan_that_breaks_a_tie():
    space = _space(groups=[{"name": "ffn", "match": ["*.ffn"], "tie": True}])
    settings = {layer: {"sparsity": 0.1, "bits": 8} for layer in space.layers}
    settings["encoder.layer.1.ffn"] = {"sparsity": 0.2, "bits": 8}
    with pytest.raises(ConfigError, match="group 'ffn' is tied") as info:
        space.encode(CompressionPlan.from_settings(settings))
    assert info.value.field == "plan.layers['encoder.layer.1.ffn']"


# -- bad input ---------------------------------------------------------------------------


def test_glob_matching_nothing_names_it_and_close_layers():
    with pytest.raises(ConfigError) as info:
        _space(groups=[{"name": "attn", "match": ["encoder.layers.*.attention.query"]}])
    message = str(info.value)
    assert info.value.field == "space.groups[attn].match" and info.value.value == "encoder.layers.*.attention.query"
    assert "\n" not in message and "close layer names: encoder.layer." in message
    with pytest.raises(ConfigError, match="space.exclude: got 'haed'.*head"):
        _space(exclude=["haed"])


def test_layer_claimed_by_two_groups_names_both():
    with pytest.raises(ConfigError) as info:
        _space(groups=[{"name": "attn", "match": ["*.attention.*"]}, {"name": "queries", "match": ["*.query"]}])
    assert info.value.field == "space.groups[queries].match"
    assert "'encoder.layer.0.attention.query' is already in group 'attn'" in str(info.value)


@pytest.mark.parametrize(
    ("group", "field"),
    [
        ({"name": "head", "match": ["*.ffn"]}, "space.groups[head].name"),  # clashes with a layer's params
        (
            {"name": "k", "match": ["*.key"], "methods": ["kmeans_quantization"], "bits": [4, 16]},
            "space.groups[k].bits",
        ),
        ({"name": "k", "match": ["*.key"], "methods": ["nope"]}, "space.groups[k].methods"),
    ],
)
def test_bad_group_in_space(group, field):
    with pytest.raises(ConfigError) as info:
        _space(groups=[group])
    assert info.value.field == field


def test_duplicate_group_names():
    with pytest.raises(ConfigError, match=r"space.groups\[g\].name: got 'g'"):
        _space(groups=[{"name": "g", "match": ["*.ffn"]}, {"name": "g", "match": ["head"]}])


@pytest.mark.parametrize(
    ("group", "field", "shown"),
    [
        ({"name": "a", "match": ["*"], "sparsity": [0.6, 0.2]}, "space.groups[0].sparsity", "[0.6, 0.2]"),
        ({"name": "a", "match": ["*"], "sparsity": 0.99}, "space.groups[0].sparsity", "0.99"),
        ({"name": "a", "match": ["*"], "bits": [4, 33]}, "space.groups[0].bits", "[4, 33]"),
        ({"name": "a", "match": ["*"], "ranks": 2}, "space.groups[0].ranks", "known keys name, match, tie"),
        ({"name": "a", "match": []}, "space.groups[0].match", "[]"),
    ],
)
def test_bad_group_config_one_line_error(group, field, shown):
    with pytest.raises(ConfigError) as info:
        load_config(space={"groups": [group]})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{field}: got ") and shown in message


def test_yaml_config_builds_the_grouped_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "target: packed\nspace:\n  bits: [4, 8, 32]\n  exclude: [embed]\n  groups:\n"
        "    - {name: attn, match: ['encoder.layer.*.attention.*'], tie: true, sparsity: [0.0, 0.5]}\n"
        "    - {name: ffn, match: ['*.ffn'], bits: 8}\n"
    )
    cfg = load_config(path)
    space = cfg.space.build(Encoder())
    # head, the last layer, is left out by the config's default exclusions (no group names it)
    assert space.layers == tuple(n for i in range(3) for n in ATTENTION[3 * i : 3 * i + 3] + [FFN[i]])
    assert space.default_excluded == {"head": "last layer"}
    assert space.dimensions == 2 + len(FFN)
    # The config survives a dump/validate round trip (as a resumed search reloads it).
    assert load_config(**cfg.model_dump()) == cfg


def test_uniform_warm_start_stays_inside_group_ranges():
    from rayzor.search import warm_start_points

    space = _space(
        bits=(4, 8, 32),
        groups=[
            {"name": "attn", "match": ["*.attention.*"], "tie": True, "sparsity": [0.2, 0.9]},
            {"name": "ffn", "match": ["*.ffn"], "bits": [6, 16]},
        ],
    )
    points = warm_start_points(space, load_config(trials=10))
    assert [p["attn.bits"] for p in points] == [8, 4] and all(p["attn.sparsity"] == 0.2 for p in points)
    assert [p["encoder.layer.0.ffn.bits"] for p in points] == [6, 6]  # nearest of the group's own candidates
    for p in points:
        assert space.encode(space.decode(p)) == p  # each is a point the space can sample
    # Without groups: exactly "b bits everywhere".
    plain = _space(bits=(4, 8, 32))
    assert plain.uniform_params(8) == {
        k: v for layer in plain.layers for k, v in ((f"{layer}.sparsity", 0.0), (f"{layer}.bits", 8))
    }
