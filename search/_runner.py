"""Run a compression search: validate and prepare, then Ray Tune + OptunaSearch, tracked in MLflow."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from rayzor.compression import measure_latency, state_dict_bytes
from rayzor.errors import ConfigError
from rayzor.search._config import SearchConfig, check_local, resolve_objectives, validate_config
from rayzor.search._journal import Journal, journal_folder
from rayzor.search._ray import check_ray_address, ray_address, start_ray, trial_request
from rayzor.search._records import TrialRecord
from rayzor.search._report import log_report
from rayzor.search._resume import check_tune_state, load_resume_state, resumed_config, write_resume_state
from rayzor.search._sensitivity import search_phase
from rayzor.search._tags import ROLE_SEARCH, TAG_OBJECTIVES, TAG_RESUMABLE, TAG_ROLE
from rayzor.search._tracker import TRACKERS, Tracker, TrackingOutage, is_outage
from rayzor.search._tracking import connect, log_params, resolve_tracking_uri
from rayzor.search._trial import deploy_baseline, latency_seconds_for
from rayzor.search._tuner import make_trainable, make_tuner, warm_start_points
from rayzor.spaces import CompressionSpace, StudentSpace
from rayzor.tasks import Task, create_task

__all__ = ["Prepared", "SearchInterrupted", "SearchResult", "prepare", "run_search", "sync_search", "warm_start_points"]

#: Seconds between Tune's experiment-state saves during a search (Tune's own default
#: is adaptive, >= 10 s). A trial created after the last save is unknown to a
#: restored experiment, so its slot would be sampled and run again. At 1 s a digits
#: trial (about 0.3 s) could be created, finish and be logged inside one period and
#: still run again after a SIGKILL (CI hit it once); at 0.1 s no trial is that short.
#: Measured on the default digits search: overhead ratio 1.92 / 2.05 at 0.1 s against
#: 2.03 / 2.02 at 1 s (two runs each, interleaved).
EXPERIMENT_SAVE_SECONDS = "0.1"


class SearchInterrupted(KeyboardInterrupt):
    """A search stopped by Ctrl-C (or SIGINT): its parent run is KILLED and resumable.

    Attributes:
        name: The search's name, for ``rayzor search --resume NAME``.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


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
    #: When ``fit()`` started (epoch seconds): trial runs' start times are on the same clock.
    fit_started: float = 0.0


@dataclass
class Prepared:
    """A search ready to run: its resolved config and what was built from it before Ray starts.

    Attributes:
        config: The config, its objectives resolved against the task.
        client: An ``MlflowClient`` of the tracking store.
        tracking_uri: The resolved tracking URI.
        experiment_id: The MLflow experiment.
        task: The task (model, data, metric).
        space: The search space on the task's model (a :class:`~spaces.StudentSpace` with students).
        baseline: The task's validation metrics, the fp32 size and latency.
    """

    config: SearchConfig
    client: Any
    tracking_uri: str
    experiment_id: str
    task: Task
    space: CompressionSpace | StudentSpace
    baseline: dict[str, float]


def prepare(config: SearchConfig, progress: Callable[[str], None] = lambda line: None) -> Prepared:
    """Everything that can fail on bad input, before Ray starts; the one place the config is completed.

    The task, space and local resources are resolved first, and only then is
    the tracking store opened: bad input writes nothing.

    Args:
        config: The search.
        progress: Receives a line as each set-up phase starts.

    Raises:
        ConfigError: an unreachable cluster or tracking store, a task or space
            that does not build, objectives that are not the task's, resources
            or paths this machine cannot provide.
    """
    check_ray_address(config, client=False)
    check_local(config, local=ray_address(config)[0] is None and not _ray_running())
    progress(f"loading task {config.task!r}")
    task = create_task(config.task, **config.task_options)
    config = resolve_objectives(config, task)
    teacher_space = config.space.build(
        task.model,
        config.finetune(),
        example_input=task.example_input,
        target=config.target,
        accuracy_level=config.accuracy_level,
    )
    space: CompressionSpace | StudentSpace = teacher_space
    if config.students.families:
        space = StudentSpace(teacher_space, task.model, config.students.families, config.students.include_teacher)
    progress("measuring the fp32 baseline")
    baseline = {
        **task.baseline["val"],
        "size_bytes": float(state_dict_bytes(task.model)),
        # one thread, as in a trial, so latency ratios compare like with like
        "latency_ms": measure_latency(task.model, task.example_input, threads=1),
    }
    if config.target == "onnxruntime":
        baseline.update(deploy_baseline(task, latency_seconds_for(config.resolved_objectives)))
    progress(f"connecting to MLflow at {resolve_tracking_uri(config.tracking_uri)}")
    client, uri, experiment_id = connect(config.tracking_uri, config.experiment)
    return Prepared(config, client, uri, experiment_id, task, space, baseline)


