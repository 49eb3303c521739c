"""The joint space: student family, then its parameters, then the chosen model's per-layer dims."""

from __future__ import annotations

import optuna
import pytest

from rayzor.compression import CompressionPlan, check_student, create_student, get_student_family
from rayzor.errors import ConfigError
from rayzor.spaces import (
    FAMILY_KEY,
    TEACHER,
    CompressionSpace,
    StudentSpace,
    student_distributions,
    suggest_student_params,
)


@pytest.fixture(scope="module")
def joint(digits):
    teacher_space = CompressionSpace.from_model(digits.model, bits=(2, 4, 8, 32))
    return StudentSpace(teacher_space, digits.model, ["cnn"])


def _sample(space, n: int, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        study.tell(trial, 0.0)
    return study.trials


def test_student_dims_follow_the_sampled_student(joint, digits):
    trials = _sample(joint, 30)
    families = {t.params[FAMILY_KEY] for t in trials}
    assert families == {TEACHER, "cnn"}
    own = student_distributions("cnn", digits.model)
    for t in trials:
        p, d = t.params, t.distributions
        if p[FAMILY_KEY] == TEACHER:
            assert "conv1.sparsity" in p and not any(k.startswith(("student.w", "student.b", "cnn:")) for k in p)
            continue
        # the family's own parameters, with the distributions the family declares
        for name, dist in own.items():
            assert d[f"student.{name}"] == dist
        # then the per-layer dims of the student that those parameters build
        student = get_student_family("cnn").build(
            digits.model,
            **{k.removeprefix("student."): v for k, v in p.items() if k.startswith("student.") and k != FAMILY_KEY},
        )
        layers = CompressionSpace.from_model(student).layers
        assert {k.removeprefix("cnn:").rsplit(".", 1)[0] for k in p if k.startswith("cnn:")} == set(layers)
        assert "conv1.sparsity" not in p  # the teacher's dims are not sampled for a student
        assert d[f"cnn:{layers[0]}.bits"] == optuna.distributions.CategoricalDistribution((2, 4, 8, 32))


def test_decode_gives_the_student_plan(joint):
    for t in _sample(joint, 12, seed=1):
        choice = joint.resolve(t.params)
        assert isinstance(choice.plan, CompressionPlan)
        assert list(choice.plan.layers) == list(choice.space.layers)
        assert joint.decode(t.params) == choice.plan
        for layer, flat in choice.plan.settings().items():
            prefix = "" if choice.family == TEACHER else "cnn:"
            assert flat["sparsity"] == pytest.approx(t.params[f"{prefix}{layer}.sparsity"])


def test_warm_start_points_are_teacher_points(joint):
    assert joint.uniform_params(4)[FAMILY_KEY] == TEACHER
    assert joint.resolve(joint.uniform_params(4)).family == TEACHER


def test_bad_families_are_refused(digits):
    base = CompressionSpace.from_model(digits.model)
    with pytest.raises(ConfigError, match=r"students.families\[0\]: got 'mlp'; valid: .*cnn"):
        StudentSpace(base, digits.model, ["mlp"])
    with pytest.raises(ConfigError, match=r"students.families: got \[\]"):
        StudentSpace(base, digits.model, [])
    joint = StudentSpace(base, digits.model, ["cnn"], include_teacher=False)
    assert joint.choices == ("cnn",)
    with pytest.raises(ConfigError, match=r"student.family: got 'teacher'; valid: 'cnn'"):
        joint.resolve({FAMILY_KEY: TEACHER})


def test_sampled_student_params_build_a_student(digits):
    own = student_distributions("cnn", digits.model)
    assert own["width_mult.conv1"] == optuna.distributions.CategoricalDistribution((0.25, 0.5, 0.75, 1.0))
    assert own["blocks.conv2"] == optuna.distributions.IntDistribution(1, 2)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        trial = study.ask()
        params = suggest_student_params(trial, "cnn", digits.model)
        assert trial.distributions == {f"student.{k}": d for k, d in own.items()} and set(params) == set(own)
        check_student(create_student("cnn", digits.model, **params), digits.model, digits.example_input)
