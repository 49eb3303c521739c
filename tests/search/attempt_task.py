"""A user task (``tests.search.attempt_task:make_task``) whose evaluation always raises,
and appends one line per call to ``$RAYZOR_TEST_ATTEMPTS``: how often a trial's code ran."""

from __future__ import annotations

import os

from rayzor.tasks import Task, create_task


def record_attempt() -> None:
    """One line per raising call in ``$RAYZOR_TEST_ATTEMPTS`` (when set): Tune must not retry a raising trial."""
    path = os.environ.get("RAYZOR_TEST_ATTEMPTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")


def evaluate_and_fail(model, dataset) -> dict[str, float]:
    record_attempt()
    raise RuntimeError("this task always fails")


def make_task() -> Task:
    task = create_task("digits")  # its baseline is scored before evaluate is replaced
    task.evaluate = evaluate_and_fail
    return task
