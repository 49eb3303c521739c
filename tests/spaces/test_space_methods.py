"""The per-layer quantization-method choice (``<layer>.quant``) of a space."""

from __future__ import annotations

import optuna
import pytest
import torch

from rayzor.compression import (
    BinaryQuantization,
    HalfPrecision,
    KMeansQuantization,
    MagnitudePruning,
    UniformQuantization,
    compress,
)
from rayzor.errors import ConfigError
from rayzor.search import validate_config
from rayzor.spaces import DEFAULT_METHODS, QUANT_METHODS, CompressionSpace, SpaceConfig
from tests.compression.tiny_models import trained_tiny_net

LAYERS = ["conv1", "conv2", "fc1", "fc2"]
METHODS = ("uniform_quantization", "kmeans_quantization", "binary_quantization", "half_precision")
CLASSES = {
    "uniform_quantization": UniformQuantization,
    "kmeans_quantization": KMeansQuantization,
    "binary_quantization": BinaryQuantization,
    "half_precision": HalfPrecision,
}

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_default_space_is_unchanged():
    space = CompressionSpace(LAYERS)
    assert space.methods == DEFAULT_METHODS and "methods" not in space.describe()
    assert SpaceConfig().methods == DEFAULT_METHODS
    assert set(METHODS) <= set(QUANT_METHODS) and "magnitude_pruning" not in QUANT_METHODS


@pytest.mark.parametrize("seed", range(6))
def test_conditional_bits_decode_encode_and_compress(seed):
    space = CompressionSpace(LAYERS, bits=(2, 4, 8, 32), methods=METHODS)
    assert space.dimensions == 3 * len(LAYERS) and space.describe()["methods"] == list(METHODS)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    trial = study.ask()
    space.suggest(trial)
    plan = space.decode(trial.params)
    for layer in LAYERS:
        method = trial.params[f"{layer}.quant"]
        assert (f"{layer}.bits" in trial.params) == (method in ("uniform_quantization", "kmeans_quantization"))
        methods = plan.layers[layer]
        assert methods[0] == MagnitudePruning(trial.params[f"{layer}.sparsity"])
        if trial.params.get(f"{layer}.bits") == 32:
            assert methods[1:] == ()  # fp32 whatever the method
        else:
            assert type(methods[1]) is CLASSES[method]
            if f"{layer}.bits" in trial.params:
                assert methods[1].bits == trial.params[f"{layer}.bits"]
    assert space.encode(plan) == trial.params
    out = compress(trained_tiny_net(), plan)
    assert torch.isfinite(out.model(torch.randn(2, 1, 8, 8))).all()


def test_tpe_accepts_the_conditional_space():
    space = CompressionSpace(LAYERS, bits=(2, 4, 32), methods=METHODS)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=3))
    for i in range(8):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, float(i))
    assert len(study.trials) == 8


@pytest.mark.parametrize(
    ("kwargs", "field", "text"),
    [
        ({"methods": ("bogus",)}, "space.methods", "kmeans_quantization"),
        ({"methods": ()}, "space.methods", "non-empty"),
        ({"methods": ("magnitude_pruning",)}, "space.methods", "uniform_quantization"),
        ({"methods": ("kmeans_quantization",)}, "space.bits", "up to 8"),
    ],
)
def test_bad_methods(kwargs, field, text):
    with pytest.raises(ConfigError) as exc:
        CompressionSpace(LAYERS, **kwargs)
    assert exc.value.field == field and text in str(exc.value)


def test_search_config_methods():
    config = validate_config(
        {"target": "packed", "space": {"methods": ["binary_quantization", "uniform_quantization"]}}
    )
    assert config.space.methods == ("binary_quantization", "uniform_quantization")
    with pytest.raises(ConfigError, match="space.methods"):
        validate_config({"space": {"methods": ["nope"]}})


def test_group_size_zero_is_the_per_channel_choice(digits):
    import optuna

    config = validate_config({"space": {"group_size": [0, 32], "bits": [4, 8, 32], "methods": ["gptq"]}})
    space = config.space.build(digits.model, target="onnxruntime")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        trial = study.ask()
        space.suggest(trial)
        plan = space.decode(trial.params)
        assert space.decode(space.encode(plan)) == plan
        for methods in plan.layers.values():
            seen |= {m.group_size for m in methods if hasattr(m, "group_size")}
    assert seen == {None, 32}  # 0 decodes to one scale per output channel


