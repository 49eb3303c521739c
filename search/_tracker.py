"""The driver's MLflow writer: one child run per trial, written off Tune's event loop."""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayzor.errors import ResumeError, TrackingError
from rayzor.search._config import SearchConfig, quality_metric
from rayzor.search._deferred import PARAMS_WAIT, trial_params
from rayzor.search._journal import Journal
from rayzor.search._records import FINISHED, STOPPED, Front, TrialRecord, has_objectives, record_of, trial_label
from rayzor.search._report import tag_front
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
    TAG_PARETO,
    TAG_PLAN,
    TAG_ROLE,
    TAG_RUN_NAME,
    TAG_TRIAL,
    TAG_TRIAL_ID,
    TAG_WARM_START,
)
from rayzor.search._tracking import log_params, trial_runs
from rayzor.search._trial import REPLAYED, TRIAL_ERROR, failure_result
from rayzor.spaces import FAMILY_KEY, TEACHER

__all__ = ["ENGINE_METRICS", "TRACKERS", "Tracker", "TrackingOutage", "is_outage"]

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
    PARAMS_WAIT,
)
#: Trial result keys logged as tags of the child run (where the trial ran).
_RESULT_TAGS = {"node_id": TAG_NODE_ID, "device": TAG_DEVICE}
#: Longest plan summary kept as a tag (MLflow caps tag values).
_PLAN_TAG_CHARS = 5000


#: Live trackers of this driver, by key (the search's parent run id); Tune's callback finds them here.
TRACKERS: dict[str, Tracker] = {}


#: Longest wait between two attempts to reach an unreachable tracking server while the search runs.
MAX_BACKOFF_SECONDS = 30.0

#: Longest the writer holds a new outcome while Tune starts the next trial (see :meth:`Tracker.started`).
DISPATCH_WAIT_SECONDS = 0.25


class TrackingOutage(TrackingError):
    """The tracking server stayed unreachable: trial results wait in the journal."""


def is_outage(exc: BaseException) -> bool:
    """Whether an MLflow call failed because the store did not answer (worth retrying), not on its input."""
    import requests

    if isinstance(exc, (ConnectionError, TimeoutError, requests.exceptions.RequestException)):
        return True
    text = str(exc)
    return any(
        s in text
        for s in (
            "Max retries exceeded",
            "Connection refused",
            "Failed to establish",
            "timed out",
            "database is locked",
            "unable to open database",
            "TEMPORARILY_UNAVAILABLE",
            "status code 50",
        )
    )


@dataclass
class _Outcome:
    """What the writer needs of an ended trial, copied on Tune's event loop (or read from the journal)."""

    trial_id: str
    number: int
    status: str
    params: dict[str, Any]
    result: dict[str, Any]
    checkpoint: Any
    error_file: str | None
    #: The packed file's journal copy, once journaled (then ``checkpoint`` is not needed).
    packed: str | None = None
    error_text: str = ""
    #: The run created for it, so a retry after an outage never makes a second one.
    run_id: str | None = None
    entry: Path | None = None
    #: Trials Tune had started when this one ended (see :meth:`Tracker.started`).
    starts: int = 0


@dataclass
class _Close:
    """Stop the writer once everything is written, or after ``wait`` seconds of an outage."""

    wait: float


def _status_of(trial: Any) -> str | None:
    """What a trial Tune ended means for its run: FINISHED, FAILED, or None (not ended, or interrupted).

    A trial whose own code raised reports :data:`TRIAL_ERROR` and ends
    TERMINATED; one Tune stopped on Ctrl-C also ends TERMINATED, with no
    final result: it is not logged, and a resume runs it.
    """
    result = trial.last_result or {}
    if trial.status == "ERROR" or TRIAL_ERROR in result:
        return "FAILED"
    if trial.status == "TERMINATED" and ("final" in result or REPLAYED in result):
        return FINISHED
    return None


