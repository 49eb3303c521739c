"""Per-trial resources: the Tune request, the derived concurrency, and checks
against what the cluster has, so that no trial queues forever."""

from __future__ import annotations

import math
from collections.abc import Mapping

from rayzor.errors import ConfigError

__all__ = ["check_cluster_resources", "derive_concurrency", "trial_resources"]

_FIELDS = {"CPU": "cpus_per_trial", "GPU": "gpus_per_trial"}


def trial_resources(cpus: float, gpus: float = 0.0, custom: Mapping[str, float] | None = None) -> dict[str, float]:
    """The resource request of one trial, in Ray's names (``CPU``, ``GPU``, custom)."""
    request = {"CPU": float(cpus), **{k: float(v) for k, v in (custom or {}).items()}}
    if gpus > 0:
        request["GPU"] = float(gpus)
    return request


def check_cluster_resources(request: Mapping[str, float], cluster: Mapping[str, float]) -> None:
    """Refuse a request that no node of the cluster can ever satisfy.

    Args:
        request: One trial's request (:func:`trial_resources`).
        cluster: ``ray.cluster_resources()``.

    Raises:
        ConfigError: naming the config field, e.g. ``gpus_per_trial`` on a
            cluster without GPUs.
    """
    for name, amount in request.items():
        have = float(cluster.get(name, 0.0))
        if amount > have:
            field = _FIELDS.get(name, f"resources_per_trial.{name}")
            raise ConfigError(field, amount, f"at most {have:g}: the cluster has {have:g} {name} in total")


def derive_concurrency(request: Mapping[str, float], cluster: Mapping[str, float], trials: int) -> int:
    """How many trials fit on the cluster at once, capped by the budget.

    The cluster-wide total over-counts when fractions of one resource sit on
    different nodes; Tune then just queues the extra trials.
    """
    fits = [math.floor(float(cluster.get(name, 0.0)) / amount + 1e-9) for name, amount in request.items() if amount > 0]
    return max(1, min([trials, *fits]))
