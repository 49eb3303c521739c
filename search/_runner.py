"""Run a compression search: Ray Tune + OptunaSearch, tracked in MLflow."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from compression import FinetuneConfig, state_dict_bytes
from compression.tasks import Task, create_task
from search._config import OBJECTIVES, SearchConfig
from search._pareto import hypervolume, pareto_mask
from search._tracking import (
    ROLE_SEARCH,
    ROLE_TRIAL,
    TAG_PARENT,
    TAG_PARETO,
    TAG_PLAN,
    TAG_ROLE,
    connect,
    log_params,
)
from search._trial import PACKED_NAME, run_trial
from spaces import CompressionSpace

__all__ = ["SearchResult", "TrialRecord", "make_sampler", "objective_scales", "run_search", "search_hypervolume"]

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


def objective_scales(baseline: dict[str, float]) -> dict[str, Callable[[float], float]]:
    """Maps each objective onto [0, 1] for minimisation, reference point 1.

    accuracy -> error rate (1 - accuracy): reference = accuracy 0.
    size_bytes -> size / fp32 state-dict size: reference = no compression.
    latency_ms -> latency / (2 x fp32 latency): reference = twice as slow.
    """
    return {
        "accuracy": lambda v: 1.0 - v,
        "size_bytes": lambda v: v / baseline["size_bytes"],
        "latency_ms": lambda v: v / (LATENCY_REFERENCE * baseline["latency_ms"]),
    }


def search_hypervolume(rows: Sequence[dict[str, float]], objectives: Sequence[str], baseline: dict[str, float]) -> float:
    """Hypervolume of trial metrics in the unit box of :func:`objective_scales`."""
    if not rows:
        return 0.0
    scales = objective_scales(baseline)
    points = np.array([[scales[o](row[o]) for o in objectives] for row in rows], dtype=float)
    return hypervolume(points, ["minimize"] * len(objectives), [1.0] * len(objectives))


def _front(records: Sequence[TrialRecord], objectives: Sequence[str]) -> list[TrialRecord]:
    done = [r for r in records if r.status == "FINISHED"]
    if not done:
        return []
    values = np.array([[r.metrics[o] for o in objectives] for r in done], dtype=float)
    mask = pareto_mask(values, [OBJECTIVES[o] for o in objectives])
    return [r for r, keep in zip(done, mask) if keep]


def _trial_number(trial: Any, fallback: int) -> int:
    # Tune's experiment_tag starts with the trial's 1-based creation index.
    try:
        return int(str(trial.experiment_tag).split("_", 1)[0])
    except (AttributeError, ValueError):
        return fallback


class _Tracker:
    """Driver-side MLflow logging of trials, called from a Tune callback.

    Trials only report metrics and a checkpoint holding their packed file; the
    driver writes every MLflow run. One writer means no sqlite lock races and
    no MLflow import per worker; the packed file travels as a Tune checkpoint,
    so it reaches the driver from any node.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, space: CompressionSpace,
                 config: SearchConfig, baseline: dict[str, float], progress: Callable[[str], None]) -> None:
        self.tracking_uri = tracking_uri
        self._client: Any = None
        self.experiment_id = experiment_id
        self.parent = parent_run_id
        self.space = space
        self.config = config
        self.baseline = baseline
        self.progress = progress
        self.records: list[TrialRecord] = []

    @property
    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state (for restore):
        # the MLflow client and the console hold locks, so they stay behind.
        return {**self.__dict__, "_client": None, "progress": print}

    def _start(self, trial: Any, status: str) -> tuple[str, TrialRecord]:
        number = _trial_number(trial, len(self.records) + 1)
        params = {k: v for k, v in trial.config.items() if "." in k}
        plan = self.space.decode(params)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number:04d}",
            tags={TAG_PARENT: self.parent, TAG_ROLE: ROLE_TRIAL, "rayzor.trial_id": trial.trial_id,
                  "rayzor.trial": str(number), TAG_PLAN: plan.summary()[:5000]},
        )
        run_id = run.info.run_id
        log_params(self.client, run_id, params)
        self.client.log_text(run_id, plan.to_json(), "plan.json")
        record = TrialRecord(number, run_id, status, params, plan_summary=plan.summary())
        self.records.append(record)
        return run_id, record

    def complete(self, trial: Any) -> None:
        from mlflow.entities import Metric

        run_id, record = self._start(trial, "FINISHED")
        result = trial.last_result or {}
        record.metrics = {k: float(result[k]) for k in _TRIAL_METRICS if k in result}
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in record.metrics.items()])
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.client.log_artifact(run_id, os.path.join(folder, PACKED_NAME), PACKED_ARTIFACT_DIR)
        self.client.set_terminated(run_id, "FINISHED")
        done = [r for r in self.records if r.status == "FINISHED"]
        hv = search_hypervolume([r.metrics for r in done], self.config.objectives, self.baseline)
        self.client.log_metric(self.parent, "hypervolume", hv, step=len(done))
        front = _front(self.records, self.config.objectives)
        m = record.metrics
        self.progress(
            f"[{len(self.records)}/{self.config.trials}] trial {record.number:04d}  "
            f"accuracy={m.get('accuracy', float('nan')):.4f}  size={m.get('size_bytes', 0) / 1024:.1f} KiB  "
            f"ratio={m.get('compression_ratio', 0):.1f}x  front={len(front)}  HV={hv:.4f}"
        )

    def error(self, trial: Any) -> None:
        run_id, record = self._start(trial, "FAILED")
        text = ""
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                text = f.read()
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Failure # ")]
        record.error = lines[-1].strip()[:500] if lines else "unknown error"
        if text:
            self.client.log_text(run_id, text, "error.txt")
        self.client.set_tag(run_id, "rayzor.error", record.error)
        self.client.set_terminated(run_id, "FAILED")
        self.progress(f"[{len(self.records)}/{self.config.trials}] trial {record.number:04d}  FAILED: {record.error}")


