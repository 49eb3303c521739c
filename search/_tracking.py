"""MLflow plumbing: the tracking URI, the search's parent run, trial child runs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rayzor.errors import ConfigError, RayzorError
from rayzor.search._browse import EXPERIMENT_NOTE
from rayzor.search._tags import ROLE_SEARCH, ROLE_TRIAL, TAG_NOTE, TAG_PARENT, TAG_ROLE

__all__ = ["connect", "latest_search_run", "log_params", "param_text", "resolve_tracking_uri", "trial_runs"]
_VALID_URIS = "http(s)://HOST:PORT of a running MLflow server, sqlite:///PATH, or another MLflow store URI"


def resolve_tracking_uri(uri: str | None) -> str:
    """The URI to use: ``uri``, else MLflow's own rules (``MLFLOW_TRACKING_URI``,
    else ``sqlite:///mlflow.db`` in the working directory).

    Relative local paths are made absolute here, because Ray trial workers run
    in other directories.
    """
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else uri
        return Path(path).resolve().as_uri()
    return uri


def _check_reachable(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ConfigError("tracking_uri", uri, f"{_VALID_URIS} (GET /health failed: {reason})") from None
    elif parsed.scheme == "sqlite":
        folder = Path(uri[len("sqlite:///") :]).parent
        if not folder.is_dir():
            raise ConfigError("tracking_uri", uri, f"{_VALID_URIS} (folder {folder} does not exist)")
    elif parsed.scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() != "true":
        raise ConfigError(
            "tracking_uri", uri, f"{_VALID_URIS}; MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE=true"
        )


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside a sqlite store (``mlflow.db.lock``), held while it is opened.

    MLflow creates and migrates a fresh sqlite schema on first use; two
    searches doing it at once race (``duplicate column name``). Other stores
    need no lock.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    with open(uri[len("sqlite:///") :] + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def connect(uri: str | None, experiment: str | None, *, create: bool = True) -> tuple[Any, str, str]:
    """Check the tracking store and return ``(client, tracking_uri, experiment_id)``.

    ``experiment=None`` opens the store alone (experiment id ``""``): run ids
    are global, a run is fetched without its experiment.

    Called in the driver before Ray starts: an unreachable store fails fast,
    and a fresh sqlite store is migrated here once, under a file lock,
    rather than raced by trials or by another search starting at once.

    Raises:
        ConfigError: the store is unreachable, or (``create=False``) the
            experiment does not exist.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(uri)
    _check_reachable(uri)
    if not create and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).exists():
        raise ConfigError(
            "tracking_uri", uri, "an existing MLflow store: run `rayzor search` first, or pass --tracking-uri"
        )
    try:
        with _store_lock(uri):  # schema creation and the experiment's, once, whoever comes first
            client = MlflowClient(tracking_uri=uri)
            if experiment is None:
                return client, uri, ""
            found = client.get_experiment_by_name(experiment)
            if found is None and create:
                created = client.create_experiment(experiment, tags={TAG_NOTE: EXPERIMENT_NOTE})
                found = client.get_experiment(created)
        if found is None:
            names = [e.name for e in client.search_experiments(max_results=50)]
            raise ConfigError(
                "--experiment",
                experiment,
                ", ".join(repr(n) for n in names) or "none yet: run `rayzor search` first",
            )
        experiment_id = found.experiment_id
        if create and not found.tags.get(TAG_NOTE):  # an experiment made elsewhere: describe it, once
            client.set_experiment_tag(experiment_id, TAG_NOTE, EXPERIMENT_NOTE)
    except MlflowException as exc:
        raise ConfigError("tracking_uri", uri, f"{_VALID_URIS} ({str(exc).splitlines()[0]})") from None
    return client, uri, experiment_id


def latest_search_run(client: Any, experiment_id: str, experiment: str) -> Any:
    """The most recent search (parent) run of an experiment."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise RayzorError(f"experiment {experiment!r} has no rayzor search yet: run `rayzor search` first")
    return runs[0]


def trial_runs(client: Any, experiment_id: str, parent_run_id: str) -> list[Any]:
    """Every trial (child) run of one search, oldest first."""
    runs = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_ROLE}` = '{ROLE_TRIAL}'",
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def param_text(value: Any) -> str:
    """A param as logged: lists and dicts as JSON, a fractional float to 4 significant digits
    (``0.4383``, not ``0.43829103948``; its integer digits are kept), anything else as ``str``.

    Params are for reading and filtering; the exact values a trial ran with
    are in its ``plan.json`` and its Tune config.
    """
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value)
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        digits = max(4, len(str(int(abs(value)))))
        return f"{value:.{digits}g}"
    return str(value)


def log_params(client: Any, run_id: str, params: Mapping[str, Any], metrics: Mapping[str, float] | None = None) -> None:
    """Log many params in batches (MLflow caps a batch at 100), as :func:`param_text` writes them.

    ``metrics`` (step 0, timestamped now) go in the first batch: one store
    transaction for a trial's params and results instead of two.
    """
    import time

    from mlflow.entities import Metric, Param

    items = [Param(str(k), param_text(v)) for k, v in params.items()]
    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()]
    for start in range(0, max(len(items), 1 if values else 0), 100):
        client.log_batch(run_id, params=items[start : start + 100], metrics=values if start == 0 else [])
