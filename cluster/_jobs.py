"""``rayzor submit/status/stop``: thin wrappers over Ray's job submission API."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rayzor.cluster._connect import check_dashboard
from rayzor.errors import ConfigError, JobFailedError

__all__ = ["JobFailedError", "job_status", "stop_job", "submit_search"]

#: Runtime-env excludes: results and stores of local runs must not be uploaded.
_EXCLUDES = ["rayzor-results/", "mlruns/", "mlflow.db", ".git/", "__pycache__/", "*.onnx", "*.safetensors"]


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(check_dashboard(address))


def submit_search(
    config: str | Path,
    address: str,
    *,
    working_dir: str | Path | None = None,
    search_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    out: Callable[[str], None] = print,
) -> tuple[str, str]:
    """Submit ``rayzor search CONFIG`` as a Ray Job and (by default) stream its logs.

    The runtime env's ``working_dir`` (default: the config's folder) carries
    the config and the user's task code to the cluster, where it is the job's
    working directory and on ``sys.path`` of the driver and every trial.

    Args:
        config: YAML config, inside ``working_dir``.
        address: Dashboard address, ``http://HEAD:8265``.
        working_dir: Folder uploaded with the job.
        search_args: Extra ``rayzor search`` flags (e.g. ``["--trials", "8"]``).
        env: Environment variables of the job (e.g. ``MLFLOW_TRACKING_URI``).
        wait: Stream logs until the job ends; else return after submitting.
        out: Where log lines go.

    Returns:
        ``(job_id, status)``.

    Raises:
        ConfigError: missing config, config outside ``working_dir``, or an
            unreachable dashboard.
        JobFailedError: ``wait`` and the job did not succeed.
    """
    config = Path(config).resolve()
    if not config.is_file():
        raise ConfigError("CONFIG", str(config), "an existing YAML file")
    root = Path(working_dir).resolve() if working_dir else config.parent
    if not config.is_relative_to(root):
        raise ConfigError("--working-dir", str(root), f"a folder that contains {config}")
    client = _client(address)
    search = " ".join(
        [
            "python -m rayzor.search.cli search",
            shlex.quote(str(config.relative_to(root))),
            *map(shlex.quote, search_args or []),
        ]
    )
    # The driver runs from a private copy of the working dir: Ray may unpack the
    # same package again for trials on the driver's node, which replaces the
    # folder under a running driver (getcwd() then fails at the end of fit).
    entrypoint = f'RZ_DIR="$(mktemp -d)" && cp -r . "$RZ_DIR" && cd "$RZ_DIR" && {search}'

    job_id = client.submit_job(
        entrypoint=entrypoint,
        runtime_env={"working_dir": str(root), "excludes": _EXCLUDES, "env_vars": dict(env or {})},
    )
    out(f"submitted job {job_id}: {entrypoint}")
    if not wait:
        return job_id, str(client.get_job_status(job_id))
    asyncio.run(_stream(client, job_id, out))
    status = str(client.get_job_status(job_id))
    if status != "SUCCEEDED":
        raise JobFailedError(f"job {job_id} ended {status}: {client.get_job_info(job_id).message}")
    return job_id, status


async def _stream(client: Any, job_id: str, out: Callable[[str], None]) -> None:
    async for chunk in client.tail_job_logs(job_id):
        for line in chunk.rstrip("\n").splitlines():
            out(line)


def job_status(job_id: str, address: str) -> dict[str, Any]:
    """Status, entrypoint and message of a submitted job."""
    info = _job_info(_client(address), job_id)
    return {"job_id": job_id, "status": str(info.status), "entrypoint": info.entrypoint, "message": info.message}


def stop_job(job_id: str, address: str) -> str:
    """Ask Ray to stop a job; return its status afterwards."""
    client = _client(address)
    _job_info(client, job_id)
    client.stop_job(job_id)
    return str(client.get_job_status(job_id))


def _job_info(client: Any, job_id: str) -> Any:
    try:
        return client.get_job_info(job_id)
    except RuntimeError:
        ids = [j.submission_id for j in client.list_jobs() if j.submission_id]
        raise ConfigError("JOB", job_id, ", ".join(ids[-10:]) or "no jobs on this cluster yet") from None
