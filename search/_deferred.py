"""Deferred params: a reproducible search starts a trial before its params exist.

In reproducible mode trial ``k``'s params may only be asked once trials
``1..k-L`` ended (:class:`~rayzor.search._searcher.OrderedOptunaSearch`).
When a slow trial is still running, a searcher that answered "not yet"
(``None``) left the freed worker idle, and Tune keeps only one idle actor:
the other was stopped, and the next trial started a new process (5 to 6 s
of imports here, and a slower first trial). Instead the searcher hands Tune
a placeholder config (:data:`DEFERRED_KEY`: where the params will be
published); the trial starts on the reused actor and waits there, in
:func:`await_params`, until the driver asks Optuna in trial order and
publishes the params. The suggestions are the ones waiting would have made.

The params travel through Ray's GCS key-value store (the store Ray's own
libraries keep their metadata in): small JSON values, one key per trial,
under :data:`NAMESPACE`, deleted once the trial ended.
"""

from __future__ import annotations

import json
import time
from typing import Any

__all__ = [
    "DEFERRED_KEY",
    "NAMESPACE",
    "PARAMS_JSON",
    "PARAMS_WAIT",
    "await_params",
    "publish",
    "published_params",
    "trial_params",
    "withdraw",
]

#: The one key of a placeholder config: its value is the key the params are published under.
#: No ``.`` in it, so nothing takes it for a param of the space (those are ``unit.dimension``).
DEFERRED_KEY = "rayzor_deferred_params"
#: Result key of a deferred trial: the params it ran, as JSON (Tune's own config holds the placeholder).
PARAMS_JSON = "params_json"
#: Result key (and MLflow metric) of every trial: seconds it waited for its params (0 unless deferred).
PARAMS_WAIT = "params_wait_seconds"
#: The GCS key-value namespace of rayzor's deferred params.
NAMESPACE = "rayzor"
#: How often a waiting trial looks for its params: quickly at first, then every 50 ms at most.
_POLL_SECONDS = (0.002, 0.05)


def publish(key: str, params: dict[str, Any]) -> None:
    """Publish a deferred trial's params (the driver, once Optuna asked them)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, json.dumps(params), overwrite=True, namespace=NAMESPACE)


def withdraw(key: str) -> None:
    """Delete a deferred trial's params (the driver, once the trial ended: a retry can no longer need them)."""
    from ray.experimental import internal_kv

    if internal_kv._internal_kv_initialized():
        internal_kv._internal_kv_del(key, namespace=NAMESPACE)


def published_params(key: str) -> dict[str, Any] | None:
    """The params published under ``key``, or ``None`` while there are none (or no longer)."""
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(key, namespace=NAMESPACE)
    return None if value is None else dict(json.loads(value))


def await_params(key: str) -> dict[str, Any]:
    """Wait in the trial's worker until the params published under ``key`` are there, and return them.

    No timeout: the driver publishes them as soon as the older trials they
    depend on ended, and if the driver dies, Ray ends this worker with it.
    """
    pause, longest = _POLL_SECONDS
    while (params := published_params(key)) is None:
        time.sleep(pause)
        pause = min(pause * 2, longest)
    return params


def trial_params(config: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The params a Tune trial ran: its config's (``unit.dimension`` keys), or a deferred trial's as it reported them.

    A deferred trial that never reported (its worker was lost while it waited) has none.
    """
    if DEFERRED_KEY in config:
        return dict(json.loads(result[PARAMS_JSON])) if PARAMS_JSON in result else {}
    return {k: v for k, v in config.items() if "." in k}
