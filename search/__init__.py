"""Search: Ray Tune + Optuna over compression plans, tracked in MLflow.

Run a search with :func:`run_search` (or ``rayzor search``), read it back with
:func:`load_search`, pick a point of its front with :func:`pick_run` and
export it with :func:`export_model`. The MLflow names a search writes are in
``rayzor.search._tags``.
"""

from __future__ import annotations

from typing import Any

from rayzor.search._config import (
    OBJECTIVES,
    SAMPLERS,
    SearchConfig,
    SpaceConfig,
    load_config,
    resolve_objectives,
    validate_config,
)
from rayzor.search._export import (
    EXPORT_FORMATS,
    ExportReport,
    SearchView,
    export_model,
    load_search,
    pick_run,
)
from rayzor.search._pareto import (
    Constraint,
    PickSpec,
    hypervolume,
    pareto_mask,
    parse_pick,
    pick,
    to_minimization,
)
from rayzor.search._records import STOPPED, Front, TrialRecord, search_hypervolume
from rayzor.search._resume import RESUME_FILE, load_resume_state
from rayzor.search._runner import SearchInterrupted, SearchResult, run_search, sync_search
from rayzor.search._sensitivity import SensitivityResult, drop_matrix, level_label, run_sensitivity
from rayzor.search._tracking import connect, resolve_tracking_uri, trial_runs
from rayzor.search._trial import evaluate_plan
from rayzor.search._tuner import warm_start_points

__all__ = [
    "EXPORT_FORMATS",
    "OBJECTIVES",
    "RESUME_FILE",
    "SAMPLERS",
    "STOPPED",
    "Constraint",
    "ExportReport",
    "Front",
    "PickSpec",
    "SearchConfig",
    "SearchInterrupted",
    "SearchResult",
    "SearchView",
    "SensitivityResult",
    "SizeBucketASHA",
    "SpaceConfig",
    "TrialRecord",
    "connect",
    "export_model",
    "hypervolume",
    "load_config",
    "load_resume_state",
    "load_search",
    "parse_pick",
    "pareto_mask",
    "pick",
    "pick_run",
    "resolve_objectives",
    "resolve_tracking_uri",
    "run_search",
    "sync_search",
    "run_sensitivity",
    "drop_matrix",
    "level_label",
    "evaluate_plan",
    "search_hypervolume",
    "size_bucket",
    "to_minimization",
    "trial_runs",
    "validate_config",
    "warm_start_points",
]

#: Public names whose module imports Ray Tune: loaded on first use, so ``import rayzor.search`` stays light.
_WITH_TUNE = {"SizeBucketASHA", "size_bucket"}


def __getattr__(name: str) -> Any:
    if name in _WITH_TUNE:
        from rayzor.search import _scheduler

        return getattr(_scheduler, name)
    raise AttributeError(f"module 'rayzor.search' has no attribute {name!r}")
