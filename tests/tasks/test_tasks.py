"""Tasks: the embedded digits task (split, cache, baseline) and loading user tasks."""

from __future__ import annotations

import copy
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from rayzor.errors import ConfigError
from rayzor.tasks import Task, TaskLoadError, create_task, digits_task, list_tasks
from tests.compression.tiny_models import FACTORY, tiny_net

N_DIGITS = 1797
SPLIT_SIZES = {"train": 1078, "val": 359, "test": 360}  # int(0.6 n), int(0.2 n), the rest
TINY_SPEC = "tests.tasks.test_tasks:make_tiny_task"


# -- a user task, loaded by its "module:function" spec ---------------------------


def top1(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    x, y = dataset.tensors
    return {"accuracy": (model(x).argmax(1) == y).float().mean().item()}


def loss_only(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    x, y = dataset.tensors
    return {"loss": nn.functional.cross_entropy(model(x), y).item()}


def _random_split(n: int, generator: torch.Generator) -> TensorDataset:
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator))


def make_tiny_task(n: int = 16, seed: int = 0, width: int = 8) -> Task:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data = {split: _random_split(n, g) for split in ("train", "val", "test")}
    return Task(
        name="tiny",
        model=tiny_net(width).eval(),
        arch={"factory": FACTORY, "kwargs": {"width": width}},
        data=data,
        evaluate=top1,
        example_input=data["val"].tensors[0][:1].clone(),
        batch_size=4,
    )


def failing_factory() -> Task:
    raise RuntimeError("dataset server unreachable")


# -- digits: cache and baseline ------------------------------------------------------


def test_digits_baseline_is_cached_and_reloaded(digits, _cache_dir):
    # First test to use the fixture after it trained (file order), so the file seen here
    # is the one training wrote, and no earlier cache hit can have rewritten it unnoticed.
    assert os.environ["RAYZOR_CACHE_DIR"] == _cache_dir
    files = sorted(Path(_cache_dir).glob("digits-*.safetensors"))
    assert len(files) == 1
    stat = files[0].stat()

    again = create_task("digits")

    assert sorted(Path(_cache_dir).glob("digits-*")) == files  # no new key, no leftover temp file
    after = files[0].stat()
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    ref, got = digits.model.state_dict(), again.model.state_dict()
    assert list(got) == list(ref)
    for name in ref:
        assert torch.equal(got[name], ref[name]), name
    assert not again.model.training
    assert again.baseline == digits.baseline


def test_digits_baseline_depends_on_the_seed_only(digits):
    # Initial weights and batches both come from the seed, and training runs on one thread: a process whose global
    # RNG is elsewhere and whose thread count differs (a trial worker runs on 1) trains the session's baseline, bit
    # for bit, and the caller's global stream and thread count are left where they were.
    threads = torch.get_num_threads()
    other = 1 if threads > 1 else 2
    torch.manual_seed(12345)
    expected_next = torch.rand(3)
    torch.manual_seed(12345)
    torch.set_num_threads(other)
    try:
        again = digits_task(cache=False)
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.rand(3), expected_next)
    for name, value in digits.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], value), name
    assert again.baseline == digits.baseline


def _all_rows(task: Task) -> set[tuple[bytes, int]]:
    return {row for dataset in task.data.values() for row in _rows(dataset)}


def test_digits_images_are_cached_as_scikit_learn_ships_them(digits, _cache_dir):
    # Later processes read the cache instead of importing scikit-learn; a broken file is written again.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    shipped = {
        (img.numpy().tobytes(), int(t))
        for img, t in zip(torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0, bunch.target)
    }
    assert _all_rows(digits) == shipped
    cached = Path(_cache_dir) / "sklearn-digits.safetensors"
    assert cached.exists()
    cached.write_bytes(b"not a safetensors file")
    again = create_task("digits")
    assert _all_rows(again) == shipped
    assert cached.stat().st_size > 1000
    for split, dataset in again.data.items():
        for got, expected in zip(dataset.tensors, digits.data[split].tensors):
            assert torch.equal(got, expected)


def test_rejected_options_write_nothing(digits, _cache_dir):
    before = sorted(Path(_cache_dir).glob("digits-*"))
    with pytest.raises(ConfigError):
        create_task("digits", epochs=0)
    assert sorted(Path(_cache_dir).glob("digits-*")) == before


# -- digits: split -----------------------------------------------------------------


