from __future__ import annotations

import dataclasses
import json
import pickle

import pytest

from rayzor.compression import (
    AWQ,
    GPTQ,
    STAGES,
    ActivationQuantization,
    BinaryQuantization,
    ChannelPruning,
    CompressionPlan,
    ConfigError,
    FinetuneConfig,
    HalfPrecision,
    HeadPruning,
    KMeansQuantization,
    LowRank,
    MagnitudePruning,
    MethodConfig,
    RandomPruning,
    SmoothQuant,
    TernaryQuantization,
    Tucker2,
    UniformQuantization,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)

# One valid example per registered method; a new method must add one here.
EXAMPLES = {
    "magnitude_pruning": MagnitudePruning(0.5),
    "uniform_quantization": UniformQuantization(4),
    "kmeans_quantization": KMeansQuantization(3),
    "binary_quantization": BinaryQuantization(),
    "ternary_quantization": TernaryQuantization(),
    "half_precision": HalfPrecision("bf16"),
    "low_rank": LowRank(rank_ratio=0.25),
    "tucker2": Tucker2(rank_ratio=0.5),
    "activation_quantization": ActivationQuantization(6, calibration="percentile"),
    "random_pruning": RandomPruning(0.4, seed=3),
    "channel_pruning": ChannelPruning(0.25, importance="l2"),
    "head_pruning": HeadPruning(0.5),
    "gptq": GPTQ(4, group_size=16),
    "awq": AWQ(3, group_size=16),
    "smoothquant": SmoothQuant(8),
}


def test_every_method_has_an_example():
    assert set(EXAMPLES) == set(list_methods())


@pytest.mark.parametrize("name", list_methods())
def test_method_contract(name):
    cfg = EXAMPLES[name]
    cls = get_method(name)
    assert type(cfg) is cls and cls.method == name and cls.stage in STAGES
    assert dataclasses.is_dataclass(cfg) and isinstance(cfg, MethodConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, dataclasses.fields(cfg)[0].name, 0)
    d = cfg.to_dict()
    assert d["method"] == name
    assert json.loads(json.dumps(d)) == d
    assert MethodConfig.from_dict(d) == cfg and hash(MethodConfig.from_dict(d)) == hash(cfg)
    with pytest.raises(ConfigError, match=f"{name}.bogus"):
        MethodConfig.from_dict({**d, "bogus": 1})
    required = [f.name for f in dataclasses.fields(cfg) if f.default is dataclasses.MISSING]
    if required:
        with pytest.raises(ConfigError, match=f"{name}.{required[0]}"):
            MethodConfig.from_dict({"method": name})
    # Every field is validated: a wrong type is refused, naming the method and field.
    for f in dataclasses.fields(cfg):
        with pytest.raises(ConfigError, match=f"{name}.{f.name}"):
            MethodConfig.from_dict({**d, f.name: "bogus-value"})
    # The flat settings view (MLflow params) rebuilds the method.
    plan = CompressionPlan({"fc1": (cfg,)})
    assert CompressionPlan.from_settings(plan.settings()) == plan


def test_numpy_scalars_are_normalised():
    np = pytest.importorskip("numpy")
    cfg = MagnitudePruning(np.float64(0.25))
    assert type(cfg.sparsity) is float and cfg == MagnitudePruning(0.25)
    assert type(UniformQuantization(np.int64(3)).bits) is int


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (lambda: MethodConfig.from_dict({"method": "bogus_method"}), "method", "bogus_method"),
        (lambda: get_method("nope"), "method", "nope"),
        (lambda: MagnitudePruning(1.2), "sparsity", "1.2"),
        (lambda: MagnitudePruning(-0.1), "sparsity", "-0.1"),
        (lambda: MagnitudePruning(1.0), "sparsity", "1.0"),
        (lambda: UniformQuantization(1), "bits", "1"),
        (lambda: UniformQuantization(33), "bits", "33"),
        (lambda: UniformQuantization(32), "bits", "32"),
        (lambda: UniformQuantization(4.0), "bits", "4.0"),
        (lambda: FinetuneConfig(epochs=-1), "epochs", "-1"),
        (lambda: FinetuneConfig(lr=0), "lr", "0"),
        (lambda: FinetuneConfig(batch_size=0), "batch_size", "0"),
        (lambda: CompressionPlan.from_dict({"version": 99, "layers": {}}), "version", "99"),
        (lambda: CompressionPlan({"fc1": MagnitudePruning(0.5)}), "fc1", "0.5"),
        (lambda: CompressionPlan({"fc1": (MagnitudePruning(0.5), MagnitudePruning(0.1))}), "fc1", "0.1"),
        (lambda: CompressionPlan.from_settings({"fc1": {"sparsty": 0.5}}), "fc1", "sparsty"),
        (lambda: CompressionPlan.from_json("{not json"), "plan", "{not json"),
    ],
)
def test_bad_input_raises_config_error(make, field, value):
    with pytest.raises(ConfigError) as exc:
        make()
    assert field in str(exc.value) and value in str(exc.value)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        get_method("nope")
    for name in list_methods():
        assert name in str(exc.value)


