"""Student architecture registry: the cnn, bert_layer_drop and factory families."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertModel

import rayzor.compression.students
from rayzor.compression import (
    Choice,
    CompressionPlan,
    ConfigError,
    IntRange,
    StageCNN,
    StudentFamily,
    UniformQuantization,
    check_student,
    compress,
    create_student,
    get_student_family,
    list_students,
    load_packed,
    register_student,
    save_packed,
)
from rayzor.tasks import DigitsCNN, SentenceEncoder, resolve_callable
from tests.compression.tiny_models import tiny_bert

DIGITS_ARCH = {"factory": "rayzor.tasks._digits:DigitsCNN", "kwargs": {"channels": [16, 32], "hidden": 64}}


def tiny_student(teacher: nn.Module, width: int = 8) -> nn.Module:
    """A user student factory: reads the teacher's classes, builds a small MLP."""
    num_classes = teacher.fc2.out_features
    return nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes))


def not_a_module(teacher: nn.Module) -> str:
    return "student"


def _rebuild(arch):
    arch = json.loads(json.dumps(arch))  # what a packed file stores
    return resolve_callable(arch["factory"], field="factory")(**arch["kwargs"])


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def digits():
    torch.manual_seed(0)
    return DigitsCNN().eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def bert():
    return tiny_bert(layers=4)


@pytest.fixture(scope="module")
def tokens():
    ids = torch.randint(1, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return torch.stack([ids, mask], dim=1)


# ------------------------------------------------------------------ registry


def test_registry_lists_families_and_refuses_unknown_names(digits):
    assert {"cnn", "bert_layer_drop", "factory"} <= set(list_students())
    with pytest.raises(ConfigError, match=r"student: got 'resnet'; valid: .*'bert_layer_drop', 'cnn', 'factory'"):
        create_student("resnet", digits)
    with pytest.raises(ConfigError, match="student"):
        get_student_family("nope")
    with pytest.raises(ConfigError, match="taken"):
        register_student("cnn")(StudentFamily)


# ----------------------------------------------------------------------- cnn


def test_cnn_params_for_digits(digits):
    params = get_student_family("cnn").params(digits)
    assert set(params) == {"width_mult.conv1", "width_mult.conv2", "width_mult.fc1", "blocks.conv1", "blocks.conv2"}
    assert params["width_mult.conv1"] == Choice((0.25, 0.5, 0.75, 1.0))
    assert params["blocks.conv2"] == IntRange(1, 2)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"width_mult.conv1": 0.25, "width_mult.conv2": 0.5, "width_mult.fc1": 0.75},
        {"blocks.conv1": 2, "blocks.conv2": 2, "width_mult.conv2": 0.25},
    ],
)
def test_cnn_student_matches_teacher_output_and_rebuilds_from_arch(digits, images, params):
    family = get_student_family("cnn")
    student = create_student("cnn", digits, **params)
    assert isinstance(student, StageCNN)
    check_student(student, digits, images)
    assert student(images).shape == digits(images).shape == (3, 10)
    rebuilt = _rebuild(family.arch(digits, **params))
    assert type(rebuilt) is StageCNN and _shapes(rebuilt) == _shapes(student)
    rebuilt.load_state_dict(student.state_dict())
    torch.testing.assert_close(rebuilt(images), student(images))


def test_cnn_width_and_depth_change_the_architecture(digits):
    base = create_student("cnn", digits)
    assert _n_params(base) == _n_params(digits)
    narrow = create_student("cnn", digits, **{"width_mult.conv2": 0.25})
    assert narrow.stages[1][0].out_channels == 8 and _n_params(narrow) < _n_params(base)
    thin_head = create_student("cnn", digits, **{"width_mult.fc1": 0.5})
    assert thin_head.hidden[0].out_features == 32 and _n_params(thin_head) < _n_params(base)
    deep = create_student("cnn", digits, **{"blocks.conv1": 2})
    assert len(deep.stages[0]) == 2
    assert _n_params(deep) == _n_params(base) + 16 * 16 * 9 + 16
    assert "stages.0.1.weight" in deep.state_dict()


