"""Early stopping for a multi-objective search: ASHA within size buckets.

Ray Tune's schedulers rank trials on one metric, and Optuna cannot prune a
multi-objective trial. In a compression search the cost objective
(``size_bytes``) is fixed by the plan before any training happens; only the
quality metric changes as a trial fine-tunes. So a trial is only compared
with trials of about the same size: each trial falls in a bucket of its
compression ratio (``bucket_width`` octaves wide, known at its first report),
and an independent ASHA (Li et al. 2020, "A System for Massively Parallel
Hyperparameter Tuning", https://arxiv.org/abs/1810.05934) runs inside every
bucket on the quality metric at each fine-tune epoch. A small model is never
stopped for being less accurate than a large one: it competes for its place
on the front only with its neighbours in size, which is what the Pareto front
is made of. The scalarisation is "quality at fixed size bucket".

Buckets have edges, and a trial near an edge has few neighbours; so a trial
ASHA would stop is kept running while its (quality, size) point is not
dominated by any other trial's point at the same epoch (``protect_front``):
ASHA prunes the dominated middle, the partial front always goes on.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

__all__ = ["BUCKET_KEY", "SizeBucketASHA", "size_bucket"]

#: Result key holding a trial's size bucket.
BUCKET_KEY = "size_bucket"


def size_bucket(size_bytes: float, baseline_bytes: float, width: float) -> int:
    """Index of the compression-ratio bucket of a trial: ``floor(log2(ratio) / width)``."""
    return math.floor(math.log2(baseline_bytes / max(size_bytes, 1.0)) / width)


class SizeBucketASHA(FIFOScheduler):
    """One :class:`~ray.tune.schedulers.AsyncHyperBandScheduler` per size bucket.

    Trials run first-in first-out (as with ASHA); a trial joins its bucket's
    ASHA at its first result carrying :data:`BUCKET_KEY`. Results without it
    (or without the metric) never stop a trial.

    Args:
        metric: The quality metric ASHA compares within a bucket.
        mode: ``max`` or ``min`` for ``metric``.
        max_t: Results (``training_iteration``) of a trial that runs to the end.
        grace_period: Results every trial reports before it can be stopped.
        reduction_factor: ASHA's eta: the top ``1/eta`` of a rung go on.
        protect_front: Keep a trial ASHA would stop while no other result at
            the same epoch dominates its (quality, ``size_bytes``) point.
    """

    def __init__(
        self,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int = 1,
        reduction_factor: float = 2,
        protect_front: bool = True,
    ) -> None:
        super().__init__()
        self._metric, self._mode = metric, mode
        self._protect = protect_front
        # (quality, size) of every result at each training_iteration, for the front protection
        self._points: dict[int, list[tuple[float, float]]] = {}
        self._rescued = 0
        self._max_t, self._grace_period, self._reduction_factor = max_t, grace_period, reduction_factor
        self._buckets: dict[int, AsyncHyperBandScheduler] = {}
        self._bucket_of: dict[str, int] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # metric and mode are ours; the searcher's lists are for Optuna

    @property
    def num_stopped(self) -> int:
        """Trials stopped early so far, over all buckets."""
        return sum(s._num_stopped for s in self._buckets.values()) - self._rescued

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        scheduler = self._scheduler_of(tune_controller, trial, result)
        if scheduler is None:
            return TrialScheduler.CONTINUE
        decision = scheduler.on_trial_result(tune_controller, trial, result)
        it = int(result.get("training_iteration", 0))
        if "size_bytes" not in result or it >= self._max_t:
            return decision  # the last result ends the trial anyway
        sign = 1.0 if self._mode == "max" else -1.0
        point = (sign * float(result[self._metric]), float(result["size_bytes"]))
        peers = self._points.setdefault(it, [])
        peers.append(point)
        if decision == TrialScheduler.STOP and self._protect and not _dominated(point, peers):
            self._rescued += 1
            return TrialScheduler.CONTINUE
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        key = self._bucket_of.pop(trial.trial_id, None)
        if key is not None:
            self._buckets[key].on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        key = self._bucket_of.pop(trial.trial_id, None)
        if key is not None:
            self._buckets[key].on_trial_remove(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"SizeBucketASHA: {len(self._buckets)} buckets, {self.num_stopped} trials stopped early"

    def _scheduler_of(self, tune_controller: Any, trial: Any, result: dict) -> AsyncHyperBandScheduler | None:
        key = self._bucket_of.get(trial.trial_id)
        if key is None:
            if BUCKET_KEY not in result:
                return None
            key = int(result[BUCKET_KEY])
            if key not in self._buckets:
                self._buckets[key] = AsyncHyperBandScheduler(
                    time_attr="training_iteration",
                    metric=self._metric,
                    mode=self._mode,
                    max_t=self._max_t,
                    grace_period=self._grace_period,
                    reduction_factor=self._reduction_factor,
                    brackets=1,
                )
            self._buckets[key].on_trial_add(tune_controller, trial)
            self._bucket_of[trial.trial_id] = key
        return self._buckets[key]


def _dominated(point: tuple[float, float], peers: list[tuple[float, float]]) -> bool:
    """Whether another (quality up, size down) point is at least as good in both and better in one."""
    q, size = point
    return any(pq >= q and ps <= size and (pq > q or ps < size) for pq, ps in peers)
