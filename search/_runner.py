"""Run a compression search: Ray Tune + OptunaSearch, tracked in MLflow."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from rayzor.compression import CompressionPlan, FinetuneConfig, state_dict_bytes
from rayzor.errors import ConfigError, RayzorError, TrackingError
from rayzor.tasks import Task, create_task
from rayzor.search._config import SearchConfig, objective_direction, quality_metric
from rayzor.search._pareto import hypervolume, pareto_mask
from rayzor.search._tracking import (
    ROLE_SEARCH,
    ROLE_TRIAL,
    TAG_PARENT,
    TAG_PARETO,
    TAG_PLAN,
    TAG_ROLE,
    connect,
    log_params,
    trial_runs,
)
from rayzor.search._trial import PACKED_NAME, run_trial
from rayzor.spaces import CompressionSpace

__all__ = ["RESUME_FILE", "SearchResult", "TrackingError", "TrialRecord", "load_resume_state", "make_sampler", "objective_scales",
           "run_search", "search_hypervolume"]

#: Status of a trial the scheduler stopped early (its MLflow run ends KILLED).
STOPPED = "STOPPED"
#: Artifact path of the packed model inside a trial run.
PACKED_ARTIFACT_DIR = "packed"
#: Latency reference of the hypervolume, as a multiple of the fp32 baseline's.
LATENCY_REFERENCE = 2.0


@dataclass
class TrialRecord:
    """One finished or failed trial, as logged in MLflow."""

    number: int
    run_id: str
    status: str
    params: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    plan_summary: str = ""
    error: str = ""
    trial_id: str = ""


@dataclass
class SearchResult:
    """What a search leaves behind (everything is also in MLflow)."""

    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    objectives: tuple[str, ...]
    trials: list[TrialRecord]
    pareto: list[TrialRecord]
    hypervolume: float
    baseline: dict[str, float]
    wall_seconds: float
    fit_seconds: float
    storage_path: str
    name: str = ""
    concurrency: int = 0
    logging_seconds: dict[str, float] = field(default_factory=dict)


def make_sampler(name: str, seed: int, trials: int) -> Any:
    """The Optuna sampler behind a ``sampler`` name (tpe, nsga2, random, gp)."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        # Few startup trials: searches here are short, and TPE learns from them.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=min(10, max(4, trials // 4)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=min(50, max(4, trials // 4)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(name)  # unreachable: SearchConfig validated the name


def objective_scale(objective: str, value: float, baseline: dict[str, float]) -> float:
    """Maps an objective onto [0, 1] for minimisation, reference point 1.

    quality metric (accuracy, cosine) -> 1 - value: reference = 0.
    size_bytes -> size / fp32 state-dict size: reference = no compression.
    latency_ms -> latency / (2 x fp32 latency): reference = twice as slow.
    """
    if objective == "size_bytes":
        return value / baseline["size_bytes"]
    if objective == "latency_ms":
        return value / (LATENCY_REFERENCE * baseline["latency_ms"])
    return 1.0 - value


def search_hypervolume(rows: Sequence[dict[str, float]], objectives: Sequence[str], baseline: dict[str, float]) -> float:
    """Hypervolume of trial metrics in the unit box of :func:`objective_scale`."""
    if not rows:
        return 0.0
    points = np.array([[objective_scale(o, row[o], baseline) for o in objectives] for row in rows], dtype=float)
    return hypervolume(points, ["minimize"] * len(objectives), [1.0] * len(objectives))