def _ray_running() -> bool:
    """A Ray this process already joined (a notebook, a test session): its resources are not this machine's."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def _open_parent(client: Any, experiment_id: str, name: str, config: SearchConfig, state: dict[str, Any] | None) -> str:
    """Create the search's parent run, or reopen the one of a resumed search."""
    from mlflow.exceptions import MlflowException

    if state is None:
        tags = {TAG_ROLE: ROLE_SEARCH, TAG_OBJECTIVES: ",".join(config.resolved_objectives)}
        return str(client.create_run(experiment_id, run_name=name, tags=tags).info.run_id)
    try:
        client.update_run(state["parent_run_id"], status="RUNNING")
    except MlflowException:
        raise ConfigError(
            "--resume", name, f"a search whose parent run {state['parent_run_id']} is in {config.tracking_uri}"
        ) from None
    return str(state["parent_run_id"])


def _log_parent(
    p: Prepared, parent_id: str, name: str, storage: str, request: dict[str, float], concurrency: int
) -> None:
    """The parent run's params (config, space, baseline, resources) and its config and space artifacts."""
    config, space = p.config, p.space
    log_params(
        p.client,
        parent_id,
        {
            **config.model_dump(exclude={"space", "task_options", "concurrency"}),
            "concurrency": concurrency,
            "task_options": config.task_options,
            "space.sparsity": list(config.space.sparsity),
            "space.bits": list(config.space.bits),
            "dimensions": space.dimensions,
            "layers": len(space.layers),
            "search_name": name,
            "storage_path": storage,
            "trial_resources": request,
            **{f"baseline.{k}": v for k, v in p.baseline.items()},
        },
    )
    p.client.log_text(parent_id, config.model_dump_json(indent=2), "search_config.json")
    p.client.log_text(parent_id, json.dumps(space.describe(), indent=2), "space.json")


def _storage(config: SearchConfig) -> str:
    path = config.storage_path or "rayzor-results"
    return path if "://" in path else str(Path(path).resolve())


