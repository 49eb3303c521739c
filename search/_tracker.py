"""The driver's MLflow writer: one child run per trial, written off Tune's event loop."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayzor.errors import TrackingError
from rayzor.search._browse import trial_name
from rayzor.search._config import SearchConfig, quality_metric
from rayzor.search._records import FINISHED, STOPPED, Front, TrialRecord, record_of
from rayzor.search._tags import (
    PACKED_ARTIFACT_DIR,
    PACKED_NAME,
    PLAN_ARTIFACT,
    ROLE_TRIAL,
    TAG_DEVICE,
    TAG_EARLY_STOPPED,
    TAG_ERROR,
    TAG_MODEL,
    TAG_NODE_ID,
    TAG_ORPHAN,
    TAG_PARENT,
    TAG_PLAN,
    TAG_ROLE,
    TAG_TRIAL,
    TAG_TRIAL_ID,
    TAG_WARM_START,
)
from rayzor.search._tracking import log_params, trial_runs
from rayzor.spaces import FAMILY_KEY, TEACHER

__all__ = ["ENGINE_METRICS", "TRACKERS", "Tracker"]

#: What the engine measures in every trial, beside the task's own metrics.
ENGINE_METRICS = (
    "size_bytes",
    "deploy_bytes",
    "calibration_layers_computed",
    "compression_ratio",
    "latency_ms",
    "weight_sparsity",
    "quality_drop",
    "params",
    "nonzero_params",
    "flops",
    "macs",
    "bitops",
    "trial_seconds",
)
#: Trial result keys logged as tags of the child run (where the trial ran).
_RESULT_TAGS = {"node_id": TAG_NODE_ID, "device": TAG_DEVICE}
#: Longest plan summary kept as a tag (MLflow caps tag values).
_PLAN_TAG_CHARS = 5000


#: Live trackers of this driver, by key (the search's parent run id); Tune's callback finds them here.
TRACKERS: dict[str, Tracker] = {}


@dataclass
class _Outcome:
    """What the writer needs of an ended trial, copied on Tune's event loop."""

    trial_id: str
    number: int
    status: str
    params: dict[str, Any]
    result: dict[str, Any]
    checkpoint: Any
    error_file: str | None


def _trial_number(trial: Any, fallback: int) -> int:
    # Tune's experiment_tag starts with the trial's 1-based creation index.
    try:
        return int(str(trial.experiment_tag).split("_", 1)[0])
    except (AttributeError, ValueError):
        return fallback


