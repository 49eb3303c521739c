"""SearchConfig: YAML + flags, one-line errors for every bad field."""

from __future__ import annotations

import pytest

from rayzor.errors import ConfigError
from rayzor.search import SearchConfig, load_config


def test_defaults_are_the_embedded_digits_search():
    cfg = load_config()
    assert cfg == SearchConfig()
    assert cfg.task == "digits"
    assert cfg.objectives is None  # resolved per task: (its metric, deploy_bytes under target onnxruntime)
    three = load_config(objectives=["cosine", "deploy_bytes", "latency_ms"])
    assert three.directions == ["maximize", "minimize", "minimize"]
    # target onnxruntime (the default) starts from what MatMulNBits runs; packed from every bit-width
    assert cfg.target == "onnxruntime" and cfg.space.bits == (2, 4, 8, 32) and cfg.space.group_size == (32, 128)
    packed = load_config(target="packed")
    assert packed.space.bits == (2, 3, 4, 5, 6, 8, 16, 32) and packed.space.group_size == ()


def test_yaml_fields_and_flag_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trials: 7\nsampler: nsga2\nspace:\n  sparsity: [0.1, 0.5]\n  bits: [8, 4, 4]\n")
    cfg = load_config(path, trials=3, sampler=None)
    assert cfg.trials == 3  # the flag wins
    assert cfg.sampler == "nsga2"  # None means "flag not given"
    assert cfg.space.sparsity == (0.1, 0.5)
    assert cfg.space.bits == (4, 8)


@pytest.mark.parametrize(
    ("overrides", "field", "shown"),
    [
        ({"sampler": "foo"}, "sampler", "'foo'"),
        ({"trials": 0}, "trials", "0"),
        ({"concurrency": -1}, "concurrency", "-1"),
        ({"space": {"bits": [1, 4]}}, "space.bits", "[1, 4]"),
        ({"space": {"bits": [4, 33]}}, "space.bits", "33"),
        ({"space": {"sparsity": [0.5, 0.99]}}, "space.sparsity", "0.99"),
        ({"space": {"sparsity": [0.6, 0.2]}}, "space.sparsity", "0.6"),
        ({"space": {"sparsity": [-0.1, 0.2]}}, "space.sparsity", "-0.1"),
        ({"unknown_key": 1}, "unknown_key", "1"),
        ({"space": {"ranks": 1}}, "space.ranks", "1"),
        ({"objectives": ["accuracy"]}, "objectives", "accuracy"),
        ({"objectives": ["accuracy", "speed"]}, "objectives", "'speed'"),
        ({"objectives": ["size_bytes", "latency_ms"]}, "objectives", "'latency_ms'"),
        ({"objectives": ["accuracy", "size_bytes", "size_bytes"]}, "objectives", "'size_bytes'"),
        ({"finetune_epochs": -1}, "finetune_epochs", "-1"),
        ({"entropy": "gzip"}, "entropy", "'gzip'"),
    ],
)
def test_bad_field_gives_one_line_error(overrides, field, shown):
    with pytest.raises(ConfigError) as info:
        load_config(**overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{field}: got ")
    assert shown in message
    assert "valid:" in message


def test_error_lists_valid_options():
    with pytest.raises(ConfigError, match="'tpe', 'nsga2', 'random' or 'gp'"):
        load_config(sampler="foo")
    with pytest.raises(ConfigError, match="known keys task, task_options, target, accuracy_level, trials"):
        load_config(bogus=True)


@pytest.mark.parametrize(
    ("text", "shown"),
    [("trials: [\n", "valid YAML"), ("- 1\n- 2\n", "a YAML mapping")],
)
def test_bad_yaml_file(tmp_path, text, shown):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=shown):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="CONFIG: got .*nope.yaml.*an existing YAML file"):
        load_config(tmp_path / "nope.yaml")
