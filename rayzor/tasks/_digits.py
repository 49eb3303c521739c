"""The embedded default task: a small CNN on scikit-learn's bundled digits.

The 1,797 8x8 images ship inside scikit-learn, so nothing is downloaded; they
are cached on disk after the first load, which spares later processes
scikit-learn's import (1.3 s here). The split is a fixed seeded permutation
(60/20/20); the baseline is trained once and cached on disk under a key made
of every setting that changes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import TensorDataset

from rayzor.errors import ConfigError
from rayzor.tasks._base import Task, register_task
from rayzor.tasks._cache import cache_dir, save_cached

__all__ = ["DigitsCNN", "accuracy", "digits_task"]

# Bump when the training recipe changes in a way the settings do not show.
# 2: the initial weights are drawn from the seed too (1 drew them from whatever the global RNG held).
# 3: trained on one thread, whatever the caller's thread count.
_RECIPE_VERSION = 3


class DigitsCNN(nn.Module):
    """Two 3x3 convs, a 2x2 max-pool and a two-layer classifier head."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def accuracy(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    """Top-1 accuracy of ``model`` on a ``(images, labels)`` TensorDataset."""
    x, y = dataset.tensors
    logits = model(x)
    return {"accuracy": (logits.argmax(dim=1) == y).float().mean().item()}


#: The bundled dataset's cache file (not ``digits-*``: those are the trained baselines).
_DATA_FILE = "sklearn-digits.safetensors"


def _load_digits(cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: the 8x8 images (float32, 0-16) and their labels, from the cache when it has them."""
    path = cache_dir() / _DATA_FILE
    if cache and path.exists():
        try:
            stored = load_file(path)
            return stored["images"], stored["target"]
        except (SafetensorError, KeyError, OSError):
            pass  # unreadable (a disk full at write time, say): load and write it again
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)  # integers 0-16: exact in float32
    target = torch.tensor(bunch.target, dtype=torch.long)
    if cache:
        save_cached({"images": images, "target": target}, path)
    return images, target


def _load_split(seed: int, cache: bool = True) -> dict[str, TensorDataset]:
    images, target = _load_digits(cache)
    x = images.unsqueeze(1) / 16.0
    y = target
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    return {name: TensorDataset(x[idx], y[idx]) for name, idx in parts.items()}


def _train(model: nn.Module, train: TensorDataset, *, epochs: int, lr: float, seed: int) -> None:
    loader = torch.utils.data.DataLoader(
        train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # One thread, whatever the caller's: the order of a kernel's float sums follows the thread count, and
    # 30 epochs carry that last-bit difference into every weight (1e-4 here). A driver (2 threads) and a
    # trial worker (1) must train the same baseline; on one thread it costs about 0.5 s more, once per cache.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


@register_task("digits")
def digits_task(
    seed: int = 0,
    epochs: int = 30,
    lr: float = 3e-3,
    channels: tuple[int, int] = (16, 32),
    hidden: int = 64,
    cache: bool = True,
) -> Task:
    """The embedded default: :class:`DigitsCNN` on scikit-learn's digits.

    Args:
        seed: Seeds the split and the training.
        epochs: Training epochs of the baseline.
        lr: Adam learning rate of the baseline.
        channels: Output channels of the two convs.
        hidden: Width of the hidden linear layer.
        cache: Reuse (and write) the trained weights and the dataset in :func:`~rayzor.tasks.cache_dir`.
    """
    if epochs < 1:
        raise ConfigError("task_options.epochs", epochs, "an integer >= 1")
    if lr <= 0:
        raise ConfigError("task_options.lr", lr, "a float > 0")
    channels = tuple(int(c) for c in channels)
    if len(channels) != 2 or min(channels) < 1 or hidden < 1:
        raise ConfigError("task_options.channels/hidden", (channels, hidden), "two positive ints and a positive int")
    kwargs: dict[str, Any] = {"channels": list(channels), "hidden": hidden, "num_classes": 10}
    settings = {"seed": seed, "epochs": epochs, "lr": lr, **kwargs, "recipe": _RECIPE_VERSION}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    data = _load_split(seed, cache)
    weights = cache_dir() / f"digits-{key}.safetensors"
    # The seed fixes the initial weights as well as the batches, so every process trains the same baseline;
    # a forked RNG leaves the caller's global stream as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN(channels=channels, hidden=hidden)
        if cache and weights.exists():
            model.load_state_dict(load_file(weights))
            model.eval()
        else:
            # The first run's silent minute otherwise: the CLI shows rayzor's INFO lines as set-up phases.
            logging.getLogger(__name__).info(
                "training the digits baseline (first run%s)",
                f", cached in {weights.parent}" if cache else ", not cached",
            )
            _train(model, data["train"], epochs=epochs, lr=lr, seed=seed)
            if cache:
                save_cached(model.state_dict(), weights, settings)
    task = Task(
        name="digits",
        model=model,
        arch={"factory": "rayzor.tasks._digits:DigitsCNN", "kwargs": kwargs},
        data=data,
        evaluate=accuracy,
        example_input=data["val"].tensors[0][:1].clone(),
        batch_size=64,
    )
    task.baseline = {split: task.score(model, split) for split in ("val", "test")}
    return task