def _front(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    done = [r for r in records if r.status == "FINISHED"]
    if not done:
        return []
    values = np.array([[r.metrics[o] for o in objectives] for r in done], dtype=float)
    mask = pareto_mask(values, [objective_direction(o) for o in objectives])
    return [r for r, keep in zip(done, mask) if keep]


def compact_plan(plan: CompressionPlan) -> str:
    """One short cell per layer, ``"conv1 43%/4b"`` (``"fc 0%/3b kmeans"`` for other methods), for tables and tags."""
    cells = []
    for layer, flat in plan.settings().items():
        method = flat.get("quant")
        kind = "" if method in (None, "uniform_quantization") else f" {method.removesuffix('_quantization')}"
        rank = f" rank{flat['rank_ratio']:.2f}" if flat.get("rank_ratio") else ""
        if flat.get("factorize") not in (None, "low_rank"):  # e.g. " tucker2 rank0.30"
            rank = f" {flat['factorize']}{rank}"
        if flat.get("structure") == "channel_pruning":
            rank += f" ch-{flat['ratio']:.0%}"  # share of output channels removed
        if flat.get("prune") not in (None, "magnitude_pruning"):
            rank += f" {flat['prune'].removesuffix('_pruning')}"
        cells.append(f"{layer} {flat.get('sparsity', 0.0):.0%}/{flat.get('bits', 32)}b{kind}{rank}")
    return "  ".join(cells)


def warm_start_points(space: CompressionSpace, config: SearchConfig) -> list[dict[str, Any]]:
    """The first trials of a search with ``warm_start: uniform``.

    One plan per candidate bit-width, the same for every layer, at the lowest
    sparsity: the "int8 everywhere" baselines a user would try by hand. They
    seed the sampler with sane points, and the front is never worse than
    those uniform settings. Highest bit-width first (fp32 excluded), at most
    half of the budget. With ``warm_start: sensitivity``: the points
    :func:`run_search` derived from per-layer sensitivity probes on Ray
    (``space.warm_start``; a resumed search reads them from its state file).
    """
    if config.warm_start == "sensitivity":
        return list(space.warm_start)[: max(1, config.trials // 2)]
    if config.warm_start != "uniform" or "uniform_quantization" not in space.methods:
        return []
    points = []
    candidates = sorted((b for b in space.bits if b != 32), reverse=True)  # fp32 is the known baseline
    for bits in candidates[: config.trials // 2]:
        # within each group's own ranges (a group may fix its bits or raise its lowest sparsity)
        point = space.uniform_params(bits)
        if point not in points:
            points.append(point)
    return points


def _trial_number(trial: Any, fallback: int) -> int:
    # Tune's experiment_tag starts with the trial's 1-based creation index.
    try:
        return int(str(trial.experiment_tag).split("_", 1)[0])
    except (AttributeError, ValueError):
        return fallback


#: What the engine measures in every trial, beside the task's own metrics.
ENGINE_METRICS = ("size_bytes", "compression_ratio", "latency_ms", "weight_sparsity", "quality_drop", "params",
                  "nonzero_params", "flops", "macs", "bitops", "trial_seconds")
#: Trial result keys logged as tags of the child run (where the trial ran).
_TRIAL_TAGS = {"node_id": "rayzor.node_id", "device": "rayzor.device"}
TAG_TRIAL_ID = "rayzor.trial_id"
#: Tag of a trial that ran an enqueued warm-start plan; its value is the config's ``warm_start``.
TAG_WARM_START = "rayzor.warm_start"



@dataclass
class _Outcome:
    """What the writer needs of a finished trial, copied on Tune's event loop."""

    trial_id: str
    number: int
    status: str
    params: dict[str, Any]
    result: dict[str, Any]
    checkpoint: Any
    error_file: str | None


def _record_of(run: Any) -> TrialRecord:
    from rayzor.search._export import _record

    record = _record(run)
    record.trial_id = run.data.tags.get(TAG_TRIAL_ID, "")
    return record


class _Tracker:
    """Driver-side MLflow logging of trials: one writer, off Tune's event loop.

    Trials only report metrics and a checkpoint holding their packed file; the
    driver writes every MLflow run. One writer means no sqlite lock races and
    no MLflow import per worker; the packed file travels as a Tune checkpoint,
    so it reaches the driver from any node. Tune's callbacks only queue an
    :class:`_Outcome` (microseconds); a background thread does the HTTP-bound
    MLflow calls, so a slow tracking server never stalls trial scheduling.

    Child runs are keyed by Tune's trial id (tag ``rayzor.trial_id``): a
    resumed search finds the runs it logged before and never duplicates them.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, space: CompressionSpace,
                 config: SearchConfig, baseline: dict[str, float], progress: Callable[[str], None]) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment_id = experiment_id
        self.parent = parent_run_id
        self.space = space
        self.config = config
        self.baseline = baseline
        self.progress = progress
        self.quality = quality_metric(config.objectives)
        # The task's own metrics (accuracy, recall_at_10, ...) are logged too.
        self.baseline_metrics = tuple(k for k in baseline if k not in ("size_bytes", "latency_ms"))
        # The enqueued points, in order: Tune creates their trials first (numbers 1..n).
        self.warm_points = warm_start_points(space, config)
        self._records: dict[str, TrialRecord] = {}
        self._queued: set[str] = set()
        self.submit_seconds: list[float] = []
        self.write_seconds: list[float] = []
        self._error: BaseException | None = None
        for run in trial_runs(self.client, experiment_id, parent_run_id):
            record = _record_of(run)
            if record.trial_id:
                self._records[record.trial_id] = record
        self._queue: queue.Queue[_Outcome | frozenset[str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="rayzor-mlflow-writer", daemon=True)
        self._thread.start()

    @property
    def records(self) -> list[TrialRecord]:
        """Every logged trial, in trial-number order."""
        return sorted(self._records.values(), key=lambda r: r.number)

    def submit(self, trial: Any, status: str) -> None:
        """Queue one ended trial for logging (called on Tune's event loop)."""
        started = time.perf_counter()
        self._queued.add(trial.trial_id)
        self._queue.put(_Outcome(
            trial_id=trial.trial_id,
            number=_trial_number(trial, len(self._queued)),
            status=status,
            params={k: v for k, v in trial.config.items() if "." in k},
            result=dict(trial.last_result or {}),
            checkpoint=trial.checkpoint,
            error_file=trial.error_file,
        ))
        self.submit_seconds.append(time.perf_counter() - started)

    def reconcile(self, trials: Sequence[Any]) -> None:
        """Queue ended trials that were neither logged nor queued (restored ones),
        then drop runs of trials the experiment no longer has (see :meth:`_prune`)."""
        for trial in trials:
            status = {"TERMINATED": "FINISHED", "ERROR": "FAILED"}.get(trial.status)
            logged = self._records.get(trial.trial_id)
            if status and trial.trial_id not in self._queued and (logged is None or logged.status != status):
                self.submit(trial, status)
        self._queue.put(frozenset(t.trial_id for t in trials))

    def close(self) -> None:
        """Log everything queued, stop the writer, and raise what it hit."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise TrackingError(f"logging trials to MLflow failed: {error}") from error

    def _drain(self) -> None:
        while (outcome := self._queue.get()) is not None:
            started = time.perf_counter()
            try:
                if isinstance(outcome, frozenset):
                    self._prune(outcome)
                    continue
                self._write(outcome)
            except Exception as exc:  # noqa: BLE001 - reported by close(), the search goes on
                self._error = self._error or exc
            self.write_seconds.append(time.perf_counter() - started)

    def _prune(self, known: frozenset[str]) -> None:
        """Delete child runs of trials the Tune experiment does not have.

        A driver killed between a trial's end and Tune's next experiment
        checkpoint leaves a run whose trial the restored experiment (and the
        Optuna study saved with it) never saw; that budget slot is sampled
        again, so the run would count twice.
        """
        for trial_id in [t for t in self._records if t not in known]:
            run_id = self._records.pop(trial_id).run_id
            self.client.set_tag(run_id, "rayzor.orphan", "true")
            self.client.delete_run(run_id)

    def _write(self, outcome: _Outcome) -> None:
        logged = self._records.get(outcome.trial_id)
        if logged is not None and logged.status == outcome.status == "FINISHED":
            return  # a trial Tune re-ran after a restore: its run is complete
        run_id, record = self._start(outcome, logged)
        if outcome.status == "FINISHED" and not outcome.result.get("final", 1.0):
            self._stopped(run_id, record, outcome)
        elif outcome.status == "FINISHED":
            self._complete(run_id, record, outcome)
        else:
            self._fail(run_id, record, outcome)

    def _start(self, outcome: _Outcome, logged: TrialRecord | None) -> tuple[str, TrialRecord]:
        plan = self.space.decode(outcome.params)
        tags = {TAG_PARENT: self.parent, TAG_ROLE: ROLE_TRIAL, TAG_TRIAL_ID: outcome.trial_id,
                "rayzor.trial": str(outcome.number), TAG_PLAN: compact_plan(plan)[:5000],
                "rayzor.model": str(outcome.params.get("student.family", "teacher"))}
        tags.update({tag: str(outcome.result[key]) for key, tag in _TRIAL_TAGS.items() if key in outcome.result})
        if 0 < outcome.number <= len(self.warm_points) and outcome.params == self.warm_points[outcome.number - 1]:
            tags[TAG_WARM_START] = self.config.warm_start  # an enqueued plan, not one the sampler chose
        if logged is not None:
            # Reuse the run a crash or an earlier failure left behind.
            run_id = logged.run_id
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=f"trial-{outcome.number:04d}", tags=tags).info.run_id
        log_params(self.client, run_id, outcome.params)
        self.client.log_text(run_id, plan.to_json(), "plan.json")
        record = TrialRecord(outcome.number, run_id, outcome.status, outcome.params, plan_summary=compact_plan(plan),
                             trial_id=outcome.trial_id)
        return run_id, record

    def _complete(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        from mlflow.entities import Metric

        names = (*self.baseline_metrics, *ENGINE_METRICS)
        record.metrics = {k: float(outcome.result[k]) for k in names if k in outcome.result}
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in record.metrics.items()])
        if outcome.checkpoint is not None:
            with outcome.checkpoint.as_directory() as folder:
                self.client.log_artifact(run_id, os.path.join(folder, PACKED_NAME), PACKED_ARTIFACT_DIR)
        if "rayzor.error" in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, "rayzor.error")
        self.client.set_terminated(run_id, "FINISHED")
        self._records[outcome.trial_id] = record
        done = [r for r in self._records.values() if r.status == "FINISHED"]
        hv = search_hypervolume([r.metrics for r in done], self.config.objectives, self.baseline)
        self.client.log_metric(self.parent, "hypervolume", hv, step=len(done))
        front = _front(list(self._records.values()), self.config.objectives)
        m = record.metrics
        self.progress(
            f"[{len(self._records)}/{self.config.trials}] trial {record.number:04d}  "
            f"{self.quality}={m.get(self.quality, float('nan')):.4f}  size={m.get('size_bytes', 0) / 1024:.1f} KiB  "
            f"ratio={m.get('compression_ratio', 0):.1f}x  front={len(front)}  HV={hv:.4f}"
        )

    def _stopped(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        """A trial the scheduler stopped early: its partial metrics, no artifact, off the front."""
        from mlflow.entities import Metric

        record.status = STOPPED
        record.metrics = {k: float(v) for k, v in outcome.result.items()
                          if k in (*self.baseline_metrics, "size_bytes", "epoch") and isinstance(v, (int, float))}
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in record.metrics.items()])
        self.client.set_tag(run_id, "rayzor.early_stopped", f"after epoch {int(record.metrics.get('epoch', 0))}")
        self.client.set_terminated(run_id, "KILLED")
        self._records[outcome.trial_id] = record
        self.progress(f"[{len(self._records)}/{self.config.trials}] trial {record.number:04d}  stopped early at epoch "
                      f"{int(record.metrics.get('epoch', 0))}  {self.quality}={record.metrics.get(self.quality, float('nan')):.4f}")

    def _fail(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        text = ""
        if outcome.error_file and os.path.exists(outcome.error_file):
            with open(outcome.error_file) as f:
                text = f.read()
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Failure # ")]
        record.error = lines[-1].strip()[:500] if lines else "unknown error"
        if text:
            self.client.log_text(run_id, text, "error.txt")
        self.client.set_tag(run_id, "rayzor.error", record.error)
        self.client.set_terminated(run_id, "FAILED")
        self._records[outcome.trial_id] = record
        self.progress(f"[{len(self._records)}/{self.config.trials}] trial {record.number:04d}  FAILED: {record.error}")


def _pareto_plot(records: Sequence[TrialRecord], front: Sequence[TrialRecord], objectives: Sequence[str],
                 baseline: dict[str, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.status == "FINISHED"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    quality = quality_metric(tuple(objectives))
    ax.scatter([r.metrics["size_bytes"] / 1024 for r in done], [r.metrics[quality] for r in done],
               s=18, c="#9aa5b1", label="trials")
    pts = sorted((r.metrics["size_bytes"] / 1024, r.metrics[quality]) for r in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#d9480f", lw=1.5)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36, c="#d9480f", label="Pareto front", zorder=3)
    ax.axhline(baseline[quality], color="#2b8a3e", ls="--", lw=1, label=f"fp32 {quality}")
    ax.set_xscale("log")
    ax.set_xlabel("packed size (KiB, log)")
    ax.set_ylabel(f"validation {quality}")
    ax.set_title(f"rayzor search: {' vs '.join(objectives)}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _front_rows(front: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    return [{"run_id": r.run_id, "trial": r.number, **r.metrics, "plan": r.plan_summary} for r in front]


def _finish(client: Any, parent: str, result_records: list[TrialRecord], config: SearchConfig,
            baseline: dict[str, float]) -> tuple[list[TrialRecord], float]:
    front = _front(result_records, config.objectives)
    on_front = {r.run_id for r in front}
    for r in result_records:
        client.set_tag(r.run_id, TAG_PARETO, "true" if r.run_id in on_front else "false")
    done = [r.metrics for r in result_records if r.status == "FINISHED"]
    hv = search_hypervolume(done, config.objectives, baseline)
    rows = sorted(_front_rows(front), key=lambda row: row["size_bytes"])
    client.log_text(parent, json.dumps(rows, indent=2), "pareto.json")
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    client.log_text(parent, out.getvalue(), "pareto.csv")
    if front:
        client.log_image(parent, _png_array(_pareto_plot(result_records, front, config.objectives, baseline)), "pareto.png")
    client.log_metric(parent, "pareto_size", len(front))
    client.log_metric(parent, "trials_finished", len(done))
    client.log_metric(parent, "trials_failed", sum(r.status == "FAILED" for r in result_records))
    client.log_metric(parent, "trials_stopped_early", sum(r.status == STOPPED for r in result_records))
    return front, hv


def _png_array(png: bytes) -> Any:
    import matplotlib.image

    return (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.uint8)


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


#: Written next to the Tune experiment: what ``--resume`` needs to continue.
RESUME_FILE = "rayzor-search.json"
_VALID_RESUME = "the folder of a search's Tune experiment (STORAGE_PATH/NAME, or a pyarrow URI), or NAME under storage_path"


def _ray_address(config: SearchConfig) -> tuple[str | None, str]:
    """The cluster to join and where that came from (for error messages)."""
    if config.address:
        return config.address, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def _start_ray(config: SearchConfig) -> bool:
    """Join ``config.address`` / ``RAY_ADDRESS``, else start a local Ray; True if we started it."""
    import ray

    # Tune's new console output engine ignores verbose=0; the legacy one obeys.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return False
    address, _ = _ray_address(config)
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def _experiment_fs(path: str) -> tuple[Any, str]:
    """A pyarrow filesystem and path for a local folder or a URI (s3://, gs://)."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def _write_resume_state(experiment_path: str, state: dict[str, Any]) -> None:
    fs, path = _experiment_fs(experiment_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{RESUME_FILE}") as f:
        f.write(json.dumps(state, indent=2).encode())


def load_resume_state(resume: str, storage_path: str | None) -> tuple[str, dict[str, Any]]:
    """Find a search to resume: ``(experiment_path, saved state)``.

    Raises:
        ConfigError: naming ``--resume`` when there is no restorable Tune
            experiment with rayzor's state file there.
    """
    import pyarrow.fs
    from ray import tune

    candidates = [resume] if "://" in resume or Path(resume).is_dir() else []
    storage = storage_path or "rayzor-results"
    candidates.append(f"{storage.rstrip('/')}/{resume}" if "://" in storage else str(Path(storage) / resume))
    for candidate in candidates:
        fs, path = _experiment_fs(candidate)
        info = fs.get_file_info(f"{path}/{RESUME_FILE}")
        if info.type == pyarrow.fs.FileType.File and tune.Tuner.can_restore(path if "://" not in candidate else candidate):
            with fs.open_input_stream(f"{path}/{RESUME_FILE}") as f:
                return (candidate if "://" in candidate else path), json.loads(f.read())
    raise ConfigError("--resume", resume, f"{_VALID_RESUME}; nothing restorable at {', '.join(candidates)}")


def _trial_request(config: SearchConfig) -> tuple[dict[str, float], int]:
    """One trial's Ray resources and the concurrency, checked against the cluster.

    Raises:
        ConfigError: a request no node can ever meet (GPUs on a CPU cluster).
    """
    import ray

    from rayzor.cluster import check_cluster_resources, derive_concurrency, trial_resources

    request = trial_resources(config.cpus_per_trial, config.gpus_per_trial, config.resources_per_trial)
    available = ray.cluster_resources()
    check_cluster_resources(request, available)
    if "concurrency" in config.model_fields_set:
        return request, config.concurrency
    return request, derive_concurrency(request, available, config.trials)


def _tune_resources(request: dict[str, float]) -> dict[str, float]:
    names = {"CPU": "cpu", "GPU": "gpu"}
    return {names.get(k, k): v for k, v in request.items()}


def prepare(config: SearchConfig) -> tuple[Any, str, str, Task, CompressionSpace, dict[str, float]]:
    """Everything that can fail on bad input, before Ray starts.

    Returns the config with its objectives resolved, the MLflow client, the
    tracking URI, the experiment id, the task, the space and the baseline
    metrics (the task's validation metrics, fp32 size and latency).
    """
    from rayzor.cluster import check_address
    from rayzor.search._config import check_combinations

    check_combinations(config)  # a SearchConfig built in code skipped validate_config
    address, flag = _ray_address(config)
    if address:
        check_address(address, flag)
    client, uri, experiment_id = connect(config.tracking_uri, config.experiment)
    task = create_task(config.task, **config.task_options)
    config = _resolve_objectives(config, task)
    space = config.space.build(task.model, config.finetune(), example_input=task.example_input)
    if config.students.families:
        from rayzor.spaces import StudentSpace

        space = StudentSpace(space, task.model, config.students.families, config.students.include_teacher)
    from rayzor.compression import measure_latency

    baseline = {
        **task.baseline["val"],
        "size_bytes": float(state_dict_bytes(task.model)),
        # one thread, as in a trial, so latency ratios compare like with like
        "latency_ms": measure_latency(task.model, task.example_input, threads=1),
    }
    return config, client, uri, experiment_id, task, space, baseline


def _resolve_objectives(config: SearchConfig, task: Task) -> SearchConfig:
    """Fill in the default objectives, and check the quality metric is the task's."""
    if config.objectives is None:
        return config.model_copy(update={"objectives": (task.metric, "size_bytes")})
    quality = quality_metric(config.objectives)
    if quality != task.metric:
        raise ConfigError("objectives", list(config.objectives),
                          f"task {task.name!r}'s metric {task.metric!r} plus size_bytes and/or latency_ms")
    return config


def _resumed_config(state: dict[str, Any], given: SearchConfig) -> SearchConfig:
    """The saved config of a resumed search; a new ``address`` may replace the old one."""
    from rayzor.search._config import validate_config

    data = dict(state["config"])
    if given.address:
        data["address"] = given.address
    if not state.get("concurrency_given"):
        data.pop("concurrency", None)  # derived again from the cluster
    return validate_config(data)


def _open_parent(client: Any, experiment_id: str, name: str, config: SearchConfig, state: dict[str, Any] | None) -> str:
    """Create the search's parent run, or reopen the one of a resumed search."""
    from mlflow.exceptions import MlflowException

    if state is None:
        tags = {TAG_ROLE: ROLE_SEARCH, "rayzor.objectives": ",".join(config.objectives)}
        return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    try:
        client.update_run(state["parent_run_id"], status="RUNNING")
    except MlflowException:
        raise ConfigError("--resume", name, f"a search whose parent run {state['parent_run_id']} is in {config.tracking_uri}") from None
    return state["parent_run_id"]


def _log_parent(client: Any, parent_id: str, config: SearchConfig, space: CompressionSpace, name: str,
                storage: str, baseline: dict[str, float], request: dict[str, float], concurrency: int) -> None:
    log_params(client, parent_id, {
        **{k: v for k, v in config.model_dump(exclude={"space", "task_options", "concurrency"}).items()},
        "concurrency": concurrency,
        "task_options": config.task_options,
        "space.sparsity": list(config.space.sparsity),
        "space.bits": list(config.space.bits),
        "dimensions": space.dimensions,
        "layers": len(space.layers),
        "search_name": name,
        "storage_path": storage,
        "trial_resources": request,
        **{f"baseline.{k}": v for k, v in baseline.items()},
    })
    client.log_text(parent_id, config.model_dump_json(indent=2), "search_config.json")
    client.log_text(parent_id, json.dumps(space.describe(), indent=2), "space.json")


def _make_tuner(config: SearchConfig, trainable: Any, space: CompressionSpace, name: str, storage: str,
                concurrency: int, parent_id: str, restore_path: str | None) -> Any:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from rayzor.search._callback import TrackingCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if restore_path is not None:
        # The Optuna study and the callbacks come back from the experiment state.
        return tune.Tuner.restore(restore_path, trainable=trainable, resume_errored=True)
    searcher = OptunaSearch(
        space.suggest,
        metric=list(config.objectives),
        mode=["max" if objective_direction(o) == "maximize" else "min" for o in config.objectives],
        sampler=make_sampler(config.sampler, config.seed, config.trials),
        points_to_evaluate=warm_start_points(space, config) or None,
    )
    scheduler = None
    if config.scheduler == "asha":
        from rayzor.search._scheduler import SizeBucketASHA

        # One result per fine-tune epoch: epochs - 1 intermediate ones, then the final one.
        scheduler = SizeBucketASHA(quality_metric(config.objectives), "max", max_t=config.finetune_epochs,
                                   grace_period=config.asha.grace_period,
                                   reduction_factor=config.asha.reduction_factor,
                                   protect_front=config.asha.protect_front)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.trials,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[TrackingCallback(parent_id)],
            verbose=0,
            # Retries in place (a lost node, a killed worker) keep the Optuna
            # study free of FAILED ghosts; only the last failure is told.
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
        ),
    )


def _distillation(config: SearchConfig, task: Task) -> dict[str, Any] | None:
    """What trials need to distill: the teacher's train-split logits (computed once, here) and the settings.

    They reach every trial through the object store, so no trial runs the
    teacher over the training data again.
    """
    if not (config.students.families or config.recovery.distill_alpha > 0):
        return None
    from rayzor.compression import teacher_outputs

    s = config.students
    return {"teacher_logits": teacher_outputs(task.model, task.data["train"], batch_size=256),
            "epochs": s.distill_epochs, "lr": s.lr, "temperature": s.temperature, "alpha": s.alpha}


def _schedule(config: SearchConfig, baseline: dict[str, float]) -> dict[str, Any] | None:
    """What a trial needs to report per-epoch results to ``scheduler: asha``."""
    if config.scheduler != "asha":
        return None
    return {"baseline_bytes": baseline["size_bytes"], "bucket_width": config.asha.bucket_width}


def _storage(config: SearchConfig) -> str:
    path = config.storage_path or "rayzor-results"
    return path if "://" in path else str(Path(path).resolve())


def run_search(config: SearchConfig, *, progress: Callable[[str], None] = print, resume: str | None = None) -> SearchResult:
    """Run one search end to end and return its Pareto front.

    Bad input raises :class:`~rayzor.errors.ConfigError` before Ray
    starts (or, for resources the cluster lacks, before any trial queues).
    The parent MLflow run ends FINISHED, or FAILED/KILLED if the search itself
    breaks; trials that raise are retried ``max_failures`` times, then logged
    FAILED and the search goes on.

    Args:
        config: The search.
        progress: Receives one line per finished trial.
        resume: A search folder or name (see :func:`load_resume_state`):
            restore its Tune experiment and Optuna study, reuse its MLflow
            parent run and finish its budget. ``config`` then only supplies
            a new ``address``.
    """
    restore_path, state = None, None
    if resume is not None:
        restore_path, state = load_resume_state(resume, config.storage_path)
        config = _resumed_config(state, config)
    config, client, uri, experiment_id, task, space, baseline = prepare(config)
    name = state["name"] if state else (config.name or datetime.now().strftime("search-%Y%m%d-%H%M%S"))
    storage = state["storage_path"] if state else _storage(config)
    started = time.perf_counter()
    started_ray = _start_ray(config)
    parent_id, tracker, status = None, None, "FAILED"
    try:
        from ray import tune

        from rayzor.search._callback import TRACKERS

        request, concurrency = _trial_request(config)
        parent_id = _open_parent(client, experiment_id, name, config, state)
        if state is None:
            _log_parent(client, parent_id, config, space, name, storage, baseline, request, concurrency)
            if config.warm_start == "sensitivity":  # on Ray, before any trial; logged under sensitivity/
                from rayzor.search._sensitivity import search_phase

                # with students, the probes (and the warm-start plans) are the teacher's
                probed = getattr(space, "teacher_space", space)
                space.warm_start = search_phase(client, parent_id, task, probed, progress).points
            experiment_path = f"{storage.rstrip('/')}/{name}"
            _write_resume_state(experiment_path, {
                "name": name, "storage_path": storage, "parent_run_id": parent_id, "experiment_id": experiment_id,
                "warm_start_points": space.warm_start,  # the tracker tags them again after a resume
                "config": config.model_copy(update={"tracking_uri": uri}).model_dump(mode="json"),
                "concurrency_given": "concurrency" in config.model_fields_set,
            })
        else:
            space.warm_start = state.get("warm_start_points", [])  # not probed again: Tune restores the searcher
        progress(f"search {name}: {config.trials} trials x {space.dimensions} dims on task {task.name!r} "
                 f"(fp32 {task.metric} {baseline[task.metric]:.4f}, {baseline['size_bytes'] / 1024:.1f} KiB), sampler {config.sampler}, "
                 f"{concurrency} at a time, {request} per trial" + (" (resumed)" if state else ""))
        tracker = TRACKERS[parent_id] = _Tracker(uri, experiment_id, parent_id, space, config, baseline, progress)
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, task=task, space=space, entropy=config.entropy,
                                 schedule=_schedule(config, baseline), distillation=_distillation(config, task)),
            _tune_resources(request),
        )
        tuner = _make_tuner(config, trainable, space, name, storage, concurrency, parent_id, restore_path)
        # A failed trial is reported as one line and logged (with its traceback)
        # in its MLflow run; Tune's own logger would print every traceback too.
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        fit_started = time.perf_counter()
        tuner.fit()
        fit_seconds = time.perf_counter() - fit_started
        tracker.close()  # every child run is written before the Pareto tags
        front, hv = _finish(client, parent_id, tracker.records, config, baseline)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            TRACKERS.pop(parent_id, None)
            if status != "FINISHED":
                _close_quietly(tracker)
        if parent_id is not None:
            client.set_terminated(parent_id, status)
        if started_ray:
            import ray

            ray.shutdown()
    return SearchResult(
        parent_run_id=parent_id,
        experiment_id=experiment_id,
        tracking_uri=uri,
        objectives=config.objectives,
        trials=tracker.records,
        pareto=sorted(front, key=lambda r: r.metrics["size_bytes"]),
        hypervolume=hv,
        baseline=baseline,
        wall_seconds=time.perf_counter() - started,
        fit_seconds=fit_seconds,
        storage_path=storage,
        name=name,
        concurrency=concurrency,
        logging_seconds=_logging_seconds(tracker),
    )


def _close_quietly(tracker: _Tracker) -> None:
    try:
        tracker.close()
    except TrackingError as exc:
        logging.getLogger(__name__).warning("%s", exc)


def _logging_seconds(tracker: _Tracker) -> dict[str, float]:
    """Mean seconds per result: on the driver's event loop, and in the writer."""
    mean = lambda xs: float(np.mean(xs)) if xs else 0.0  # noqa: E731
    return {"driver_per_result": mean(tracker.submit_seconds), "writer_per_result": mean(tracker.write_seconds),
            "results": float(len(tracker.write_seconds))}
