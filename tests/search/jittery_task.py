"""A user task (loaded as ``tests.search.jittery_task:make_task``): digits whose evaluation takes a random
extra 0-0.4 s, drawn from the OS (no seed reaches it), so concurrent trials end in a different order each run.

``make_slow_once_task``: the same, and the search's first evaluation in a trial worker takes 5 s more, a
heavy tail: newer trials overtake it, and a reproducible search must hold a later trial's params back until it ends.
"""

from __future__ import annotations

import functools
import os
import random
import tempfile
import time

from rayzor.tasks import Task, create_task

_CLOCK = random.SystemRandom()
#: The extra time of the search's first evaluation in a trial worker (``make_slow_once_task``).
SLOW_SECONDS = 5.0


def evaluate_late(model, dataset, marker: str | None = None, driver: int = 0) -> dict[str, float]:
    delay = _CLOCK.uniform(0.0, 0.4)
    if marker is not None and os.getpid() != driver:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))  # only one process creates it
            delay += SLOW_SECONDS
        except FileExistsError:
            pass
    time.sleep(delay)
    x, y = dataset.tensors
    return {"accuracy": (model(x).argmax(dim=1) == y).float().mean().item()}


def make_task() -> Task:
    task = create_task("digits")
    task.evaluate = evaluate_late
    return task


def make_slow_once_task() -> Task:
    task = create_task("digits")
    marker = os.path.join(tempfile.mkdtemp(prefix="rayzor-jittery-"), "slow-once")
    task.evaluate = functools.partial(evaluate_late, marker=marker, driver=os.getpid())
    return task
