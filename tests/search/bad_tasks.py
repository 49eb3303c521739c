"""User task factories that are wrong in the ways a newcomer's first task is (loaded by spec in the CLI tests)."""

from __future__ import annotations

from torch import nn

from rayzor.tasks import Task, create_task


def not_a_task() -> dict[str, int]:
    return {"model": 1}


def raises() -> Task:
    raise RuntimeError("the data folder is missing")


def no_compressible_layers() -> Task:
    task = create_task("digits")
    task.model = nn.Sequential(nn.Flatten(), nn.ReLU())  # nothing with a weight to compress
    return task
