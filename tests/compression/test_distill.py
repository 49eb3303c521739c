from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from rayzor.compression import ConfigError, DistillConfig, distill, kd_loss, teacher_outputs
from rayzor.tasks import DigitsCNN


@pytest.fixture(autouse=True)
def _one_thread():
    # Two intra-op threads on two shared cores thrash (a 200-step run took 9x longer); one is enough here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 2.5]])
    y = torch.tensor([0, 2])
    temperature, alpha = 2.0, 0.7
    kl = ce = 0.0
    for srow, trow, label in zip(s.tolist(), t.tolist(), y.tolist()):
        ps, pt = _softmax(srow, temperature), _softmax(trow, temperature)
        kl += sum(q * math.log(q / p) for p, q in zip(ps, pt))
        ce += -math.log(_softmax(srow, 1.0)[label])
    expected = alpha * temperature**2 * kl / 2 + (1 - alpha) * ce / 2
    torch.testing.assert_close(kd_loss(s, t, y, temperature, alpha), torch.tensor(expected))
    # the two ends: plain cross-entropy, and a pure soft loss that ignores the labels
    torch.testing.assert_close(kd_loss(s, t, y, temperature, 0.0), nn.functional.cross_entropy(s, y))
    assert kd_loss(s, t, None, temperature, 1.0) == kd_loss(s, t, 1 - y, temperature, 1.0)
    assert float(kd_loss(t, t, None, temperature, 1.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": 0.0}, "distill.temperature"),
        ({"temperature": -1.0}, "distill.temperature"),
        ({"alpha": 1.5}, "distill.alpha"),
        ({"alpha": -0.1}, "distill.alpha"),
        ({"feature_weight": -1.0}, "distill.feature_weight"),
        ({"features": ("conv1", "conv1")}, "distill.features[0]"),
        ({"features": "conv1"}, "distill.features"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=rf"^{field.replace('[', '.').replace(']', '.')}: got"):
        DistillConfig(**kwargs)


def test_kd_loss_refuses_bad_temperature_and_alpha():
    s = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="^temperature: got 0"):
        kd_loss(s, s, torch.zeros(2, dtype=torch.long), 0, 0.5)
    with pytest.raises(ConfigError, match="^alpha: got 2"):
        kd_loss(s, s, torch.zeros(2, dtype=torch.long), 1.0, 2)


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))


def _nets(seed=0):
    torch.manual_seed(seed)
    return DigitsCNN(channels=(4, 8), hidden=16), DigitsCNN(channels=(8, 16), hidden=32).eval()


@pytest.mark.parametrize(
    ("budget", "field"),
    [({}, "steps"), ({"steps": 0}, "steps"), ({"epochs": 0}, "epochs"), ({"steps": 3, "epochs": 1}, "epochs")],
)
def test_budget_errors_before_training(budget, field):
    student, teacher = _nets()
    before = _state(student)
    with pytest.raises(ConfigError, match=rf"^{field}: got"):
        distill(student, teacher, _data(), **budget)
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k])


def test_missing_feature_module_refused_before_training():
    student, teacher = _nets()
    before = _state(student)
    with pytest.raises(ConfigError, match=r"^distill\.features\[1\]\.student: got 'conv3'.*conv1") as exc:
        distill(student, teacher, _data(), DistillConfig(features=(("conv1", "conv1"), ("conv3", "conv2"))), steps=2)
    assert "close names" in str(exc.value)
    with pytest.raises(ConfigError, match=r"^distill\.features\[0\]\.teacher: got 'fc9'"):
        distill(student, teacher, _data(), DistillConfig(features=(("fc1", "fc9"),)), steps=2)
    # shapes that no single width projection maps: a conv map onto a linear layer's output
    with pytest.raises(ConfigError, match=r"^distill\.features\[0\]: got \(\(4, 8, 8\), \(32,\)\)"):
        distill(student, teacher, _data(), DistillConfig(features=(("conv1", "fc1"),)), steps=2)
    for k, v in student.state_dict().items():
        assert torch.equal(v, before[k])


def test_teacher_logits_must_cover_the_dataset():
    student, teacher = _nets()
    with pytest.raises(ConfigError, match=r"^teacher_logits: got \(10, 10\)"):
        distill(student, teacher, _data(), steps=1, teacher_logits=torch.zeros(10, 10))
    with pytest.raises(ConfigError, match="^teacher: got None"):
        distill(student, None, _data(), steps=1)


def test_same_seed_same_weights_with_projected_features():
    config = DistillConfig(features=(("conv2", "conv2"), ("fc1", "fc1")), feature_weight=0.5)
    runs = []
    for seed in (3, 3, 4):
        student, teacher = _nets()
        runs.append(_state(distill(student, teacher, _data(), config, steps=6, lr=1e-2, batch_size=16, seed=seed)))
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_feature_matching_pulls_student_features_to_the_teacher():
    torch.manual_seed(0)
    teacher = DigitsCNN(channels=(8, 16), hidden=32).eval()
    student = DigitsCNN(channels=(8, 4), hidden=8)
    x = _data().tensors[0]

    def gap():
        with torch.no_grad():
            return float(nn.functional.mse_loss(student.conv1(x), teacher.conv1(x)))

    before = gap()
    distill(
        student,
        teacher,
        _data(),
        DistillConfig(alpha=0.0, features=(("conv1", "conv1"),), feature_weight=10.0),
        epochs=20,
        lr=1e-2,
        batch_size=16,
    )
    assert gap() < 0.2 * before


def test_teacher_outputs_and_precomputed_logits_follow_the_shuffle():
    student, teacher = _nets()
    data = _data()
    logits = teacher_outputs(teacher, data, batch_size=7)
    with torch.no_grad():
        torch.testing.assert_close(logits, teacher(data.tensors[0]))
    a = distill(copy.deepcopy(student), teacher, data, steps=8, lr=1e-2, batch_size=16)
    b = distill(copy.deepcopy(student), None, data, steps=8, lr=1e-2, batch_size=16, teacher_logits=logits)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])
    # logits in the wrong order train a different student: alignment matters and is kept
    c = distill(copy.deepcopy(student), None, data, steps=8, lr=1e-2, batch_size=16, teacher_logits=logits.flip(0))
    assert not torch.allclose(a.fc2.weight, c.fc2.weight, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    student, teacher = _nets()
    a = distill(copy.deepcopy(student), teacher, _data(), steps=5, lr=1e-2, batch_size=16)
    b = distill(copy.deepcopy(student), teacher, _data(), steps=5, lr=1e-2, batch_size=16, device="cuda")
    assert next(b.parameters()).device.type == "cpu"
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k], rtol=1e-3, atol=1e-4)


@pytest.mark.statistical
def test_distilled_student_beats_label_trained_student(digits):
    """Hinton et al.'s regularisation effect: with 60 labelled images, soft targets generalise better.

    Measured over 10 seeds: the gain in val accuracy was 0.064 to 0.123 (200 steps); 0.03 is asserted.
    """
    train = Subset(digits.data["train"], range(60))
    logits = teacher_outputs(digits.model, train)
    for seed in range(3):
        acc = {}
        for alpha in (0.9, 0.0):
            torch.manual_seed(seed)
            student = DigitsCNN(channels=(8, 16), hidden=32)
            distill(
                student,
                None,
                train,
                DistillConfig(alpha=alpha),
                steps=200,
                lr=3e-3,
                batch_size=32,
                seed=seed,
                teacher_logits=logits,
            )
            acc[alpha] = digits.score(student)["accuracy"]
        assert acc[0.9] > acc[0.0] + 0.03, (seed, acc)