def _rows(dataset: TensorDataset) -> list[tuple[bytes, int]]:
    """One hashable key per (image, label) item; all 1797 digits items are distinct."""
    x, y = dataset.tensors
    return [(img.numpy().tobytes(), int(t)) for img, t in zip(x, y)]


def test_digits_split_sizes_disjoint_and_complete(digits):
    assert {s: len(d) for s, d in digits.data.items()} == SPLIT_SIZES
    assert sum(SPLIT_SIZES.values()) == N_DIGITS
    rows = {s: _rows(d) for s, d in digits.data.items()}
    keys = {s: set(r) for s, r in rows.items()}
    assert all(len(keys[s]) == len(rows[s]) for s in rows)  # no item twice in a split
    assert not keys["train"] & keys["val"]
    assert not keys["train"] & keys["test"]
    assert not keys["val"] & keys["test"]
    assert len(keys["train"] | keys["val"] | keys["test"]) == N_DIGITS  # the whole data set
    x, y = digits.data["train"].tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_digits_split_depends_only_on_seed(digits):
    again = create_task("digits")  # cached: no retraining
    for split in ("train", "val", "test"):
        for a, b in zip(digits.data[split].tensors, again.data[split].tensors):
            assert torch.equal(a, b)
    # One epoch, uncached: only the splits matter here, and they depend on the seed alone.
    seed0, seed0_again, seed1 = (digits_task(seed, epochs=1, cache=False).data for seed in (0, 0, 1))
    for split in ("train", "val", "test"):
        assert torch.equal(seed0[split].tensors[0], digits.data[split].tensors[0])
        assert torch.equal(seed0[split].tensors[1], seed0_again[split].tensors[1])
        assert len(seed1[split]) == SPLIT_SIZES[split]
        assert set(_rows(seed1[split])) != set(_rows(seed0[split]))
    assert set().union(*(_rows(seed1[s]) for s in seed1)) == set().union(*(_rows(seed0[s]) for s in seed0))


def test_digits_baseline_recorded(digits):
    assert set(digits.baseline) == {"val", "test"}
    assert digits.baseline["val"]["accuracy"] >= 0.9
    assert digits.baseline["test"]["accuracy"] >= 0.9
    ref = copy.deepcopy(digits.model.state_dict())
    assert digits.score(digits.model, "val") == digits.baseline["val"]
    assert digits.score(digits.model, "test") == digits.baseline["test"]
    for name, tensor in digits.model.state_dict().items():
        torch.testing.assert_close(tensor, ref[name], rtol=0, atol=0)
    assert digits.arch == {
        "factory": "rayzor.tasks._digits:DigitsCNN",
        "kwargs": {"channels": [16, 32], "hidden": 64, "num_classes": 10},
    }
    assert digits.example_input.shape == (1, 1, 8, 8)


def test_score_rejects_unknown_split(digits):
    with pytest.raises(ConfigError, match="split.*'train'"):
        digits.score(digits.model, "nope")
    with pytest.raises(ConfigError, match="split"):
        digits.loader("nope")


def test_task_survives_pickle(digits):
    clone = pickle.loads(pickle.dumps(digits))
    assert clone.name == digits.name and clone.metric == digits.metric
    assert clone.baseline == digits.baseline and clone.arch == digits.arch
    assert clone.evaluate is digits.evaluate and clone.loss_fn is digits.loss_fn  # module-level, by reference
    x = digits.data["val"].tensors[0]
    with torch.inference_mode():
        torch.testing.assert_close(clone.model(x), digits.model(x), rtol=0, atol=0)
    for split in ("train", "val", "test"):
        for a, b in zip(clone.data[split].tensors, digits.data[split].tensors):
            assert torch.equal(a, b)
    assert clone.score(clone.model, "val") == digits.baseline["val"]


def _batches(loader) -> list[torch.Tensor]:
    return [y for _, y in loader]


def test_loader_shuffle_is_seeded(digits):
    a = _batches(digits.loader("train", shuffle=True, seed=3))
    b = _batches(digits.loader("train", shuffle=True, seed=3))
    c = _batches(digits.loader("train", shuffle=True, seed=4))
    plain = _batches(digits.loader("train"))
    assert [len(t) for t in a] == [len(t) for t in plain]
    assert len(a[0]) == digits.batch_size
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(torch.cat(a), torch.cat(c))
    assert not torch.equal(torch.cat(a), torch.cat(plain))
    torch.testing.assert_close(torch.cat(plain), digits.data["train"].tensors[1], rtol=0, atol=0)
    assert torch.equal(torch.cat(a).sort().values, torch.cat(plain).sort().values)