def _warm_start(
    p: Prepared, parent_id: str, state: dict[str, Any] | None, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Set ``space.warm_start`` (probed on Ray, or read back on resume) and return the enqueued points."""
    if state is not None:
        p.space.warm_start = state.get("warm_start_points", [])  # not probed again: Tune restores the searcher
    elif p.config.warm_start == "sensitivity":  # on Ray, before any trial; logged under sensitivity/
        # with students, the probes (and the warm-start plans) are the teacher's
        probed = p.space.teacher_space if isinstance(p.space, StudentSpace) else p.space
        p.space.warm_start = search_phase(p.client, parent_id, p.task, probed, progress).points
    return warm_start_points(p.space, p.config)


def _default_name() -> str:
    # a random suffix: two searches started in the same second must not share a folder
    return datetime.now().strftime("search-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _refuse_taken_name(storage: str, name: str) -> None:
    """Refuse a new search whose folder ``STORAGE/NAME`` already exists (before MLflow or Ray start)."""
    import pyarrow.fs

    fs, path = (
        pyarrow.fs.FileSystem.from_uri(f"{storage.rstrip('/')}/{name}")
        if "://" in storage
        else (pyarrow.fs.LocalFileSystem(), str(Path(storage) / name))
    )
    if fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound:
        raise ConfigError(
            "--name", name, f"a name not used under {storage} yet (continue that search with --resume {name})"
        )


#: Environment Tune reads when ``fit()`` starts, set around it unless the user set it:
#: the experiment-save period (see :data:`EXPERIMENT_SAVE_SECONDS`), and no per-trial
#: ``result.json`` / ``progress.csv`` / TensorBoard files. A search's results live in
#: MLflow; those loggers only cost the driver: a TensorBoard writer (a process-wide
#: queue and a thread) per trial, a write per result, and files that every experiment
#: save copies to the storage path again (py-spy on the digits search: about 15% of
#: the driver's samples inside Tune's loop).
TUNE_ENV = {"TUNE_GLOBAL_CHECKPOINT_S": EXPERIMENT_SAVE_SECONDS, "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}


@contextmanager
def _fit_guard() -> Iterator[Callable[[], bool]]:
    """Around ``fit()``: :data:`TUNE_ENV` (what the user set is kept), and whether Tune's Ctrl-C handler fired.

    Tune replaces the SIGINT handler during a run, stops the trials
    gracefully on the first SIGINT and puts the previous handler back; it
    never restores it otherwise. So: install a marker handler first (a second
    Ctrl-C raises KeyboardInterrupt), and after the run, the marker being
    back means Tune was interrupted. The caller's handler is restored.
    """

    def marker(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        before = signal.signal(signal.SIGINT, marker)
    except ValueError:  # not the main thread: Tune installs nothing either
        yield lambda: False
        return
    unset = [k for k in TUNE_ENV if k not in os.environ]
    os.environ.update({k: TUNE_ENV[k] for k in unset})
    # Without the logger files, the ResultGrid fit() builds at its end warns, per trial,
    # that it found no metrics file: the results are read from MLflow, not from there.
    analysis = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = analysis.level
    analysis.setLevel(logging.ERROR)
    try:
        yield lambda: signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, before)
        analysis.setLevel(level)
        for key in unset:
            os.environ.pop(key, None)


def _end_parent(client: Any, parent_id: str, status: str, journal: Journal) -> None:
    """End the parent run (tagged resumable unless it finished); if the store does not answer,
    keep its end in the journal for ``rayzor sync`` / ``--resume``."""
    tags = {TAG_RESUMABLE: "false" if status == "FINISHED" else "true"}
    try:
        for key, value in tags.items():
            client.set_tag(parent_id, key, value)
        client.set_terminated(parent_id, status)
    except Exception as exc:
        if not is_outage(exc):
            raise
        journal.set_parent(parent_id, status, tags)


def _http_settings(uri: str | None) -> None:
    """MLflow's HTTP client as a search needs it, for a server given as ``uri`` or by
    ``MLFLOW_TRACKING_URI`` (each setting unless the user set it).

    Short retries: the tracker retries an outage itself, off the event loop,
    where MLflow's own default backoff would hold each write for minutes. No
    "View run ... at" line per ended run: MLflow prints two lines for each of a
    search's runs against a server, between the progress lines, and fetches
    the run once more to print them; the search prints its own browse links.
    """
    if resolve_tracking_uri(uri).startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def sync_search(search: str, storage_path: str | None = None, *, wait_seconds: float = 60.0) -> tuple[int, int]:
    """Write what a search's journal holds (after a tracking outage) to its MLflow store.

    Args:
        search: The search's folder or name (as for ``--resume``).
        storage_path: Where its name is looked up.
        wait_seconds: How long to retry a store that does not answer.

    Returns:
        ``(written, left)``: trial results written, and those still in the journal.

    Raises:
        ConfigError: no such search, or its store is unreachable.
    """
    _, state = load_resume_state(search, storage_path)
    config = validate_config(state["config"])
    _http_settings(config.tracking_uri)
    client, uri, experiment_id = connect(config.tracking_uri, config.experiment)
    journal = Journal(journal_folder(state["storage_path"], state["name"]))
    parent = client.get_run(state["parent_run_id"])
    baseline = {k[len("baseline.") :]: float(v) for k, v in parent.data.params.items() if k.startswith("baseline.")}
    config = config.model_copy(update={"objectives": tuple(parent.data.tags[TAG_OBJECTIVES].split(","))})
    tracker = Tracker(
        uri,
        experiment_id,
        parent.info.run_id,
        config,
        state.get("warm_start_points", []),
        baseline,
        lambda line: None,
        journal=journal,
        name=state["name"],
    )
    pending = tracker.unwritten
    try:
        tracker.close(wait_seconds)
    except TrackingOutage:
        return pending - tracker.unwritten, tracker.unwritten
    end = journal.parent()
    if end is not None:
        _end_parent(client, end["run_id"], end["status"], journal)
        journal.clear_parent()
    return pending, 0


def run_search(
    config: SearchConfig, *, progress: Callable[[str], None] = print, resume: str | None = None
) -> SearchResult:
    """Run one search end to end and return its Pareto front.

    Bad input raises :class:`~rayzor.errors.ConfigError` before Ray
    starts (or, for resources the cluster lacks, before any trial queues).
    The parent MLflow run ends FINISHED, or FAILED/KILLED (tagged
    ``rayzor.resumable``) if the search itself breaks or is interrupted. A
    trial whose code raises is attempted once and logged FAILED; a trial
    whose worker or node is lost is retried ``max_failures`` times. Ctrl-C
    stops the running trials (none is logged), and raises
    :class:`SearchInterrupted`.

    Args:
        config: The search.
        progress: Receives a line as each set-up phase starts, then one per finished trial.
        resume: A search folder or name (see :func:`load_resume_state`):
            restore its Tune experiment and Optuna study, reuse its MLflow
            parent run and finish its budget; trials it logged are not run
            again. ``config`` then only supplies a new ``address``.

    Raises:
        ConfigError: bad input, or a ``name`` already used (without ``resume``).
        SearchInterrupted: Ctrl-C; resume with ``resume=name``.
    """
    restore_path, state = None, None
    if resume is not None:
        restore_path, state = load_resume_state(resume, config.storage_path)
        check_tune_state(resume, restore_path)
        config = resumed_config(state, config)
    name = state["name"] if state else (config.name or _default_name())
    storage = state["storage_path"] if state else _storage(config)
    if state is None:
        _refuse_taken_name(storage, name)
    _http_settings(config.tracking_uri)
    p = prepare(config, progress)
    config, client = p.config, p.client
    journal = Journal(journal_folder(storage, name))
    journal.clear_parent()  # this run ends the parent itself
    started = time.perf_counter()
    address, _ = ray_address(config)
    progress(f"joining Ray at {address}" if address else "starting Ray")
    started_ray = start_ray(config)
    parent_id: str | None = None
    tracker: Tracker | None = None
    status = "FAILED"
    try:
        request, concurrency = trial_request(config)
        parent_id = _open_parent(client, p.experiment_id, name, config, state)
        if state is None:
            _log_parent(p, parent_id, name, storage, request, concurrency)
        warm_points = _warm_start(p, parent_id, state, progress)
        if state is None:
            write_resume_state(
                f"{storage.rstrip('/')}/{name}",
                {
                    "name": name,
                    "storage_path": storage,
                    "parent_run_id": parent_id,
                    "experiment_id": p.experiment_id,
                    "warm_start_points": p.space.warm_start,  # the tracker tags them again after a resume
                    "config": config.model_copy(update={"tracking_uri": p.tracking_uri}).model_dump(mode="json"),
                    "concurrency_given": "concurrency" in config.model_fields_set,
                },
            )
        task, baseline = p.task, p.baseline
        progress(
            f"search {name}: {config.trials} trials x {p.space.dimensions} dims on task {task.name!r} "
            f"(fp32 {task.metric} {baseline[task.metric]:.4f}, {baseline['size_bytes'] / 1024:.1f} KiB), sampler {config.sampler}, "
            f"{concurrency} at a time, {request} per trial" + (" (resumed)" if state else "")
        )
        if "latency_ms" in config.resolved_objectives and concurrency > 1:
            # Measured on MiniLM: trials timed beside another trial's compute logged 1.7-2.7x their
            # fresh-process latency (BENCHMARKS.md, minilm); small models were not affected.
            progress(
                f"note: latency_ms is an objective and {concurrency} trials run at once: each is timed while the "
                "others compute, which can inflate it on a busy CPU; `rayzor export` re-times the file alone"
            )
        tracker = TRACKERS[parent_id] = Tracker(
            p.tracking_uri, p.experiment_id, parent_id, config, warm_points, baseline, progress, journal, name
        )
        trainable = make_trainable(config, task, p.space, baseline, request, replay=tracker.replay())
        tuner = make_tuner(config, trainable, p.space, warm_points, name, storage, concurrency, parent_id, restore_path)
        # A failed trial is reported as one line and logged (with its traceback)
        # in its MLflow run; Tune's own logger would print every traceback too.
        logging.getLogger("ray.tune.execution.tune_controller").setLevel(logging.CRITICAL)
        fit_started, fit_started_at = time.perf_counter(), time.time()
        with _fit_guard() as interrupted:
            tuner.fit()
            if interrupted():
                tracker.close(config.tracking_wait)  # what finished is logged; the stopped trials are not
                raise KeyboardInterrupt
        fit_seconds = time.perf_counter() - fit_started
        tracker.close(config.tracking_wait)  # every child run is written before the Pareto tags
        front = tracker.front.members
        log_report(client, parent_id, tracker.records, front, config.resolved_objectives, baseline, tracker.tagged)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise SearchInterrupted(name) from None
    finally:
        if tracker is not None:
            TRACKERS.pop(tracker.parent, None)
            if status != "FINISHED":
                tracker.close_quietly(config.tracking_wait)
        if parent_id is not None:
            # a parent that did not finish says so, and that --resume continues it; never left RUNNING
            _end_parent(client, parent_id, status, journal)
        if started_ray:
            import ray

            ray.shutdown()
    assert parent_id is not None and tracker is not None  # set whenever the try block completed
    return SearchResult(
        parent_run_id=parent_id,
        experiment_id=p.experiment_id,
        tracking_uri=p.tracking_uri,
        objectives=config.resolved_objectives,
        trials=tracker.records,
        pareto=sorted(front, key=lambda r: r.metrics.get("deploy_bytes", r.metrics["size_bytes"])),
        hypervolume=tracker.front.hypervolume,
        baseline=baseline,
        wall_seconds=time.perf_counter() - started,
        fit_seconds=fit_seconds,
        fit_started=fit_started_at,
        storage_path=storage,
        name=name,
        concurrency=concurrency,
        logging_seconds=tracker.logging_seconds(),
    )
