"""Search: Ray Tune + Optuna over compression plans, tracked in MLflow.

Run a search with :func:`run_search` (or ``rayzor search``), read it back with
:func:`load_search`, pick a point of its front with :func:`pick_run` and
export it with :func:`export_model`. The MLflow names a search writes are in
``rayzor.search._tags``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Every public name loads its module on first use (PEP 562): `import rayzor.search`,
# and so `rayzor --help`, stays free of torch, Ray and MLflow until a name is used.
if TYPE_CHECKING:
    from rayzor.search._browse import EXPERIMENT_NOTE, browse_hint, pareto_run_name, search_filter, search_note
    from rayzor.search._config import (
        OBJECTIVES,
        SAMPLERS,
        SearchConfig,
        SpaceConfig,
        load_config,
        resolve_objectives,
        validate_config,
    )
    from rayzor.search._deferred import DEFERRED_KEY, await_params, published_params
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
    from rayzor.search._plot import PlotLayout, pareto_figure, pareto_html, plot_layout
    from rayzor.search._records import STOPPED, Front, TrialRecord, search_hypervolume
    from rayzor.search._resume import RESUME_FILE, load_resume_state
    from rayzor.search._runner import SearchInterrupted, SearchResult, run_search, sync_search
    from rayzor.search._searcher import OrderedOptunaSearch
    from rayzor.search._sensitivity import SensitivityResult, drop_matrix, level_label, run_sensitivity
    from rayzor.search._tpe import UnivariateTPESampler
    from rayzor.search._tracking import connect, resolve_tracking_uri, trial_runs
    from rayzor.search._trial import evaluate_plan
    from rayzor.search._tuner import blind_trials, make_sampler, make_searcher, warm_start_points

__all__ = [
    "DEFERRED_KEY",
    "EXPERIMENT_NOTE",
    "EXPORT_FORMATS",
    "OBJECTIVES",
    "RESUME_FILE",
    "SAMPLERS",
    "STOPPED",
    "Constraint",
    "ExportReport",
    "Front",
    "OrderedOptunaSearch",
    "PickSpec",
    "PlotLayout",
    "SearchConfig",
    "SearchInterrupted",
    "SearchResult",
    "SearchView",
    "SensitivityResult",
    "SizeBucketASHA",
    "SpaceConfig",
    "TrialRecord",
    "UnivariateTPESampler",
    "await_params",
    "blind_trials",
    "browse_hint",
    "connect",
    "export_model",
    "hypervolume",
    "load_config",
    "load_resume_state",
    "load_search",
    "make_sampler",
    "make_searcher",
    "parse_pick",
    "pareto_figure",
    "pareto_html",
    "pareto_mask",
    "pareto_run_name",
    "pick",
    "pick_run",
    "plot_layout",
    "published_params",
    "resolve_objectives",
    "resolve_tracking_uri",
    "run_search",
    "sync_search",
    "run_sensitivity",
    "drop_matrix",
    "level_label",
    "evaluate_plan",
    "search_filter",
    "search_hypervolume",
    "search_note",
    "size_bucket",
    "to_minimization",
    "trial_runs",
    "validate_config",
    "warm_start_points",
]

#: Public name -> the private module that defines it.
_LAZY = {
    "OBJECTIVES": "rayzor.search._config",
    "SAMPLERS": "rayzor.search._config",
    "SearchConfig": "rayzor.search._config",
    "SpaceConfig": "rayzor.search._config",
    "load_config": "rayzor.search._config",
    "resolve_objectives": "rayzor.search._config",
    "validate_config": "rayzor.search._config",
    "EXPORT_FORMATS": "rayzor.search._export",
    "ExportReport": "rayzor.search._export",
    "SearchView": "rayzor.search._export",
    "export_model": "rayzor.search._export",
    "load_search": "rayzor.search._export",
    "pick_run": "rayzor.search._export",
    "Constraint": "rayzor.search._pareto",
    "PickSpec": "rayzor.search._pareto",
    "hypervolume": "rayzor.search._pareto",
    "pareto_mask": "rayzor.search._pareto",
    "parse_pick": "rayzor.search._pareto",
    "pick": "rayzor.search._pareto",
    "to_minimization": "rayzor.search._pareto",
    "STOPPED": "rayzor.search._records",
    "Front": "rayzor.search._records",
    "TrialRecord": "rayzor.search._records",
    "search_hypervolume": "rayzor.search._records",
    "RESUME_FILE": "rayzor.search._resume",
    "load_resume_state": "rayzor.search._resume",
    "SearchInterrupted": "rayzor.search._runner",
    "SearchResult": "rayzor.search._runner",
    "run_search": "rayzor.search._runner",
    "sync_search": "rayzor.search._runner",
    "SensitivityResult": "rayzor.search._sensitivity",
    "drop_matrix": "rayzor.search._sensitivity",
    "level_label": "rayzor.search._sensitivity",
    "run_sensitivity": "rayzor.search._sensitivity",
    "connect": "rayzor.search._tracking",
    "resolve_tracking_uri": "rayzor.search._tracking",
    "trial_runs": "rayzor.search._tracking",
    "evaluate_plan": "rayzor.search._trial",
    "warm_start_points": "rayzor.search._tuner",
    "blind_trials": "rayzor.search._tuner",
    "make_sampler": "rayzor.search._tuner",
    "make_searcher": "rayzor.search._tuner",
    "SizeBucketASHA": "rayzor.search._scheduler",
    "OrderedOptunaSearch": "rayzor.search._searcher",
    "DEFERRED_KEY": "rayzor.search._deferred",
    "await_params": "rayzor.search._deferred",
    "published_params": "rayzor.search._deferred",
    "UnivariateTPESampler": "rayzor.search._tpe",
    "EXPERIMENT_NOTE": "rayzor.search._browse",
    "browse_hint": "rayzor.search._browse",
    "pareto_run_name": "rayzor.search._browse",
    "search_filter": "rayzor.search._browse",
    "search_note": "rayzor.search._browse",
    "PlotLayout": "rayzor.search._plot",
    "pareto_figure": "rayzor.search._plot",
    "pareto_html": "rayzor.search._plot",
    "plot_layout": "rayzor.search._plot",
    "size_bucket": "rayzor.search._scheduler",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next lookup is a plain attribute
        return value
    raise AttributeError(f"module 'rayzor.search' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