# -- create_task: bad input and user tasks -------------------------------------------


def test_unknown_task_name():
    assert "digits" in list_tasks()
    with pytest.raises(ConfigError) as info:
        create_task("no_such_task")
    assert info.value.field == "task"
    message = str(info.value)
    assert message.startswith("task:") and "'no_such_task'" in message and "digits" in message


def test_unimportable_module():
    with pytest.raises(TaskLoadError, match="no_such_module_xyz"):
        create_task("no_such_module_xyz:make")


def test_missing_attribute():
    with pytest.raises(TaskLoadError, match="no_such_factory"):
        create_task("tests.tasks.test_tasks:no_such_factory")


def test_factory_must_return_a_task():
    # json.dumps needs `obj`; given it, it returns a str, not a Task.
    with pytest.raises(TaskLoadError, match=r"'json:dumps' returned str; a task factory must return .*Task"):
        create_task("json:dumps", obj=[1, 2])
    with pytest.raises(TaskLoadError, match="returned str"):
        create_task("os:getcwd")


def test_factory_missing_required_argument_is_a_config_error():
    with pytest.raises(ConfigError, match="task_options") as info:
        create_task("json:dumps")
    assert info.value.field == "task_options" and info.value.value == {}


def test_unknown_task_option():
    with pytest.raises(ConfigError) as info:
        create_task("digits", nope=1)
    assert info.value.field == "task_options"
    assert "task_options" in str(info.value) and "'nope': 1" in str(info.value)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"epochs": 0}, "task_options.epochs"),
        ({"lr": 0.0}, "task_options.lr"),
        ({"hidden": 0}, "task_options.channels"),
    ],
)
def test_invalid_digits_options(options, field):
    with pytest.raises(ConfigError, match=field) as info:
        create_task("digits", **options)
    assert info.value.field.startswith(field)
    value = next(iter(options.values()))
    assert info.value.value == value or value in info.value.value


def test_user_task_from_spec():
    task = create_task(TINY_SPEC, n=12, seed=5)
    ref = make_tiny_task(n=12, seed=5)
    assert isinstance(task, Task) and task.name == "tiny"
    assert len(task.data["train"]) == 12
    for split in ("train", "val", "test"):
        for a, b in zip(task.data[split].tensors, ref.data[split].tensors):
            assert torch.equal(a, b)
    for name, tensor in ref.model.state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[name], tensor, rtol=0, atol=0)
    metrics = task.score(task.model, "val")
    assert set(metrics) == {"accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0
    clone = pickle.loads(pickle.dumps(task))  # user tasks travel through the object store too
    assert clone.score(clone.model, "val") == metrics
    with pytest.raises(ConfigError, match="task_options"):
        create_task(TINY_SPEC, epochs=3)


def test_create_task_fills_a_missing_baseline():
    assert make_tiny_task().baseline == {}  # the factory leaves it empty
    task = create_task(TINY_SPEC)
    assert set(task.baseline) == {"val", "test"}
    assert task.baseline["val"] == task.score(task.model, "val")


def test_task_missing_a_split():
    task = make_tiny_task()
    data = {k: v for k, v in task.data.items() if k != "test"}
    with pytest.raises(TaskLoadError, match=r"'tiny'.*\['test'\]"):
        Task(name="tiny", model=task.model, arch=task.arch, data=data, evaluate=top1, example_input=task.example_input)


def test_task_missing_arch_factory():
    task = make_tiny_task()
    with pytest.raises(TaskLoadError, match="factory"):
        Task(
            name="tiny",
            model=task.model,
            arch={"kwargs": {}},
            data=task.data,
            evaluate=top1,
            example_input=task.example_input,
        )


def test_evaluate_without_primary_metric():
    task = make_tiny_task()
    task.evaluate = loss_only
    with pytest.raises(TaskLoadError, match=r"\['loss'\].*'accuracy'"):
        task.score(task.model, "val")


def test_failing_factory_raises_task_load_error():
    with pytest.raises(TaskLoadError, match="dataset server unreachable"):
        create_task("tests.tasks.test_tasks:failing_factory")
