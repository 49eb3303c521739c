"""Ray for a search: which cluster, starting or joining it, and what one trial asks of it."""

from __future__ import annotations

import logging
import os

from rayzor.cluster import (
    check_address,
    check_cluster_resources,
    derive_concurrency,
    trial_resources,
)
from rayzor.errors import ConfigError
from rayzor.search._config import SearchConfig

__all__ = ["QUIET_RAY_ENV", "check_ray_address", "ray_address", "start_ray", "trial_request", "tune_resources"]

#: Set to 1 (the CLI does, unless --verbose), Ray's own notices (token auth, ...) stay off the console.
QUIET_RAY_ENV = "RAYZOR_QUIET_RAY"


def ray_address(config: SearchConfig) -> tuple[str | None, str]:
    """The cluster to join and where that came from (for error messages)."""
    if config.address:
        return config.address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


#: What a search can join instead of a Ray Client address. Under ``ray://`` Tune runs its whole loop
#: (searcher, callbacks) in an actor on the cluster, a process where the search's MLflow writer, journal
#: and progress lines do not exist: the search failed there after its set-up (KeyError in a callback).
SEARCH_ADDRESS = (
    "HOST:PORT of the head's GCS (default port 6379) from a machine of the cluster, or auto; from outside the "
    "cluster, run the search on it with rayzor submit (a ray:// Ray Client address runs Tune's loop in the "
    "cluster, away from the search's MLflow writer)"
)


def check_ray_address(config: SearchConfig, client: bool = True) -> None:
    """Refuse an unreachable cluster address before anything starts.

    Args:
        config: Its ``address``, else ``RAY_ADDRESS``.
        client: Whether a ``ray://`` (Ray Client) address may be used: plain Ray tasks run over it,
            a Tune search does not (:data:`SEARCH_ADDRESS`).

    Raises:
        ConfigError: naming ``--address`` or ``RAY_ADDRESS``.
    """
    address, flag = ray_address(config)
    if not address:
        return
    if not client and address.strip().lower().startswith("ray://"):
        raise ConfigError(flag, address, SEARCH_ADDRESS)
    check_address(address, flag)


def start_ray(config: SearchConfig) -> bool:
    """Join ``config.address`` / ``RAY_ADDRESS``, else start a local Ray; True if we started it."""
    import ray

    if os.environ.get(QUIET_RAY_ENV) == "1":  # importing Ray set its loggers to INFO
        logging.getLogger("ray").setLevel(logging.ERROR)
    # Tune's new console output engine ignores verbose=0; the legacy one obeys.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return False
    address, _ = ray_address(config)
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def trial_request(config: SearchConfig) -> tuple[dict[str, float], int]:
    """One trial's Ray resources and the concurrency, checked against the running cluster.

    Raises:
        ConfigError: a request no node can ever meet (GPUs on a CPU cluster).
    """
    import ray

    request = trial_resources(config.cpus_per_trial, config.gpus_per_trial, config.resources_per_trial)
    available = ray.cluster_resources()
    check_cluster_resources(request, available)
    if "concurrency" in config.model_fields_set:
        return request, config.concurrency
    return request, derive_concurrency(request, available, config.trials)


def tune_resources(request: dict[str, float]) -> dict[str, float]:
    """A Ray resource request in ``tune.with_resources`` keys (``cpu``, ``gpu``, custom names)."""
    names = {"CPU": "cpu", "GPU": "gpu"}
    return {names.get(k, k): v for k, v in request.items()}