def test_register_rejects_duplicate_and_non_config():
    with pytest.raises(ConfigError, match="magnitude_pruning"):
        register_method(MagnitudePruning)
    with pytest.raises(ConfigError, match="config_cls"):
        register_method(int)


def test_list_methods_sorted_by_stage_then_name():
    names = list_methods()
    assert names == sorted(names, key=lambda n: (STAGES.index(get_method(n).stage), n))
    for stage in STAGES:
        assert list_methods(stage) == [n for n in names if get_method(n).stage == stage]
    assert list_methods("quantize")[-1] == "uniform_quantization"
    with pytest.raises(ConfigError, match="stage"):
        list_methods("prune")


@dataclasses.dataclass(frozen=True)
class _Scale(MethodConfig):
    """A test-only quantize-stage method (registered, then unregistered, by the tests below)."""

    method = "test_scale"
    stage = "quantize"

    factor: float = 0.5


@pytest.fixture
def scale_method():
    yield _Scale
    if "test_scale" in list_methods():
        unregister_method(_Scale)


def test_registered_method_is_listed_until_unregistered(scale_method):
    @register_method(scale_method)
    def _scale(module, weight, config, stats, /):
        return weight

    assert "test_scale" in list_methods("quantize") and get_method("test_scale") is scale_method
    assert MethodConfig.from_dict({"method": "test_scale", "factor": 0.25}) == scale_method(0.25)
    unregister_method(scale_method)
    assert "test_scale" not in list_methods()
    with pytest.raises(ConfigError, match="registered"):
        unregister_method(scale_method)


@pytest.mark.parametrize(
    "handler",
    [
        lambda module, config: None,  # a factorize handler's arguments
        lambda module, weight, config: None,  # one too few
        lambda module, weight, config, stats, extra: None,  # one too many
        lambda module, weight, *, config: None,  # config by keyword only
    ],
)
def test_handler_not_matching_its_stage_protocol_is_refused(scale_method, handler):
    with pytest.raises(ConfigError) as exc:
        register_method(scale_method)(handler)
    message = str(exc.value)
    assert "_Scale" in message and "<lambda>" in message  # names the handler
    assert "quantize handler (module, weight, config, stats)" in message  # and what the stage expects
    assert "test_scale" not in list_methods()


def test_handler_with_defaults_or_varargs_matches():
    for handler in (lambda module, weight, config, extra=None: weight, lambda *args: args[1]):

        @dataclasses.dataclass(frozen=True)
        class _Tmp(MethodConfig):
            method = "test_tmp"
            stage = "sparsify"

        register_method(_Tmp)(handler)
        unregister_method(_Tmp)


def test_by_stage():
    plan = _plan()
    assert plan.by_stage("sparsify") == {"conv1": MagnitudePruning(0.5), "conv2": MagnitudePruning(0.9)}
    assert list(plan.by_stage("quantize")) == ["conv1", "fc1"]
    assert plan.by_stage("factorize") == {}
    with pytest.raises(ConfigError, match="stage"):
        plan.by_stage("prune")


def _plan():
    return CompressionPlan(
        {
            "conv1": (UniformQuantization(4), MagnitudePruning(0.5)),  # given quantize-first
            "conv2": (MagnitudePruning(0.9),),
            "fc1": (UniformQuantization(8),),
            "fc2": (),
        },
        FinetuneConfig(epochs=2, lr=1e-2, batch_size=32, seed=3),
    )


def test_methods_sorted_by_stage():
    assert _plan().layers["conv1"] == (MagnitudePruning(0.5), UniformQuantization(4))


def test_json_round_trip_and_equality():
    plan = _plan()
    s = plan.to_json()
    again = CompressionPlan.from_json(s)
    assert again == plan and hash(again) == hash(plan) and again.to_json() == s
    assert len({plan, again}) == 1
    assert pickle.loads(pickle.dumps(plan)) == plan
    assert plan.to_dict()["version"] == CompressionPlan.FORMAT_VERSION == 1
    assert plan != CompressionPlan(dict(plan.layers))  # finetune differs


def test_plan_does_not_alias_caller_dict():
    layers = {"fc1": (MagnitudePruning(0.5),)}
    plan = CompressionPlan(layers)
    layers["fc2"] = ()
    assert list(plan.layers) == ["fc1"]


def test_settings_round_trip():
    plan = _plan()
    settings = plan.settings()
    assert settings == {
        "conv1": {"sparsity": 0.5, "bits": 4},
        "conv2": {"sparsity": 0.9, "bits": 32},
        "fc1": {"sparsity": 0.0, "bits": 8},
        "fc2": {"sparsity": 0.0, "bits": 32},
    }
    assert CompressionPlan.from_settings(settings, plan.finetune) == plan


def test_summary():
    text = _plan().summary()
    assert "conv1 s=0.50 b=4" in text and "conv2 s=0.90 b=32" in text and "finetune 2ep" in text