def test_stage_cnn_at_full_width_computes_digits_cnn(digits, images):
    student = create_student("cnn", digits)
    rename = {"conv1": "stages.0.0", "conv2": "stages.1.0", "fc1": "hidden.0", "fc2": "classifier"}
    student.load_state_dict(
        {f"{rename[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in digits.state_dict().items()}
    )
    torch.testing.assert_close(student(images), digits(images))


@pytest.mark.parametrize(
    "params, field",
    [
        ({"width_mult.conv1": 0.0}, "width_mult.conv1"),
        ({"width_mult.fc1": 1.5}, "width_mult.fc1"),
        ({"blocks.conv2": 3}, "blocks.conv2"),
        ({"width_mult.fc2": 0.5}, "width_mult.fc2"),  # the classifier's width is the teacher's output
    ],
)
def test_cnn_refuses_bad_params(digits, params, field):
    with pytest.raises(ConfigError) as info:
        get_student_family("cnn").validate(digits, **params)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: got {next(iter(params.values()))!r}; valid: ")


def test_cnn_refuses_a_teacher_that_is_not_a_plain_cnn(bert):
    with pytest.raises(ConfigError, match=r"teacher: got 'BertModel'; valid: a plain CNN"):
        get_student_family("cnn").params(bert)


def test_cnn_student_survives_a_packed_round_trip(digits, images, tmp_path):
    params = {"width_mult.conv1": 0.5, "blocks.conv2": 2}
    student = create_student("cnn", digits, **params)
    out = compress(student, CompressionPlan({"stages.1.1": (UniformQuantization(4),)}))
    save_packed(out, tmp_path / "s.rzp", arch=get_student_family("cnn").arch(digits, **params))
    loaded, _ = load_packed(tmp_path / "s.rzp")
    torch.testing.assert_close(loaded(images), out.model(images), rtol=0, atol=0)


# ------------------------------------------------------------ bert_layer_drop


def test_bert_params(bert):
    params = get_student_family("bert_layer_drop").params(bert)
    assert params["layers"] == IntRange(1, 4)
    assert params["heads"] == IntRange(1, 4)
    assert set(params) == {"layers", "heads", "intermediate_ratio"}


def test_bert_kept_layers_are_copies_of_the_teacher_layers(bert, tokens):
    ids = tokens[:, 0]
    student = create_student("bert_layer_drop", bert, keep=[1, 3])
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    for i, j in enumerate([1, 3]):
        want = bert.encoder.layer[j].state_dict()
        for key, value in student.encoder.layer[i].state_dict().items():
            torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(student.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(student.pooler.dense.weight, bert.pooler.dense.weight)
    assert student.embeddings.word_embeddings.weight.data_ptr() != bert.embeddings.word_embeddings.weight.data_ptr()
    check_student(student, bert, ids)
    assert student(ids).last_hidden_state.shape == bert(ids).last_hidden_state.shape


def test_bert_keeping_every_layer_is_the_teacher(bert, tokens):
    ids = tokens[:, 0]
    student = create_student("bert_layer_drop", bert, layers=4)
    torch.testing.assert_close(student(ids).last_hidden_state, bert(ids).last_hidden_state)


def test_bert_layers_spread_like_distilbert():
    family = get_student_family("bert_layer_drop")
    teacher = BertModel(
        BertConfig(
            vocab_size=10,
            hidden_size=8,
            num_hidden_layers=12,
            num_attention_heads=2,
            intermediate_size=8,
            max_position_embeddings=8,
        )
    )
    assert family.keep_list(teacher, {"layers": 6}) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert family.keep_list(teacher, {}) == [0, 2, 4, 7, 9, 11]
    assert family.keep_list(teacher, {"layers": 2}) == [0, 11]
    assert family.keep_list(teacher, {"layers": 1}) == [0]


@pytest.mark.parametrize(
    "params, hint",
    [
        ({"keep": [0, 4]}, "4 is out of range"),
        ({"keep": [-1]}, "-1 is out of range"),
        ({"keep": [1, 1]}, "repeats"),
        ({"keep": []}, "non-empty"),
        ({"keep": [2, 0]}, "not increasing"),
        ({"keep": [0], "layers": 1}, "not both"),
    ],
)
def test_bert_refuses_bad_keep_lists(bert, params, hint):
    with pytest.raises(ConfigError, match=hint) as info:
        create_student("bert_layer_drop", bert, **params)
    assert info.value.field == "keep"
    assert str(info.value).startswith(f"keep: got {params['keep']!r}; valid: ")


@pytest.mark.parametrize(
    "params, field",
    [
        ({"layers": 5}, "layers"),
        ({"heads": 0}, "heads"),
        ({"intermediate_ratio": 0.0}, "intermediate_ratio"),
        ({"hidden": 32}, "hidden"),
    ],
)
def test_bert_refuses_bad_sizes(bert, params, field):
    with pytest.raises(ConfigError) as info:
        get_student_family("bert_layer_drop").validate(bert, **params)
    assert info.value.field == field


def test_bert_fewer_heads_and_narrower_ffn_copy_leading_slices(bert, tokens):
    ids = tokens[:, 0]
    student = create_student("bert_layer_drop", bert, keep=[0, 2], heads=2, intermediate_ratio=0.5)
    head = bert.encoder.layer[2].attention.self.attention_head_size  # 16: unchanged
    got, want = student.encoder.layer[1], bert.encoder.layer[2]
    assert got.attention.self.query.weight.shape == (2 * head, 64)
    torch.testing.assert_close(got.attention.self.key.weight, want.attention.self.key.weight[: 2 * head])
    torch.testing.assert_close(got.attention.self.value.bias, want.attention.self.value.bias[: 2 * head])
    torch.testing.assert_close(got.attention.output.dense.weight, want.attention.output.dense.weight[:, : 2 * head])
    assert got.intermediate.dense.weight.shape == (64, 64)
    torch.testing.assert_close(got.output.dense.weight, want.output.dense.weight[:, :64])
    torch.testing.assert_close(got.output.LayerNorm.weight, want.output.LayerNorm.weight)
    check_student(student, bert, ids)
    assert _n_params(student) < _n_params(create_student("bert_layer_drop", bert, keep=[0, 2]))


def test_sentence_encoder_student_rebuilds_through_a_packed_file(bert, tokens, tmp_path):
    teacher = SentenceEncoder(BertModel(bert.config, add_pooling_layer=False)).eval()
    family = get_student_family("bert_layer_drop")
    params = {"layers": 2, "heads": 3, "intermediate_ratio": 0.75}
    student = create_student("bert_layer_drop", teacher, **params)
    assert isinstance(student, SentenceEncoder) and student.encoder.pooler is None
    check_student(student, teacher, tokens)
    torch.testing.assert_close(
        student.encoder.encoder.layer[1].attention.output.LayerNorm.bias,
        teacher.encoder.encoder.layer[3].attention.output.LayerNorm.bias,
    )
    arch = family.arch(teacher, **params)
    assert arch["kwargs"]["wrapper"] == "rayzor.tasks._minilm:SentenceEncoder"
    assert _shapes(_rebuild(arch)) == _shapes(student)
    plan = CompressionPlan({"encoder.encoder.layer.1.attention.self.query": (UniformQuantization(4),)})
    out = compress(student, plan)
    save_packed(out, tmp_path / "b.rzp", arch=arch)
    loaded, _ = load_packed(tmp_path / "b.rzp")
    torch.testing.assert_close(loaded(tokens), out.model(tokens), rtol=0, atol=0)


def test_bert_family_refuses_a_cnn_teacher(digits):
    with pytest.raises(ConfigError, match="teacher: got 'DigitsCNN'"):
        get_student_family("bert_layer_drop").params(digits)


# ------------------------------------------------------------------- factory


def test_factory_family_builds_and_rebuilds_a_user_student(digits, images):
    family = get_student_family("factory")
    spec = "tests.compression.test_students:tiny_student"
    assert family.params(digits) == {}
    student = create_student("factory", digits, factory=spec, width=4)
    assert student[1].out_features == 4
    check_student(student, digits, images)
    with pytest.raises(ConfigError, match="teacher_arch"):
        family.arch(digits, factory=spec, width=4)
    arch = family.arch(digits, teacher_arch=DIGITS_ARCH, factory=spec, width=4)
    assert arch["factory"] == "rayzor.compression.students._factory:build_factory_student"
    assert _shapes(_rebuild(arch)) == _shapes(student)


@pytest.mark.parametrize(
    "params, field",
    [
        ({}, "factory"),
        ({"factory": "no_colon"}, "factory"),
        ({"factory": "tests.compression.test_students:tiny_student", "depth": 2}, "params"),
        ({"factory": "tests.compression.test_students:not_a_module"}, "factory"),
    ],
)
def test_factory_family_refuses_bad_specs(digits, params, field):
    with pytest.raises(ConfigError) as info:
        create_student("factory", digits, **params)
    assert info.value.field == field


# ------------------------------------------------------------- output check


def test_check_student_names_both_shapes(digits, images):
    wrong = StageCNN(1, [4], [1], [], 7, [4, 4])
    want = r"student output shape: got \(3, 7\); valid: the teacher's output shape \(3, 10\)"
    with pytest.raises(ConfigError, match=want):
        check_student(wrong, digits, images)
    flat = nn.Linear(10, 10)
    with pytest.raises(ConfigError, match=r"a model taking the teacher's input of shape \(3, 1, 8, 8\)"):
        check_student(flat, digits, images)


@pytest.mark.parametrize("name", ["StageCNN", "build_layer_drop_encoder", "build_factory_student"])
def test_factory_strings_of_older_packed_files_still_resolve(name):
    """Packed files name the student factories by the module that held them before the families got one each."""
    for old in (f"rayzor.compression._students:{name}", f"compression._students:{name}"):
        assert resolve_callable(old, field="factory") is getattr(rayzor.compression.students, name)


def test_bare_module_names_of_files_written_before_the_rayzor_namespace_still_resolve():
    assert resolve_callable("compression.tasks._digits:DigitsCNN", field="factory") is DigitsCNN
