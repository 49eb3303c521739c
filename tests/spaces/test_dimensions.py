"""Every sampled parameter is a declared dimension, and every count derives from the declarations."""

from __future__ import annotations

import optuna
import pytest

from rayzor.errors import ConfigError
from rayzor.search import SpaceConfig as SearchSpaceConfig
from rayzor.search import validate_config
from rayzor.spaces import CompressionSpace, Dimension, SpaceConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def space(digits):
    return CompressionSpace.from_model(
        digits.model,
        bits=(2, 4, 8, 32),
        methods=("uniform_quantization", "binary_quantization"),
        pruning=("magnitude", "random"),
        factorize=("lowrank",),
        act_bits=(8, 32),
        groups=[{"name": "fcs", "match": ["fc*"], "tie": True, "sparsity": 0.5}],
    )


def test_sampled_params_are_declared_dimensions(space):
    declared = {
        (f"{owner.prefix}.{d.name}", d.distribution) for owner in space.units for d in owner.dims if not d.fixed
    }
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
        seen |= {(name, trial.distributions[name]) for name in trial.params}
        assert space.decode(trial.params) == space.decode(space.encode(space.decode(trial.params)))
    assert seen == declared  # conditional ones (bits, rank_ratio) show up in some trials only
    assert space.dimensions == len({name for name, _ in declared})
    # factorize, rank_ratio, sparsity, prune, quant, bits, act_bits; the tied fcs' fixed sparsity is not counted
    assert space.layer_dimensions() == {"conv1": 7, "conv2": 7, "fc1": 6, "fc2": 6} and space.dimensions == 20


def test_fixed_dimensions_are_neither_sampled_nor_counted(space):
    fcs = next(u for u in space.units if u.prefix == "fcs")
    sparsity = next(d for d in fcs.dims if d.name == "sparsity")
    assert isinstance(sparsity, Dimension) and sparsity.fixed and sparsity.first == 0.5
    assert "fcs.sparsity" not in space.uniform_params(4)
    assert space.decode({})  # every dimension has a value left out of params: its first


def test_decode_refuses_a_value_outside_its_dimension(space):
    with pytest.raises(ConfigError, match=r"params\['conv1.prune'\]: got 'l0'; valid: 'magnitude_pruning'"):
        space.decode({"conv1.prune": "l0"})


def test_space_config_lives_in_spaces_and_validates_once():
    assert SearchSpaceConfig is SpaceConfig
    group = {"name": "k", "match": ["fc*"], "methods": ["kmeans_quantization"], "bits": [4, 16]}
    with pytest.raises(ConfigError) as info:
        validate_config({"space": {"groups": [group]}})  # a YAML config: the group by index
    assert info.value.field == "space.groups[0].bits" and "up to 8" in str(info.value)
    with pytest.raises(ConfigError) as info:
        CompressionSpace(["fc1", "fc2"], groups=[group])  # in code: the group by name
    assert info.value.field == "space.groups[k].bits" and info.value.value == [4, 16]
