"""The Tune callback that hands finished trials to the driver's MLflow writer.

It lives in its own module, at module level, so that Tune pickles it by
reference with the experiment state: a restored experiment then reaches the
tracker registered by the new driver, by key, not a stale copy of the old one.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from rayzor.search._tracker import TRACKERS

__all__ = ["TrackingCallback"]


class TrackingCallback(tune.Callback):
    """Forwards trial outcomes to ``TRACKERS[key]`` (which queues, never blocks)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # The first step of a restored experiment sees exactly the trials it restored.
        TRACKERS[self.key].known(trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        TRACKERS[self.key].started()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        TRACKERS[self.key].submit(trial, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        TRACKERS[self.key].submit(trial, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Trials that ended before a driver crash but were never logged (the
        # queue died with the driver) are restored by Tune without events.
        TRACKERS[self.key].reconcile(trials)