_TRIAL_METRICS = ("accuracy", "size_bytes", "compression_ratio", "latency_ms", "weight_sparsity", "accuracy_drop", "trial_seconds")


def _callback(tracker: _Tracker) -> Any:
    from ray import tune

    class _TrackingCallback(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.complete(trial)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            tracker.error(trial)

    return _TrackingCallback()


def _pareto_plot(records: Sequence[TrialRecord], front: Sequence[TrialRecord], objectives: Sequence[str],
                 baseline: dict[str, float]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.status == "FINISHED"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([r.metrics["size_bytes"] / 1024 for r in done], [r.metrics["accuracy"] for r in done],
               s=18, c="#9aa5b1", label="trials")
    pts = sorted((r.metrics["size_bytes"] / 1024, r.metrics["accuracy"]) for r in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#d9480f", lw=1.5)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36, c="#d9480f", label="Pareto front", zorder=3)
    ax.axhline(baseline["accuracy"], color="#2b8a3e", ls="--", lw=1, label="fp32 accuracy")
    ax.set_xscale("log")
    ax.set_xlabel("packed size (KiB, log)")
    ax.set_ylabel("validation accuracy")
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
    return front, hv


def _png_array(png: bytes) -> Any:
    import matplotlib.image

    return (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.uint8)


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def _start_ray(config: SearchConfig) -> bool:
    """Start a local Ray unless one is running; True if we started it."""
    import ray

    # Tune's new console output engine ignores verbose=0; the legacy one obeys.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def prepare(config: SearchConfig) -> tuple[Any, str, str, Task, CompressionSpace, dict[str, float]]:
    """Everything that can fail on bad input, before Ray starts.

    Returns the MLflow client, tracking URI, experiment id, the task, the space
    and the baseline metrics.
    """
    client, uri, experiment_id = connect(config.tracking_uri, config.experiment)
    task = create_task(config.task, **config.task_options)
    space = CompressionSpace.from_model(
        task.model,
        sparsity=config.space.sparsity,
        bits=config.space.bits,
        finetune=FinetuneConfig(epochs=config.finetune_epochs, seed=config.seed),
    )
    from compression import measure_latency

    baseline = {
        "accuracy": task.baseline["val"][task.metric],
        "size_bytes": float(state_dict_bytes(task.model)),
        "latency_ms": measure_latency(task.model, task.example_input),
    }
    return client, uri, experiment_id, task, space, baseline


def run_search(config: SearchConfig, *, progress: Callable[[str], None] = print) -> SearchResult:
    """Run one search end to end and return its Pareto front.

    Bad input raises :class:`~compression.errors.ConfigError` before Ray
    starts. The parent MLflow run ends FINISHED, or FAILED/KILLED if the
    search itself breaks; trials that raise are logged FAILED and the search
    goes on.
    """
    client, uri, experiment_id, task, space, baseline = prepare(config)
    name = config.name or datetime.now().strftime("search-%Y%m%d-%H%M%S")
    storage = str(Path(config.storage_path or "rayzor-results").resolve())
    parent = client.create_run(experiment_id, run_name=name, tags={TAG_ROLE: ROLE_SEARCH, "rayzor.objectives": ",".join(config.objectives)})
    parent_id = parent.info.run_id
    started = time.perf_counter()
    status = "FAILED"
    started_ray = False
    try:
        log_params(client, parent_id, {
            **{k: v for k, v in config.model_dump(exclude={"space", "task_options"}).items()},
            "task_options": config.task_options,
            "space.sparsity": list(config.space.sparsity),
            "space.bits": list(config.space.bits),
            "dimensions": space.dimensions,
            "layers": len(space.layers),
            "search_name": name,
            "storage_path": storage,
            **{f"baseline.{k}": v for k, v in baseline.items()},
        })
        client.log_text(parent_id, config.model_dump_json(indent=2), "search_config.json")
        client.log_text(parent_id, json.dumps(space.describe(), indent=2), "space.json")
        progress(f"search {name}: {config.trials} trials x {space.dimensions} dims on task {task.name!r} "
                 f"(fp32 accuracy {baseline['accuracy']:.4f}, {baseline['size_bytes'] / 1024:.1f} KiB), sampler {config.sampler}")
        started_ray = _start_ray(config)

        import optuna
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)

        tracker = _Tracker(uri, experiment_id, parent_id, space, config, baseline, progress)
        searcher = OptunaSearch(
            space.suggest,
            metric=list(config.objectives),
            mode=["max" if OBJECTIVES[o] == "maximize" else "min" for o in config.objectives],
            sampler=make_sampler(config.sampler, config.seed, config.trials),
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, task=task, space=space), {"cpu": config.cpus_per_trial}
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=config.trials,
                max_concurrent_trials=config.concurrency,
                reuse_actors=True,
                trial_name_creator=_trial_name,
                trial_dirname_creator=_trial_name,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                callbacks=[_callback(tracker)],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=0),
            ),
        )
        # A failed trial is reported as one line and logged (with its traceback)
        # in its MLflow run; Tune's own logger would print every traceback too.
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        fit_started = time.perf_counter()
        tuner.fit()
        fit_seconds = time.perf_counter() - fit_started
        front, hv = _finish(client, parent_id, tracker.records, config, baseline)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
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
    )
