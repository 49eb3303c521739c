"""The per-layer compression space: introspection, Optuna sampling, decode/encode."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from rayzor.compression import CompressionPlan, FinetuneConfig, MagnitudePruning, UniformQuantization, compress
from rayzor.errors import ConfigError
from rayzor.spaces import ALLOWED_BITS, MAX_SPARSITY, CompressionSpace, LayerInfo, inspect_layers

DIGITS_LAYERS = ["conv1", "conv2", "fc1", "fc2"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


class Nested(nn.Module):
    """Sequentials inside a Module, with layers the space must skip."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Sequential(nn.Conv1d(4, 4, 1), nn.ConvTranspose2d(4, 4, 2)),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(36, 10, bias=False), nn.LayerNorm(10))
        self.out = nn.Linear(10, 3)


def _trial(seed: int = 0) -> optuna.Trial:
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    return study.ask()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- introspection ---------------------------------------------------------------------


def test_inspect_digits_layers(digits):
    infos = inspect_layers(digits.model)
    assert [i.name for i in infos] == DIGITS_LAYERS
    modules = dict(digits.model.named_modules())
    for info in infos:
        module = modules[info.name]
        assert isinstance(info, LayerInfo)
        assert info.kind == type(module).__name__
        assert info.weight_shape == tuple(module.weight.shape)
        assert info.params == module.weight.numel()
    assert [i.kind for i in infos] == ["Conv2d", "Conv2d", "Linear", "Linear"]
    assert infos[0].weight_shape == (16, 1, 3, 3) and infos[0].params == 144
    assert infos[2].weight_shape == (64, 512) and infos[2].params == 64 * 512


def test_inspect_nested_model_uses_dotted_names():
    model = Nested()
    infos = inspect_layers(model)
    assert [i.name for i in infos] == ["features.0", "features.3.0", "head.1", "out"]
    assert [i.kind for i in infos] == ["Conv2d", "Conv1d", "Linear", "Linear"]
    modules = dict(model.named_modules())
    for info in infos:
        assert info.weight_shape == tuple(modules[info.name].weight.shape)
        assert info.params == modules[info.name].weight.numel()
    names = {i.name for i in infos}
    for skipped in ("features.1", "features.2", "features.3.1", "head.0", "head.2"):
        assert skipped in modules and skipped not in names


# -- the space ---------------------------------------------------------------------------


def test_from_model_dimensions(digits):
    space = CompressionSpace.from_model(digits.model)
    assert space.layers == tuple(DIGITS_LAYERS)
    assert space.dimensions == 2 * len(DIGITS_LAYERS)
    assert space.sparsity == (0.0, MAX_SPARSITY)
    assert set(space.bits) <= set(ALLOWED_BITS) and 32 in space.bits
    assert space.describe() == {
        "layers": DIGITS_LAYERS,
        "sparsity": [0.0, MAX_SPARSITY],
        "bits": list(space.bits),
        "dimensions": 8,
    }
    nested = CompressionSpace.from_model(Nested(), bits=(4, 8))
    assert nested.layers == ("features.0", "features.3.0", "head.1", "out")
    assert nested.dimensions == 8


@pytest.mark.parametrize(
    ("kwargs", "dims", "fixed"),
    [
        ({"sparsity": (0.3, 0.3)}, 4, {"sparsity": 0.3}),
        ({"bits": (8,)}, 4, {"bits": 8}),
        ({"sparsity": (0.3, 0.3), "bits": (8,)}, 0, {"sparsity": 0.3, "bits": 8}),
    ],
)
def test_fixed_dimensions_not_searched_but_decoded(digits, kwargs, dims, fixed):
    space = CompressionSpace.from_model(digits.model, **kwargs)
    assert space.dimensions == dims
    trial = _trial()
    space.suggest(trial)
    assert len(trial.params) == dims
    assert not any(name.endswith("." + key) for name in trial.params for key in fixed)
    settings = space.decode(trial.params).settings()
    assert list(settings) == DIGITS_LAYERS
    for layer in DIGITS_LAYERS:
        for key, value in fixed.items():
            assert settings[layer][key] == value
    assert space.encode(space.decode(trial.params)) == trial.params


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_suggest_decode_encode_through_optuna(digits, seed):
    space = CompressionSpace.from_model(digits.model, finetune=FinetuneConfig(epochs=1, lr=5e-4))
    trial = _trial(seed)
    assert space.suggest(trial) is None
    params = trial.params
    assert set(params) == {f"{layer}.{key}" for layer in DIGITS_LAYERS for key in ("sparsity", "bits")}
    for layer in DIGITS_LAYERS:
        assert 0.0 <= params[f"{layer}.sparsity"] <= MAX_SPARSITY
        assert params[f"{layer}.bits"] in space.bits
    plan = space.decode(params)
    assert isinstance(plan, CompressionPlan)
    assert plan.finetune == FinetuneConfig(epochs=1, lr=5e-4)
    assert plan.settings() == {
        layer: {"sparsity": params[f"{layer}.sparsity"], "bits": params[f"{layer}.bits"]} for layer in DIGITS_LAYERS
    }
    for layer in DIGITS_LAYERS:
        methods = plan.layers[layer]
        assert methods[0] == MagnitudePruning(params[f"{layer}.sparsity"])
        bits = params[f"{layer}.bits"]
        assert methods[1:] == (() if bits == 32 else (UniformQuantization(bits),))
    assert space.encode(plan) == params
    # The encoded params are what Optuna would replay for an enqueued plan.
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=9))
    study.enqueue_trial(space.encode(plan))
    replay = study.ask()
    space.suggest(replay)
    assert space.decode(replay.params) == plan


