"""Search: Ray Tune + Optuna over compression plans, tracked in MLflow."""

from rayzor.search._config import OBJECTIVES, SAMPLERS, SearchConfig, SpaceConfig, load_config
from rayzor.search._export import ExportReport, SearchView, export_model, load_search, pick_run
from rayzor.search._pareto import hypervolume, parse_pick, pareto_mask, pick
from rayzor.search._runner import SearchResult, TrialRecord, run_search, search_hypervolume

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "ExportReport",
    "SearchConfig",
    "SearchResult",
    "SearchView",
    "SpaceConfig",
    "TrialRecord",
    "export_model",
    "hypervolume",
    "load_config",
    "load_search",
    "parse_pick",
    "pareto_mask",
    "pick",
    "pick_run",
    "run_search",
    "search_hypervolume",
]
