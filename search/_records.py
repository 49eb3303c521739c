"""Trial records, and the search's Pareto front and hypervolume, kept incrementally."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayzor.search._config import objective_direction
from rayzor.search._pareto import hypervolume, pareto_mask
from rayzor.search._tags import TAG_ERROR, TAG_PLAN, TAG_TRIAL, TAG_TRIAL_ID

__all__ = [
    "FINISHED",
    "LATENCY_REFERENCE",
    "STOPPED",
    "Front",
    "TrialRecord",
    "front_of",
    "has_objectives",
    "objective_scale",
    "record_of",
    "search_hypervolume",
    "trial_label",
]

#: Status of a trial that ran to the end (its MLflow run ends FINISHED).
FINISHED = "FINISHED"
#: Status of a trial the scheduler stopped early (its MLflow run ends KILLED).
STOPPED = "STOPPED"
#: Latency reference of the hypervolume, as a multiple of the fp32 baseline's.
LATENCY_REFERENCE = 2.0


def trial_label(number: int) -> str:
    """The one spelling of a trial number, in progress lines, tables and run names: ``trial-0018``."""
    return f"trial-{number:04d}"


@dataclass
class TrialRecord:
    """One finished, stopped or failed trial, as logged in MLflow."""

    number: int
    run_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    plan_summary: str = ""
    error: str = ""
    trial_id: str = ""


def record_of(run: Any) -> TrialRecord:
    """The record of a trial's MLflow run (an ``mlflow.entities.Run``)."""
    tags = run.data.tags
    return TrialRecord(
        number=int(tags.get(TAG_TRIAL, -1)),
        run_id=run.info.run_id,
        status=run.info.status,
        params=dict(run.data.params),
        metrics={k: float(v) for k, v in run.data.metrics.items()},
        plan_summary=tags.get(TAG_PLAN, ""),
        error=tags.get(TAG_ERROR, ""),
        trial_id=tags.get(TAG_TRIAL_ID, ""),
    )


def has_objectives(record: TrialRecord, objectives: Sequence[str]) -> bool:
    """Whether a record carries every objective (an interrupted trial's run may carry none)."""
    return all(o in record.metrics for o in objectives)


def objective_scale(objective: str, value: float, baseline: Mapping[str, float]) -> float:
    """Maps an objective onto [0, 1] for minimisation, reference point 1.

    quality metric (accuracy, cosine) -> 1 - value: reference = 0.
    size_bytes -> size / fp32 state-dict size: reference = no compression.
    deploy_bytes -> deploy artifact size / fp32 ONNX file size: reference = no compression.
    latency_ms -> latency / (2 x fp32 latency): reference = twice as slow.
    """
    if objective in ("size_bytes", "deploy_bytes"):
        return value / baseline[objective]
    if objective == "latency_ms":
        return value / (LATENCY_REFERENCE * baseline["latency_ms"])
    return 1.0 - value


def search_hypervolume(
    rows: Sequence[Mapping[str, float]], objectives: Sequence[str], baseline: Mapping[str, float]
) -> float:
    """Hypervolume of trial metrics in the unit box of :func:`objective_scale`."""
    if not rows:
        return 0.0
    points = np.array([[objective_scale(o, row[o], baseline) for o in objectives] for row in rows], dtype=float)
    return hypervolume(points, ["minimize"] * len(objectives), [1.0] * len(objectives))


def front_of(records: Iterable[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    """The non-dominated FINISHED records, computed from scratch (in the given order)."""
    done = [r for r in records if r.status == FINISHED and has_objectives(r, objectives)]
    if not done:
        return []
    values = np.array([[r.metrics[o] for o in objectives] for r in done], dtype=float)
    mask = pareto_mask(values, [objective_direction(o) for o in objectives])
    return [r for r, keep in zip(done, mask) if keep]


class Front:
    """The Pareto front and hypervolume of a search's FINISHED trials, updated one record at a time.

    A record a front member dominates changes nothing and costs one pass over
    the front; only a record that joins the front drops the members it
    dominates and recomputes the hypervolume (of the front alone: dominated
    points add none). Dominance and non-finite rows follow
    :func:`~rayzor.search.pareto_mask`.

    Args:
        objectives: The search's objectives.
        baseline: The fp32 metrics :func:`objective_scale` needs.
    """

    def __init__(self, objectives: Sequence[str], baseline: Mapping[str, float]) -> None:
        self.objectives = tuple(objectives)
        self.baseline = dict(baseline)
        self._signs = tuple(-1.0 if objective_direction(o) == "maximize" else 1.0 for o in self.objectives)
        self._finished: dict[str, TrialRecord] = {}
        self._front: dict[str, tuple[TrialRecord, tuple[float, ...]]] = {}
        self._hypervolume = 0.0

    @property
    def members(self) -> list[TrialRecord]:
        """The non-dominated FINISHED records, in the order they were added."""
        return [record for record, _ in self._front.values()]

    @property
    def hypervolume(self) -> float:
        """Hypervolume of the FINISHED records (see :func:`search_hypervolume`)."""
        return self._hypervolume

    @property
    def finished(self) -> int:
        """How many FINISHED records were added."""
        return len(self._finished)

    def add(self, record: TrialRecord) -> bool:
        """Take one record (any status; keyed by ``run_id``); True when the front changed."""
        changed = self.discard(record.run_id)
        if record.status != FINISHED or not has_objectives(record, self.objectives):
            return changed
        self._finished[record.run_id] = record
        return self._insert(record) or changed

    def discard(self, run_id: str) -> bool:
        """Forget a record (e.g. a deleted run); True when the front changed."""
        if self._finished.pop(run_id, None) is None:
            return False
        if run_id not in self._front:
            return False
        # A member left: records it dominated may be back on the front.
        self._front.clear()
        for record in self._finished.values():
            self._insert(record, update=False)
        self._update_hypervolume()
        return True

    def _insert(self, record: TrialRecord, update: bool = True) -> bool:
        point = tuple(s * float(record.metrics[o]) for s, o in zip(self._signs, self.objectives))
        if not all(math.isfinite(v) for v in point):
            return False
        if any(_dominates(other, point) for _, other in self._front.values()):
            return False
        for run_id in [k for k, (_, other) in self._front.items() if _dominates(point, other)]:
            del self._front[run_id]
        self._front[record.run_id] = (record, point)
        if update:
            self._update_hypervolume()
        return True

    def _update_hypervolume(self) -> None:
        self._hypervolume = search_hypervolume([r.metrics for r in self.members], self.objectives, self.baseline)


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether minimised point ``a`` is no worse than ``b`` everywhere and better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))