def test_plan_json_rebuilds_the_same_compressed_model(digits):
    reference = copy.deepcopy(digits.model)
    space = CompressionSpace.from_model(digits.model, finetune=FinetuneConfig(epochs=1, seed=3))
    trial = _trial(0)
    space.suggest(trial)
    plan = space.decode(trial.params)
    plan2 = CompressionPlan.from_json(plan.to_json())
    assert plan2 == plan and plan2.finetune.epochs == 1

    def build() -> dict[str, torch.Tensor]:
        # As search/_trial.py builds the fine-tuning loader.
        loader = DataLoader(
            digits.data["train"],
            batch_size=plan2.finetune.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(plan2.finetune.seed),
        )
        return _state(compress(digits.model, plan2, train_loader=loader, loss_fn=digits.loss_fn).model)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first, second = build(), build()
    finally:
        torch.set_num_threads(threads)

    assert list(first) == list(second)
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=0)
    # Fine-tuning ran: the un-compressed biases moved away from the baseline.
    assert not torch.equal(first["fc2.bias"], reference.fc2.bias)
    # Pruning held: each layer keeps at least round(sparsity * numel) zeros.
    for layer, s in plan.settings().items():
        weight = first[f"{layer}.weight"]
        assert int((weight == 0).sum()) >= round(s["sparsity"] * weight.numel())
    # The task's baseline model is never modified.
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(digits.model.state_dict()[name], tensor, rtol=0, atol=0)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"sparsity": (0.5, 0.99)}, "space.sparsity", [0.5, 0.99]),
        ({"sparsity": (0.6, 0.2)}, "space.sparsity", [0.6, 0.2]),
        ({"sparsity": (-0.1, 0.5)}, "space.sparsity", [-0.1, 0.5]),
        ({"bits": (1, 4)}, "space.bits", [1, 4]),
        ({"bits": (4, 33)}, "space.bits", [4, 33]),
        ({"bits": ()}, "space.bits", []),
    ],
)
def test_bad_space_arguments(kwargs, field, value):
    with pytest.raises(ConfigError) as info:
        CompressionSpace(DIGITS_LAYERS, **kwargs)
    assert info.value.field == field and info.value.value == value
    assert str(info.value).startswith(f"{field}: got {value!r}")


def test_empty_layers():
    with pytest.raises(ConfigError) as info:
        CompressionSpace([])
    assert info.value.field == "layers" and info.value.value == []
    assert str(info.value).startswith("layers: got []")
    with pytest.raises(ConfigError, match="layers"):
        CompressionSpace.from_model(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))


def test_encode_plan_missing_a_layer():
    space = CompressionSpace(DIGITS_LAYERS)
    plan = CompressionPlan.from_settings({"conv1": {"sparsity": 0.5, "bits": 4}, "fc2": {"bits": 8}})
    with pytest.raises(ConfigError) as info:
        space.encode(plan)
    assert info.value.field == "plan.layers" and info.value.value == ["conv1", "fc2"]
    assert "conv2" in str(info.value) and "fc1" in str(info.value)


def test_encode_plan_outside_fixed_dimension():
    space = CompressionSpace(DIGITS_LAYERS, bits=(8,))
    plan = CompressionPlan.from_settings({layer: {"sparsity": 0.5, "bits": 32} for layer in DIGITS_LAYERS})
    with pytest.raises(ConfigError, match="bits"):
        params = space.encode(plan)
        assert space.decode(params) == plan