def test_method_options_fix_fields_of_the_chosen_method():
    options = {"uniform_quantization": {"symmetric": False, "clipping": "mse"}, "kmeans_quantization": {}}
    space = CompressionSpace(
        LAYERS,
        bits=[4, 32],
        methods=["uniform_quantization", "kmeans_quantization"],
        method_options=options,
        groups=[
            {"name": "fcs", "match": ["fc*"], "method_options": {"uniform_quantization": {"clipping": "percentile"}}}
        ],
    )
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        space.suggest(trial)
        plan = space.decode(trial.params)
        assert space.decode(space.encode(plan)) == plan
        for layer, methods in plan.layers.items():
            for m in methods:
                if isinstance(m, UniformQuantization):
                    # the group's options replace the space's (symmetric is then the config's default again)
                    expected = ("percentile", True) if layer.startswith("fc") else ("mse", False)
                    assert (m.clipping, m.symmetric) == expected
                    seen.add(layer)
    assert seen == set(LAYERS)
    assert space.describe()["method_options"]["conv1"] == {
        "uniform_quantization": {"clipping": "mse", "symmetric": False}
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nope": {}}, "keys from"),
        ({"gptq": {"bits": 3}}, "bits and group_size are searched"),
        ({"uniform_quantization": {"clipping": "x"}}, "uniform_quantization.clipping"),
        ({"uniform_quantization": 1}, "dictionary"),
    ],
)
def test_bad_method_options_are_refused_in_one_line(options, message):
    with pytest.raises(ConfigError, match="space.method_options") as info:
        validate_config({"space": {"method_options": options}})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_uniform_baselines_use_gptq_below_8_bits_where_offered():
    space = CompressionSpace(LAYERS, bits=[4, 8, 32], methods=["uniform_quantization", "awq", "gptq"])
    assert {space.uniform_params(4)[f"{n}.quant"] for n in LAYERS} == {"gptq"}
    assert {space.uniform_params(8)[f"{n}.quant"] for n in LAYERS} == {"uniform_quantization"}
    awq_only = CompressionSpace(LAYERS, bits=[4, 32], methods=["uniform_quantization", "awq"])
    assert awq_only.decode(awq_only.uniform_params(4)).layers["fc1"][0].method == "awq"


def test_uniform_baselines_take_the_largest_block_from_4_bits_and_the_smallest_at_2():
    space = CompressionSpace(
        LAYERS,
        bits=[2, 4, 8, 32],
        group_size=[0, 32, 128],
        groups=[{"name": "first", "match": ["fc1"], "bits": [4, 8, 32]}],  # nearest to 2 bits is 4 here
    )
    block = {
        b: {name: m.group_size for name, (m,) in space.decode(space.uniform_params(b)).layers.items()}
        for b in (2, 4, 8)
    }
    assert block[8] == block[4] == {n: 128 for n in LAYERS}
    # The block follows the bits each layer took, not the bits asked for.
    assert block[2] == {n: 128 if n == "fc1" else 32 for n in LAYERS}


@pytest.mark.parametrize("accuracy_level", [0, 4])
def test_int8_warm_start_takes_the_integer_gemm_layout_at_accuracy_level_4(digits, accuracy_level, tmp_path):
    import onnx

    from rayzor.compression import compress, export_deploy

    config = validate_config(
        {"accuracy_level": accuracy_level, "space": {"bits": [4, 8, 32], "group_size": [0, 32, 128]}}
    )
    space = config.space.build(digits.model, target="onnxruntime", accuracy_level=accuracy_level)
    plan = space.decode(space.uniform_params(8))
    linear = [n for n in plan.layers if n.startswith("fc")]
    assert linear  # the digits CNN's searched Linear layers
    blocks = {n: plan.layers[n][0].group_size for n in linear}
    # accuracy_level 4: one scale per channel, which onnxruntime runs on MatMulInteger; else int8 g128
    assert blocks == {n: None if accuracy_level == 4 else 128 for n in linear}
    assert space.decode(space.uniform_params(4)).layers[linear[0]][0].group_size == 128  # int4 keeps its block
    path = export_deploy(compress(digits.model, plan), digits.example_input, tmp_path / "m.onnx", accuracy_level=4)
    ops = [node.op_type for node in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") == (len(linear) if accuracy_level == 4 else 0)


def test_accuracy_level_outside_onnxruntime_levels_is_refused():
    with pytest.raises(ConfigError, match=r"accuracy_level.*7.*one of 0, 1, 2, 3, 4"):
        CompressionSpace(LAYERS, accuracy_level=7)
