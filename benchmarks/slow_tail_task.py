"""A benchmark task (``slow_tail_task:make_task``): digits whose scoring sometimes takes long.

One scoring in six sleeps 2 s, the others 0.05 s, drawn from the OS (no seed
reaches it): trial times with a heavy tail, as a real search has when some
plans fine-tune, calibrate or export far longer than others. With ``c``
trials at a time, a slow trial is overtaken by newer ones, which is when the
reproducible mode makes a suggestion wait (see ``benchmarks/system.py``).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any

from rayzor.tasks import Task, create_task

#: Share of scorings that take :data:`SLOW_SECONDS`; the rest take :data:`FAST_SECONDS`.
SLOW_SHARE = 1 / 6
SLOW_SECONDS = 2.0
FAST_SECONDS = 0.05
_CLOCK = random.SystemRandom()


def _after_a_while(evaluate: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """The task's own scoring, after a sleep drawn from the heavy tail."""
    time.sleep(SLOW_SECONDS if _CLOCK.random() < SLOW_SHARE else FAST_SECONDS)
    return evaluate(*args)


def make_task() -> Task:
    task = create_task("digits")
    task.evaluate = functools.partial(_after_a_while, task.evaluate)
    return task