def _trial_times(result: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """The trial's own start and end (epoch ms) from its result, or None (MLflow then uses the logging time).

    The child run is written after the trial ended: without these its
    duration in the UI would be the time logging took.
    """
    started = result.get("trial_started")
    if not isinstance(started, (int, float)):
        return None, None
    seconds = result.get("trial_seconds")
    end = int((started + seconds) * 1000) if isinstance(seconds, (int, float)) else None
    return int(started * 1000), end


class Tracker:
    """Driver-side MLflow logging of trials: one writer thread, off Tune's event loop.

    Trials report metrics, their decoded plan and a checkpoint holding the
    packed file; this writer logs them as they are (it never decodes a plan).
    Tune's callbacks only queue an :class:`_Outcome`; the thread does the
    MLflow calls, so a slow tracking server never stalls scheduling. Child
    runs are keyed by Tune's trial id (tag ``rayzor.trial_id``): a resumed
    search finds the runs it logged before and never duplicates them.

    Args:
        tracking_uri: The resolved tracking URI.
        experiment_id: The search's MLflow experiment.
        parent_run_id: The search's parent run.
        config: The resolved search config.
        warm_points: The enqueued warm-start params, in order (trials 1..n).
        baseline: The fp32 metrics (the task's metrics, size and latency).
        progress: Receives one line per logged trial.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        parent_run_id: str,
        config: SearchConfig,
        warm_points: Sequence[Mapping[str, Any]],
        baseline: Mapping[str, float],
        progress: Callable[[str], None],
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)  # the writer thread's own
        self.experiment_id = experiment_id
        self.parent = parent_run_id
        self.config = config
        self.progress = progress
        self.quality = quality_metric(config.resolved_objectives)
        # The task's own metrics (accuracy, recall_at_10, ...) are logged too.
        self.baseline_metrics = tuple(k for k in baseline if k not in ("size_bytes", "deploy_bytes", "latency_ms"))
        self.warm_points = [dict(p) for p in warm_points]
        self.front = Front(config.resolved_objectives, baseline)
        self._records: dict[str, TrialRecord] = {}
        self._queued: set[str] = set()
        self.submit_seconds: list[float] = []
        self.write_seconds: list[float] = []
        self._error: BaseException | None = None
        for run in trial_runs(self.client, experiment_id, parent_run_id):
            record = record_of(run)
            if record.trial_id:
                self._keep(record)
        self._queue: queue.Queue[_Outcome | frozenset[str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="rayzor-mlflow-writer", daemon=True)
        self._thread.start()

    @property
    def records(self) -> list[TrialRecord]:
        """Every logged trial, in trial-number order."""
        return sorted(self._records.values(), key=lambda r: r.number)

    def logging_seconds(self) -> dict[str, float]:
        """Mean seconds per result: on the driver's event loop, and in the writer."""

        def mean(xs: list[float]) -> float:
            return float(np.mean(xs)) if xs else 0.0

        return {
            "driver_per_result": mean(self.submit_seconds),
            "writer_per_result": mean(self.write_seconds),
            "results": float(len(self.write_seconds)),
        }

    def submit(self, trial: Any, status: str) -> None:
        """Queue one ended trial for logging (called on Tune's event loop)."""
        started = time.perf_counter()
        self._queued.add(trial.trial_id)
        self._queue.put(
            _Outcome(
                trial_id=trial.trial_id,
                number=_trial_number(trial, len(self._queued)),
                status=status,
                params={k: v for k, v in trial.config.items() if "." in k},
                result=dict(trial.last_result or {}),
                checkpoint=trial.checkpoint,
                error_file=trial.error_file,
            )
        )
        self.submit_seconds.append(time.perf_counter() - started)

    def reconcile(self, trials: Sequence[Any]) -> None:
        """Queue ended trials that were neither logged nor queued (restored ones),
        then drop runs of trials the experiment no longer has (see :meth:`_prune`)."""
        for trial in trials:
            status = {"TERMINATED": FINISHED, "ERROR": "FAILED"}.get(trial.status)
            logged = self._records.get(trial.trial_id)
            if status and trial.trial_id not in self._queued and (logged is None or logged.status != status):
                self.submit(trial, status)
        self._queue.put(frozenset(t.trial_id for t in trials))

    def close(self) -> None:
        """Log everything queued, stop the writer, and raise what it hit.

        Raises:
            TrackingError: an MLflow call of the writer failed.
        """
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise TrackingError(f"logging trials to MLflow failed: {error}") from error

    def close_quietly(self) -> None:
        """:meth:`close`, logging a :class:`TrackingError` as a warning (the search failed anyway)."""
        try:
            self.close()
        except TrackingError as exc:
            logging.getLogger(__name__).warning("%s", exc)

    def _keep(self, record: TrialRecord) -> None:
        self._records[record.trial_id] = record
        self.front.add(record)

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
            self.front.discard(run_id)
            self.client.set_tag(run_id, TAG_ORPHAN, "true")
            self.client.delete_run(run_id)

    def _write(self, outcome: _Outcome) -> None:
        logged = self._records.get(outcome.trial_id)
        if logged is not None and logged.status == outcome.status == FINISHED:
            return  # a trial Tune re-ran after a restore: its run is complete
        run_id, record = self._start(outcome, logged)
        if outcome.status == FINISHED and not outcome.result.get("final", 1.0):
            self._stopped(run_id, record, outcome)
        elif outcome.status == FINISHED:
            self._complete(run_id, record, outcome)
        else:
            self._fail(run_id, record, outcome)

    def _start(self, outcome: _Outcome, logged: TrialRecord | None) -> tuple[str, TrialRecord]:
        result = outcome.result
        summary = str(result.get("plan_summary", ""))  # none for a trial that failed before reporting
        model = str(result.get("model", outcome.params.get(FAMILY_KEY, TEACHER)))
        tags = {
            TAG_PARENT: self.parent,
            TAG_ROLE: ROLE_TRIAL,
            TAG_TRIAL_ID: outcome.trial_id,
            TAG_TRIAL: str(outcome.number),
            TAG_MODEL: model,
        }
        if summary:
            tags[TAG_PLAN] = summary[:_PLAN_TAG_CHARS]
        tags.update({tag: str(result[key]) for key, tag in _RESULT_TAGS.items() if key in result})
        if 0 < outcome.number <= len(self.warm_points) and outcome.params == self.warm_points[outcome.number - 1]:
            tags[TAG_WARM_START] = self.config.warm_start  # an enqueued plan, not one the sampler chose
        if logged is not None:
            # Reuse the run a crash or an earlier failure left behind.
            run_id = logged.run_id
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        else:
            run_id = self.client.create_run(
                self.experiment_id, run_name=trial_name(outcome.number), tags=tags, start_time=_trial_times(result)[0]
            ).info.run_id
        log_params(self.client, run_id, outcome.params)
        if "plan_json" in result:
            self.client.log_text(run_id, str(result["plan_json"]), PLAN_ARTIFACT)
        record = TrialRecord(
            outcome.number, run_id, outcome.status, outcome.params, plan_summary=summary, trial_id=outcome.trial_id
        )
        return run_id, record

    def _log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])

    def _complete(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        names = (*self.baseline_metrics, *ENGINE_METRICS)
        record.metrics = {k: float(outcome.result[k]) for k in names if k in outcome.result}
        self._log_metrics(run_id, record.metrics)
        if outcome.checkpoint is not None:
            with outcome.checkpoint.as_directory() as folder:
                self.client.log_artifact(run_id, os.path.join(folder, PACKED_NAME), PACKED_ARTIFACT_DIR)
        if TAG_ERROR in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, TAG_ERROR)
        self.client.set_terminated(run_id, FINISHED, end_time=_trial_times(outcome.result)[1])
        self._keep(record)
        hv = self.front.hypervolume
        self.client.log_metric(self.parent, "hypervolume", hv, step=self.front.finished)
        m = record.metrics
        self.progress(
            f"[{len(self._records)}/{self.config.trials}] trial {record.number:04d}  "
            f"{self.quality}={m.get(self.quality, float('nan')):.4f}  "
            + (f"deploy={m['deploy_bytes'] / 1024:.1f} KiB  " if "deploy_bytes" in m else "")
            + f"size={m.get('size_bytes', 0) / 1024:.1f} KiB  "
            f"ratio={m.get('compression_ratio', 0):.1f}x  front={len(self.front.members)}  HV={hv:.4f}"
        )

    def _stopped(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        """A trial the scheduler stopped early: its partial metrics, no artifact, off the front."""
        record.status = STOPPED
        record.metrics = {
            k: float(v)
            for k, v in outcome.result.items()
            if k in (*self.baseline_metrics, "size_bytes", "epoch") and isinstance(v, (int, float))
        }
        self._log_metrics(run_id, record.metrics)
        epoch = int(record.metrics.get("epoch", 0))
        self.client.set_tag(run_id, TAG_EARLY_STOPPED, f"after epoch {epoch}")
        self.client.set_terminated(run_id, "KILLED")
        self._keep(record)
        self.progress(
            f"[{len(self._records)}/{self.config.trials}] trial {record.number:04d}  stopped early at epoch "
            f"{epoch}  {self.quality}={record.metrics.get(self.quality, float('nan')):.4f}"
        )

    def _fail(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        text = ""
        if outcome.error_file and os.path.exists(outcome.error_file):
            with open(outcome.error_file) as f:
                text = f.read()
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Failure # ")]
        record.error = lines[-1].strip()[:500] if lines else "unknown error"
        if text:
            self.client.log_text(run_id, text, "error.txt")
        self.client.set_tag(run_id, TAG_ERROR, record.error)
        self.client.set_terminated(run_id, "FAILED")
        self._keep(record)
        self.progress(f"[{len(self._records)}/{self.config.trials}] trial {record.number:04d}  FAILED: {record.error}")
