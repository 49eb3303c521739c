"""A user task (loaded as ``tests.search.jittery_task:make_task``): digits whose evaluation takes a random
extra 0-0.4 s, drawn from the OS (no seed reaches it), so concurrent trials end in a different order each run."""

from __future__ import annotations

import random
import time

from rayzor.tasks import Task, create_task

_CLOCK = random.SystemRandom()


def evaluate_late(model, dataset) -> dict[str, float]:
    time.sleep(_CLOCK.uniform(0.0, 0.4))
    x, y = dataset.tensors
    return {"accuracy": (model(x).argmax(dim=1) == y).float().mean().item()}


def make_task() -> Task:
    task = create_task("digits")
    task.evaluate = evaluate_late
    return task