def _from_entry(path: Path, entry: Mapping[str, Any]) -> _Outcome:
    """An outcome a previous driver journaled."""
    return _Outcome(
        trial_id=entry["trial_id"],
        number=int(entry["number"]),
        status=entry["status"],
        params=dict(entry["params"]),
        result=dict(entry["result"]),
        checkpoint=None,
        error_file=None,
        packed=entry.get("packed"),
        error_text=entry.get("error_text", ""),
        run_id=entry.get("run_id"),
        entry=path,
    )


def _clock_text(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _reason(exc: BaseException | None) -> str:
    """Why a server did not answer, in a few words: MLflow's messages run to a nested urllib3 repr."""
    text = str(exc) if exc is not None else ""
    for marker in ("Connection refused", "Max retries exceeded", "timed out", "Name or service not known"):
        if marker in text:
            return marker.lower()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first if len(first) <= 120 else first[:117] + "..."


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

    With a ``journal``, every outcome is written to disk before its MLflow
    calls and removed after them: while the tracking server does not answer,
    the writer keeps the outcomes there and retries with a backoff of up to
    :data:`MAX_BACKOFF_SECONDS`; :meth:`close` waits a bounded time, then
    leaves what is still unwritten in the journal (raising
    :class:`TrackingOutage`). Entries a previous driver left are replayed first.

    Args:
        tracking_uri: The resolved tracking URI.
        experiment_id: The search's MLflow experiment.
        parent_run_id: The search's parent run.
        config: The resolved search config.
        warm_points: The enqueued warm-start params, in order (trials 1..n).
        baseline: The fp32 metrics (the task's metrics, size and latency).
        progress: Receives one line per logged trial.
        journal: Where pending outcomes are kept (none: in memory only).
        name: The search's name, for the resume command in errors.
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
        journal: Journal | None = None,
        name: str = "",
    ) -> None:
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.journal = journal
        self.name = name
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
        self._pruned = False
        self._restore_failed = False  # set by known(): nothing may be pruned then
        self.unreachable: BaseException | None = None
        # Trials Tune started so far, and whether close() was called: the writer waits on these.
        self._starts = 0
        self._closing = False
        self._dispatch = threading.Condition()
        #: Run id -> the Pareto tags its run holds (see :func:`tag_front`): only changes are written.
        self.tagged: dict[str, dict[str, str]] = {}
        for run in trial_runs(self.client, experiment_id, parent_run_id):
            record = record_of(run)
            if record.trial_id:
                self.tagged[run.info.run_id] = {k: run.data.tags.get(k, "") for k in (TAG_PARETO, TAG_RUN_NAME)}
                self._keep(record, retag=False)
        self._retagged = not self._records  # a resumed search's tags are checked with its first logged trial
        # The ETA is the pace of this session's trials (a resumed search's earlier ones took their own time).
        self._clock, self._done_before = time.perf_counter(), len(self._records)
        # what a previous driver could not write: first in line
        self._pending: list[_Outcome | frozenset[str]] = (
            [_from_entry(p, e) for p, e in journal.entries()] if journal else []
        )
        self._queued.update(o.trial_id for o in self._pending if isinstance(o, _Outcome))
        self._queue: queue.Queue[_Outcome | frozenset[str] | _Close] = queue.Queue()
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
        if TRIAL_ERROR in (trial.last_result or {}):
            status = "FAILED"  # the trial's code raised: reported, not raised, so Tune did not retry it
        started = time.perf_counter()
        self._queued.add(trial.trial_id)
        self._queue.put(
            _Outcome(
                trial_id=trial.trial_id,
                number=_trial_number(trial, len(self._queued)),
                status=status,
                params=trial_params(trial.config, trial.last_result or {}),
                result=dict(trial.last_result or {}),
                checkpoint=trial.checkpoint,
                error_file=trial.error_file,
                starts=self._starts,
            )
        )
        self.submit_seconds.append(time.perf_counter() - started)

    def reconcile(self, trials: Sequence[Any]) -> None:
        """Queue ended trials that were neither logged nor queued (restored ones),
        then drop runs of trials the experiment no longer has (see :meth:`_prune`)."""
        if self._restore_failed:
            return  # Tune's cleanup after the ResumeError of known(): its trials are not this search's
        for trial in trials:
            status = _status_of(trial)
            logged = self._records.get(trial.trial_id)
            if status and trial.trial_id not in self._queued and (logged is None or logged.status != status):
                self.submit(trial, status)
        self._queue.put(frozenset(t.trial_id for t in trials))

    def started(self) -> None:
        """Tune started a trial (called on Tune's event loop): the writer may go on (see :meth:`_after_dispatch`)."""
        with self._dispatch:
            self._starts += 1
            self._dispatch.notify_all()

    def _after_dispatch(self, outcome: _Outcome) -> None:
        """Hold a new outcome until Tune started a trial after it ended, at most :data:`DISPATCH_WAIT_SECONDS`.

        The writer is a thread of the driver: its MLflow calls (SQLAlchemy,
        mostly Python) hold the GIL in turns with Tune's loop. Right after a
        trial ends, that loop hands the freed slot its next trial; writing at
        that moment delayed every next trial (digits, concurrency 1: the gap
        between two trials was 0.04 s with the writer off, 0.06-0.09 s with
        it on). After the next trial started, the writing overlaps its compute.
        """
        with self._dispatch:
            self._dispatch.wait_for(
                lambda: self._closing or self._starts > outcome.starts, timeout=DISPATCH_WAIT_SECONDS
            )

    def known(self, trials: Sequence[Any]) -> None:
        """Drop, once, the runs of trials a restored experiment does not have (see :meth:`_prune`).

        Called with the restored trials before any new one starts, so the
        progress count and the front never count such orphans.

        Raises:
            ResumeError: a resumed search's first step has no trial while
                trials of it are logged: Tune's restore failed (nothing is pruned).
        """
        if not self._pruned:
            self._pruned = True
            logged = len(self._records) + self.unwritten
            if not trials and logged:
                self._restore_failed = True
                # Tune swallows a failed restore and starts the experiment again from nothing; pruning
                # against that would drop every finished trial's run, and each would run again.
                raise ResumeError(
                    f"Ray Tune restored none of the {logged} trials search {self.name or self.parent} logged (its "
                    "saved experiment state did not load; Tune's log says why): stopped before any trial ran, "
                    "and the logged trials stay in MLflow; run the rest of the budget as a new search"
                )
            self._queue.put(frozenset(t.trial_id for t in trials))

    def replay(self) -> dict[str, dict[str, Any]]:
        """The logged outcome of every ended trial, by Tune trial id, for a resumed search to report again.

        A trial that finished (or failed) before a driver crash, but after
        Tune last saved its experiment, is restored as not ended; with this
        it reports its MLflow record instead of running again.
        """
        out: dict[str, dict[str, Any]] = {}
        for trial_id, record in self._records.items():
            if record.status == FINISHED and has_objectives(record, self.config.resolved_objectives):
                out[trial_id] = {**record.metrics, "final": 1.0}
            elif record.status == "FAILED":
                out[trial_id] = failure_result(self.quality, record.error)
        for o in self._pending:  # journaled, not yet in MLflow: known all the same
            if isinstance(o, _Outcome) and o.trial_id not in out:
                if o.status == "FAILED":
                    out[o.trial_id] = failure_result(self.quality, o.error_text or str(o.result.get(TRIAL_ERROR, "")))
                elif all(k in o.result for k in self.config.resolved_objectives):
                    names = (*self.baseline_metrics, *ENGINE_METRICS)
                    out[o.trial_id] = {**{k: float(o.result[k]) for k in names if k in o.result}, "final": 1.0}
        return out

    @property
    def unwritten(self) -> int:
        """Trial outcomes not written to MLflow (after :meth:`close`: left in the journal)."""
        return sum(isinstance(o, _Outcome) for o in self._pending)

    def close(self, wait_seconds: float = 60.0) -> None:
        """Log everything queued, stop the writer, and raise what it hit.

        Args:
            wait_seconds: How long to keep retrying an unreachable tracking
                server before leaving the rest in the journal.

        Raises:
            TrackingOutage: results left unwritten (kept in the journal).
            TrackingError: an MLflow call of the writer failed.
        """
        if self._thread.is_alive():
            with self._dispatch:
                self._closing = True
                self._dispatch.notify_all()
            self._queue.put(_Close(wait_seconds))
            self._thread.join()
        if self.unwritten:
            kept = f"kept in {self.journal.folder}" if self.journal else "lost (no journal)"
            raise TrackingOutage(
                f"tracking server {self.tracking_uri} unreachable ({_reason(self.unreachable)}): "
                f"{self.unwritten} trial results {kept}; once it answers: rayzor sync {self.name} "
                f"(or rayzor search --resume {self.name})"
            )
        if self._error is not None:
            error, self._error = self._error, None
            raise TrackingError(f"logging trials to MLflow failed: {error}") from error

    def close_quietly(self, wait_seconds: float = 60.0) -> None:
        """:meth:`close`, logging a :class:`TrackingError` as a warning (the search failed anyway)."""
        if not self._thread.is_alive():
            return  # closed already: what it hit was raised then
        try:
            self.close(wait_seconds)
        except TrackingError as exc:
            logging.getLogger(__name__).warning("%s", exc)

    def _keep(self, record: TrialRecord, retag: bool = True) -> None:
        """Take a logged trial into the records and the front; ``retag``: bring the runs' Pareto tags up to date."""
        self._records[record.trial_id] = record
        changed = self.front.add(record)
        if retag and (changed or record.run_id not in self.tagged or not self._retagged):
            self._tag_front()
            self._retagged = True

    def _tag_front(self) -> None:
        tag_front(self.client, self.records, self.front.members, self.config.resolved_objectives, self.tagged)

    def _drain(self) -> None:
        backoff, retry_at = 0.0, 0.0
        deadline: float | None = None  # set by close()
        while True:
            now = time.monotonic()
            if deadline is not None and (not self._pending or now >= deadline):
                return
            wait = None if not self._pending else max(0.0, retry_at - now)
            if deadline is not None:
                wait = max(0.0, min(wait if wait is not None else deadline - now, deadline - now))
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty:
                item = None
            if isinstance(item, _Close):
                deadline = time.monotonic() + item.wait
            elif isinstance(item, _Outcome):
                journaled = self._journaled(item)  # on disk first: the wait below must not risk a finished trial
                self._after_dispatch(item)
                self._pending.append(journaled)
            elif isinstance(item, frozenset):
                self._pending.append(item)
            if self._pending and time.monotonic() >= retry_at:
                if self._flush():
                    backoff = 0.0
                else:  # the server does not answer: try again later, while the search goes on
                    backoff = min(MAX_BACKOFF_SECONDS, max(1.0, 2 * backoff))
                    retry_at = time.monotonic() + backoff

    def _journaled(self, outcome: _Outcome) -> _Outcome:
        """Keep an outcome on disk (its packed file and error text too) before any MLflow call."""
        if outcome.error_file and os.path.exists(outcome.error_file):
            with open(outcome.error_file) as f:
                outcome.error_text = f.read()
        if self.journal is None:
            return outcome
        entry = {
            "trial_id": outcome.trial_id,
            "number": outcome.number,
            "status": outcome.status,
            "params": outcome.params,
            "result": outcome.result,
            "error_text": outcome.error_text,
        }
        try:
            if outcome.checkpoint is not None:
                with outcome.checkpoint.as_directory() as folder:
                    outcome.entry = self.journal.add(entry, os.path.join(folder, PACKED_NAME))
            else:
                outcome.entry = self.journal.add(entry, None)
        except OSError as exc:  # a full disk: log directly, as without a journal
            logging.getLogger(__name__).warning("tracking journal: %s", exc)
            return outcome
        outcome.packed = json.loads(outcome.entry.read_text()).get("packed")
        outcome.checkpoint = None
        return outcome

    def _flush(self) -> bool:
        """Write pending items in order; False when the server stopped answering (the rest wait)."""
        while self._pending:
            item = self._pending[0]
            started = time.perf_counter()
            try:
                if isinstance(item, frozenset):
                    self._prune(item)
                else:
                    self._write(item)
            except Exception as exc:  # noqa: BLE001 - an outage is retried; anything else is reported by close()
                if is_outage(exc):
                    self.unreachable = exc
                    return False
                self._error = self._error or exc  # its journal entry stays, for `rayzor sync`
            else:
                if isinstance(item, _Outcome) and item.entry is not None and self.journal is not None:
                    self.journal.remove(item.entry)
            self._pending.pop(0)
            self.write_seconds.append(time.perf_counter() - started)
        return True

    def _prune(self, known: frozenset[str]) -> None:
        """Delete child runs of trials the Tune experiment does not have.

        A driver killed between a trial's end and Tune's next experiment
        checkpoint leaves a run whose trial the restored experiment (and the
        Optuna study saved with it) never saw; that budget slot is sampled
        again, so the run would count twice.
        """
        changed = False
        for trial_id in [t for t in self._records if t not in known]:
            record = self._records.pop(trial_id)
            changed = self.front.discard(record.run_id) or changed
            self.tagged.pop(record.run_id, None)
            self.client.set_tag(record.run_id, TAG_ORPHAN, "true")
            if record.status == "RUNNING":  # a kill during its write: never deleted while RUNNING
                self.client.set_terminated(record.run_id, "KILLED")
            self.client.delete_run(record.run_id)
        if changed:  # a deleted member: runs it dominated may be back on the front
            self._tag_front()

    def _write(self, outcome: _Outcome) -> None:
        logged = self._records.get(outcome.trial_id)
        if logged is not None and logged.status == outcome.status == FINISHED:
            return  # a trial Tune re-ran after a restore: its run is complete
        if logged is not None and REPLAYED in outcome.result and logged.status == outcome.status:
            return  # replayed from this very run
        objectives = self.config.resolved_objectives
        if (
            outcome.status == FINISHED
            and outcome.result.get("final", 1.0)
            and not all(o in outcome.result for o in objectives)
        ):
            return  # stopped by Ctrl-C before its result: never a FINISHED run without metrics; a resume runs it
        run_id, record = self._start(outcome, logged)
        if outcome.status == FINISHED and not outcome.result.get("final", 1.0):
            self._stopped(run_id, record, outcome)
        elif outcome.status == FINISHED:
            self._complete(run_id, record, outcome, reused=logged is not None)
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
        if logged is not None or outcome.run_id:
            # Reuse the run a crash, an outage or an earlier failure left behind.
            run_id = logged.run_id if logged is not None else str(outcome.run_id)
            self.client.update_run(run_id, status="RUNNING")
            for key, value in tags.items():
                self.client.set_tag(run_id, key, value)
        else:
            name = trial_label(outcome.number)
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={**tags, TAG_PARETO: "false"},  # made true below if it joins the front
                start_time=_trial_times(result)[0],
            ).info.run_id
            self.tagged[run_id] = {TAG_PARETO: "false", TAG_RUN_NAME: name}
            outcome.run_id = run_id
            if outcome.entry is not None and self.journal is not None:
                self.journal.update(outcome.entry, run_id=run_id)
        if "plan_json" in result:
            self.client.log_text(run_id, str(result["plan_json"]), PLAN_ARTIFACT)
        record = TrialRecord(
            outcome.number, run_id, outcome.status, outcome.params, plan_summary=summary, trial_id=outcome.trial_id
        )
        return run_id, record

    def _complete(self, run_id: str, record: TrialRecord, outcome: _Outcome, reused: bool = False) -> None:
        names = (*self.baseline_metrics, *ENGINE_METRICS)
        record.metrics = {k: float(outcome.result[k]) for k in names if k in outcome.result}
        log_params(self.client, run_id, outcome.params, record.metrics)
        if outcome.packed is not None:
            self.client.log_artifact(run_id, outcome.packed, PACKED_ARTIFACT_DIR)
        elif outcome.checkpoint is not None:
            with outcome.checkpoint.as_directory() as folder:
                self.client.log_artifact(run_id, os.path.join(folder, PACKED_NAME), PACKED_ARTIFACT_DIR)
        # only a reused run (an earlier failure of this trial) can carry an error tag: no read per new run
        if reused and TAG_ERROR in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, TAG_ERROR)
        self.client.set_terminated(run_id, FINISHED, end_time=_trial_times(outcome.result)[1])
        self._keep(record)
        hv = self.front.hypervolume
        self.client.log_metric(self.parent, "hypervolume", hv, step=self.front.finished)
        m = record.metrics
        self.progress(
            self._line(
                record,
                f"{self.quality} {m.get(self.quality, float('nan')):.4f}"
                + (f", deploy {m['deploy_bytes'] / 1024:.1f} KiB" if "deploy_bytes" in m else "")
                + f", packed {m.get('size_bytes', 0) / 1024:.1f} KiB, {m.get('compression_ratio', 0):.1f}x",
            )
        )

    def _line(self, record: TrialRecord, what: str) -> str:
        """``[done/total] trial-NNNN what | failed, elapsed, ETA, front size, HV``: one trial and where the search stands."""
        done = len(self._records)
        failed = sum(r.status == "FAILED" for r in self._records.values())
        elapsed = time.perf_counter() - self._clock
        pace = elapsed / max(done - self._done_before, 1)
        eta = _clock_text(pace * max(self.config.trials - done, 0))
        width = len(str(self.config.trials))
        return (
            f"[{done:>{width}}/{self.config.trials}] {trial_label(record.number)} {what} | {failed} failed, "
            f"{_clock_text(elapsed)} elapsed, ETA {eta}, front {len(self.front.members)}, HV {self.front.hypervolume:.4f}"
        )

    def _stopped(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        """A trial the scheduler stopped early: its partial metrics, no artifact, off the front."""
        record.status = STOPPED
        record.metrics = {
            k: float(v)
            for k, v in outcome.result.items()
            if k in (*self.baseline_metrics, "size_bytes", "epoch") and isinstance(v, (int, float))
        }
        log_params(self.client, run_id, outcome.params, record.metrics)
        epoch = int(record.metrics.get("epoch", 0))
        self.client.set_tag(run_id, TAG_EARLY_STOPPED, f"after epoch {epoch}")
        self.client.set_terminated(run_id, "KILLED")
        self._keep(record)
        self.progress(
            self._line(
                record,
                f"stopped early at epoch {epoch}, {self.quality} {record.metrics.get(self.quality, float('nan')):.4f}",
            )
        )

    def _fail(self, run_id: str, record: TrialRecord, outcome: _Outcome) -> None:
        text = str(outcome.result.get(TRIAL_ERROR, "")) or outcome.error_text
        if not text and outcome.error_file and os.path.exists(outcome.error_file):
            with open(outcome.error_file) as f:
                text = f.read()
        lines = [line for line in text.splitlines() if line.strip() and not line.startswith("Failure # ")]
        record.error = lines[-1].strip()[:500] if lines else "unknown error"
        log_params(self.client, run_id, outcome.params)
        if text:
            self.client.log_text(run_id, text, "error.txt")
        self.client.set_tag(run_id, TAG_ERROR, record.error)
        self.client.set_terminated(run_id, "FAILED")
        self._keep(record)
        self.progress(self._line(record, f"FAILED: {record.error}"))
