"""A user task (loaded as ``tests.search.failing_task:make_task``) whose
evaluation raises for some plans, to check that failed trials are recorded
FAILED and the search goes on."""

from __future__ import annotations

from rayzor.tasks import Task, create_task
from tests.search.attempt_task import record_attempt


def evaluate_or_fail(model, dataset) -> dict[str, float]:
    if (model.conv1.weight == 0).float().mean() > 0.7:
        record_attempt()
        raise RuntimeError("conv1 too sparse for this test task")
    x, y = dataset.tensors
    return {"accuracy": (model(x).argmax(dim=1) == y).float().mean().item()}


def make_task() -> Task:
    task = create_task("digits")
    task.evaluate = evaluate_or_fail
    return task
