"""A user task: a small MLP on scikit-learn's bundled wine data, trained on the fly.

Everything ships with scikit-learn, so it runs offline. Use it from a config as
``task: examples.wine_task:make_task`` with the repository root on the path:

    rayzor space show examples/wine.yaml
    rayzor search examples/wine.yaml
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rayzor.tasks import Task

__all__ = ["WineMLP", "accuracy", "build_mlp", "make_task"]


class WineMLP(nn.Module):
    """13 standardised features -> ``hidden`` -> ``hidden`` -> 3 classes."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(13, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_mlp(hidden: int = 32) -> WineMLP:
    """The arch factory: rebuilds the untrained model, so a packed file loads anywhere."""
    return WineMLP(hidden)


def accuracy(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    """Top-1 accuracy (module-level, so the task pickles by reference into Ray)."""
    x, y = dataset.tensors
    return {"accuracy": (model(x).argmax(dim=1) == y).float().mean().item()}


def make_task(hidden: int = 32, epochs: int = 150, seed: int = 0) -> Task:
    """Wine classification: a seeded 60/20/20 split, features standardised on train.

    Args:
        hidden: Width of the two hidden layers.
        epochs: Full-batch Adam steps (178 samples: well under a second).
        seed: Seeds the split and the training.
    """
    from sklearn.datasets import load_wine

    bunch = load_wine()
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    idx = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    mean, std = x[idx["train"]].mean(0), x[idx["train"]].std(0) + 1e-6  # train statistics only
    x = (x - mean) / std
    data = {split: TensorDataset(x[i], y[i]) for split, i in idx.items()}

    torch.manual_seed(seed)
    model = build_mlp(hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = data["train"].tensors
    model.train()
    for _ in range(epochs):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        optimizer.step()
    model.eval()

    task = Task(
        name="wine",
        model=model,
        arch={"factory": "examples.wine_task:build_mlp", "kwargs": {"hidden": hidden}},
        data=data,
        evaluate=accuracy,
        example_input=data["val"].tensors[0][:1].clone(),
        batch_size=32,
    )
    task.baseline = {split: task.score(model, split) for split in ("val", "test")}
    return task
