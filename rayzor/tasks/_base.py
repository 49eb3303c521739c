"""The task abstraction: one model, its data and how to score it."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from rayzor._resolve import resolve
from rayzor.errors import ConfigError, RayzorError, TaskLoadError

__all__ = [
    "Task",
    "TaskLoadError",
    "create_task",
    "list_tasks",
    "register_task",
    "resolve_callable",
]

SPLITS = ("train", "val", "test")
#: Training batches post-training calibration reads: a few batches of the inputs the layers really see.
CALIBRATION_BATCHES = 4


@dataclass
class Task:
    """Everything a compression search needs to know about one model.

    A task is a plain, picklable object: the search puts it in the Ray object
    store once and every trial reads it from there, so nothing is retrained or
    reloaded per trial. ``evaluate`` and ``loss_fn`` must therefore be
    module-level functions (pickled by reference), not lambdas.

    Attributes:
        name: Short name, used in run names and artifact metadata.
        model: The trained fp32 baseline, in eval mode. Never modified.
        arch: How to rebuild the untrained architecture, as
            ``{"factory": "package.module:function", "kwargs": {...}}``; packed
            artifacts store it so that a loader can rebuild the model.
        data: Datasets by split: ``train`` (fine-tuning and calibration),
            ``val`` (what the search scores) and ``test`` (the final report of
            an export). Items are ``(input, target)`` pairs.
        evaluate: ``evaluate(model, dataset) -> {metric: value}``; must return
            at least ``metric``.
        example_input: One batch-1 input, for latency and export tracing.
        loss_fn: ``loss_fn(output, target) -> scalar``, for fine-tuning.
        metric: The primary quality metric (higher is better).
        baseline: The uncompressed model's metrics, by split then metric;
            :func:`create_task` fills it in when the factory leaves it empty.
        batch_size: Batch size for evaluation and fine-tuning loaders.
    """

    name: str
    model: nn.Module
    arch: Mapping[str, Any]
    data: Mapping[str, Dataset]
    evaluate: Callable[[nn.Module, Dataset], dict[str, float]]
    example_input: torch.Tensor
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy
    metric: str = "accuracy"
    baseline: dict[str, dict[str, float]] = field(default_factory=dict)
    batch_size: int = 64

    def __post_init__(self) -> None:
        missing = [s for s in SPLITS if s not in self.data]
        if missing:
            raise TaskLoadError(f"task {self.name!r}: data has no split(s) {missing}; a task needs {list(SPLITS)}")
        if "factory" not in self.arch:
            raise TaskLoadError(
                f"task {self.name!r}: arch needs a 'factory' ('package.module:function'), got {dict(self.arch)!r}"
            )

    def loader(self, split: str, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """A DataLoader over one split; shuffling is seeded so runs repeat."""
        if split not in self.data:
            raise ConfigError("split", split, list(self.data))
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(self.data[split], batch_size=self.batch_size, shuffle=shuffle, generator=generator)

    def calibration_batches(self, batches: int = CALIBRATION_BATCHES) -> list[Any]:
        """The first ``batches`` training batches, in order: what post-training calibration reads."""
        return list(itertools.islice(self.loader("train"), batches))

    def score(self, model: nn.Module, split: str = "val") -> dict[str, float]:
        """Metrics of ``model`` on one split, checked to contain ``metric``."""
        if split not in self.data:
            raise ConfigError("split", split, list(self.data))
        model.eval()
        with torch.inference_mode():
            metrics = self.evaluate(model, self.data[split])
        if self.metric not in metrics:
            raise TaskLoadError(
                f"task {self.name!r}: evaluate() returned {sorted(metrics)}, which lacks the primary metric {self.metric!r}"
            )
        return {k: float(v) for k, v in metrics.items()}


_TASKS: dict[str, Callable[..., Task]] = {}


def register_task(name: str) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Register a task factory under a short name (``digits``)."""

    def decorator(factory: Callable[..., Task]) -> Callable[..., Task]:
        _TASKS[name] = factory
        return factory

    return decorator


def list_tasks() -> list[str]:
    """Names of the registered tasks."""
    return sorted(_TASKS)


def resolve_callable(spec: str, *, field: str = "task") -> Callable[..., Any]:
    """Import ``package.module:function`` and return the function."""
    obj = resolve(
        spec,
        field,
        error=TaskLoadError,
        valid=f"a registered name ({', '.join(list_tasks())}) or 'package.module:function'",
    )
    if not callable(obj):
        raise TaskLoadError(f"{field}: {spec!r} is not callable")
    return obj


def create_task(spec: str, **options: Any) -> Task:
    """Build a task from a registered name or a ``package.module:function`` spec.

    Args:
        spec: ``digits`` (or another registered name), or the import path of a
            user factory that returns a :class:`Task`.
        **options: Keyword arguments for the factory (``task_options`` in a
            search config).

    Raises:
        ConfigError: ``spec`` is neither a registered name nor an import path.
        TaskLoadError: the factory does not import, fails, or returns
            something other than a :class:`Task`.
    """
    if spec in _TASKS:
        factory = _TASKS[spec]
    elif ":" in spec:
        factory = resolve_callable(spec)
    else:
        raise ConfigError("task", spec, f"a registered name ({', '.join(list_tasks())}) or 'package.module:function'")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ConfigError(
            "task_options", options, f"keyword arguments of {spec!r}{inspect.signature(factory)}"
        ) from exc
    try:
        task = factory(**options)
    except RayzorError:
        raise
    except Exception as exc:
        raise TaskLoadError(f"task: factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(task, Task):
        raise TaskLoadError(
            f"task: {spec!r} returned {type(task).__name__}; a task factory must return rayzor.tasks.Task"
        )
    if not task.baseline:
        # The search scores every plan against these; a user factory need not compute them.
        task.baseline = {split: task.score(task.model, split) for split in ("val", "test")}
    return task
