"""rayzor: distributed AutoML model-compression search.

The layers, lowest first (each imports only those before it):

- :mod:`rayzor.errors`: the exception hierarchy, one base.
- :mod:`rayzor.compression`: the engine; a plan in, a compressed model, a packed file and metrics out.
- :mod:`rayzor.tasks`: what a search evaluates: a trained model, its data splits and its metric.
- :mod:`rayzor.spaces`: a model's per-layer search space, sampled define-by-run by Optuna.
- :mod:`rayzor.cluster`: Ray clusters: address checks, trial resources, Ray Jobs, configs.
- :mod:`rayzor.search`: Ray Tune + Optuna search, Pareto front, MLflow tracking, export, the CLI.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rayzor")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"

__all__ = ["__version__"]
