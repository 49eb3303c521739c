"""A benchmark task (``slow_tail_task:make_task``): digits whose scoring sometimes takes long.

One scoring in six sleeps 2 s, the others 0.05 s, drawn from the OS (no seed
reaches it): trial times with a heavy tail, as a real search has when some
plans fine-tune, calibrate or export far longer than others. With ``c``
trials at a time, a slow trial is overtaken by newer ones, which is when the
reproducible mode makes a suggestion wait (see ``benchmarks/system.py``).
"""

from __future__ import annotations

import random
import time

from torch import nn
from torch.utils.data import TensorDataset

from rayzor.tasks import Task, create_task

#: Share of scorings that take :data:`SLOW_SECONDS`; the rest take :data:`FAST_SECONDS`.
SLOW_SHARE = 1 / 6
SLOW_SECONDS = 2.0
FAST_SECONDS = 0.05
_CLOCK = random.SystemRandom()


def accuracy_after_a_while(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    time.sleep(SLOW_SECONDS if _CLOCK.random() < SLOW_SHARE else FAST_SECONDS)
    x, y = dataset.tensors
    return {"accuracy": (model(x).argmax(dim=1) == y).float().mean().item()}


def make_task() -> Task:
    task = create_task("digits")
    task.evaluate = accuracy_after_a_while
    return task
