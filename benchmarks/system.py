"""Benchmark: what Ray Tune, Optuna and MLflow cost around the trials, with and without reproducible mode.

Runs the digits search with 32 trials at concurrency 1 and 2, each with
``deterministic: false`` (results told as they arrive, as before issue 16)
and ``deterministic: true`` (the default: results told in trial order, a trial
may wait for an older one), interleaved, in one process and one Ray instance,
and reports for each:

* the overhead ratio = Tune fit wall time / (sum of trial compute / concurrency),
  where 1.0 would mean the machinery costs nothing;
* the overhead per trial, (fit wall - sum of compute / concurrency) / trials;
* throughput in trials per minute, and the speed-up of concurrency 2 over 1;
* the whole ``run_search`` wall beside the fit wall, so work moved out of
  ``fit()`` would show;
* where the fit wall goes, from the trials' MLflow start and end times: the
  time from ``fit()`` to the first trial's start (Tune's start and the trial
  workers' start: a new process per worker, ``import torch``), the overhead per
  trial after that, and the floor: the overhead ratio that start alone
  leaves, were every later per-trial cost zero.

Every configuration runs ``--repeats`` times (interleaved) and the median is
reported: on a shared machine one run is noise. ``--finetune-epochs`` makes
the trials longer (the default digits trial is about 0.3 s). ``--before``
names a ``results/*.json`` this script wrote at an earlier commit: its table
is shown above the new one. ``--name`` picks the results file and section.
``--start-up-ab`` adds concurrency 2, reproducible, with the sampler's start-up
trials waiting for older ones as they did before ``blind_trials``, interleaved
with the rest; ``--defer-ab`` adds it with the searcher answering "not yet"
(the trial waits unstarted) as before deferred params. ``--task`` runs a task spec instead of digits (its module may
live in benchmarks/, e.g. ``slow_tail_task:make_task``, trial times with a
heavy tail); every search's row entry counts the worker processes that
hosted its trials.

Writes benchmarks/results/NAME.json and the "NAME" section of BENCHMARKS.md (NAME: system).

    python benchmarks/system.py [--trials 32] [--repeats 2] [--finetune-epochs N] [--before JSON] [--name NAME] [--start-up-ab] [--defer-ab] [--task SPEC]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

#: Variants of the reproducible mode, as it was before a change (``--start-up-ab``, ``--defer-ab``).
START_UP_WAITS = "start-up waits"
UNDEFERRED = "undeferred"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--note", default="", help="a sentence on the machine's load, for the report")
    parser.add_argument("--finetune-epochs", type=int, default=None, help="default: the search default")
    parser.add_argument("--before", default=None, help="a results JSON of this script at an earlier commit")
    parser.add_argument("--before-label", default="an earlier commit", help="what --before measured")
    parser.add_argument("--name", default="system", help="results file and BENCHMARKS.md section")
    parser.add_argument(
        "--task",
        default=None,
        help="a task spec instead of the embedded digits (e.g. slow_tail_task:make_task, from benchmarks/)",
    )
    parser.add_argument(
        "--start-up-ab",
        action="store_true",
        help="also run concurrency 2, deterministic, with the sampler's start-up waiting as before blind_trials",
    )
    parser.add_argument(
        "--defer-ab",
        action="store_true",
        help="also run concurrency 2, deterministic, with a waiting trial unstarted as before deferred params",
    )
    args = parser.parse_args()
    before = json.loads(Path(args.before).read_text()) if args.before else None
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import ray

    from rayzor.search import OrderedOptunaSearch, _searcher, _tuner, blind_trials, load_config, run_search

    class Undeferred(OrderedOptunaSearch):
        """The searcher as before deferred params: a trial that must wait is not started (``suggest`` is None)."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "defer": None})

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-system-"))
    # The trial workers import a --task module from benchmarks/, as this process does.
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path[1:]])}} if args.task else None
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=env)
    workers = _WorkerCount()
    runs: dict[tuple[int, bool, str], list[dict]] = {}
    # A warm-up search first, so the measured runs find imports and caches warm.
    # (concurrency, deterministic, variant): a variant is the reproducible mode as it was before one
    # change, side by side with it, at concurrency 2 where it waits.
    variants = [v for v, on in ((START_UP_WAITS, args.start_up_ab), (UNDEFERRED, args.defer_ab)) if on]
    modes = [(c, d, "") for c in (1, 2) for d in (False, True)] + [(2, True, v) for v in variants]
    plan = [(2, True, "")] + [mode for _ in range(args.repeats) for mode in modes]
    for i, (concurrency, deterministic, variant) in enumerate(plan):
        # The searcher runs in this process, and make_tuner looks both names up when it builds it.
        _tuner.blind_trials = (lambda name, trials: 0) if variant == START_UP_WAITS else blind_trials
        _searcher.OrderedOptunaSearch = Undeferred if variant == UNDEFERRED else OrderedOptunaSearch
        config = load_config(
            None,
            trials=args.trials,
            concurrency=concurrency,
            experiment="system",
            task=args.task,
            tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
            storage_path=str(scratch / "ray"),
            finetune_epochs=args.finetune_epochs,
        ).model_copy(update={"deterministic": deterministic})
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        with workers:
            result = run_search(config, progress=lambda line: None)
        used = resource.getrusage(resource.RUSAGE_SELF)
        compute = sum(r.metrics["trial_seconds"] for r in result.trials if r.status == "FINISHED")
        starts, ends = _trial_times(result)
        to_first = min(starts) - result.fit_started
        row = {
            "fit_s": result.fit_seconds,
            "search_wall_s": result.wall_seconds,
            "sum_trial_compute_s": compute,
            "overhead_ratio": result.fit_seconds / (compute / concurrency),
            "overhead_per_trial_s": (result.fit_seconds - compute / concurrency) / args.trials,
            "trials_per_minute": 60 * args.trials / result.fit_seconds,
            "to_first_trial_s": to_first,
            # after the first trial started: the per-trial machinery (Tune's loop, the result, the next plan)
            "overhead_after_start_per_trial_s": (max(ends) - min(starts) - compute / concurrency) / args.trials,
            "after_last_trial_s": result.fit_started + result.fit_seconds - max(ends),
            "ratio_floor": (to_first + compute / concurrency) / (compute / concurrency),
            # CPU of this process (Tune's loop, the MLflow writer, set-up): robust where walls are noise
            "driver_cpu_s": used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime,
            # a new process each (5-6 s of start and imports before its first trial); `concurrency` when
            # Tune kept every trial actor for the next trial
            "worker_processes": workers.started,
        }
        print(concurrency, deterministic, variant, row, flush=True)
        if i:
            runs.setdefault((concurrency, deterministic, variant), []).append(row)
    ray.shutdown()
    rows = [
        {
            "concurrency": c,
            "deterministic": d,
            **({"variant": v} if v else {}),
            "runs": rs,
            **{k: statistics.median(r[k] for r in rs) for k in rs[0]},
        }
        for (c, d, v), rs in sorted(runs.items())
    ]
    speedups = _speedups(rows)
    report = {
        "command": "python benchmarks/system.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
        **machine(),
        "trials": args.trials,
        "task": args.task or "digits",
        "finetune_epochs": config.finetune_epochs,
        "repeats": args.repeats,
        "note": args.note,
        "rows": rows,
        "speedup_2_over_1": {str(d).lower(): s for d, s in speedups.items()},
    }
    write_result(args.name, report)
    replace_section(args.name, _section(args.name, report, before, args.before_label))
    shutil.rmtree(scratch, ignore_errors=True)


#: What Ray titles a worker process that hosts a Tune trial of a function trainable.
TRIAL_ACTOR = "ImplicitFunc"


class _WorkerCount:
    """Counts the trial worker processes Ray's raylet starts while a search runs (Linux ``/proc``).

    Polls the raylet's children every 0.2 s from a thread and counts those Ray
    titles as a Tune trial actor; a worker hosts one for at least a trial, so
    none is missed. Idle workers Ray starts for its pool are not counted. Ray's
    state API would need the dashboard, which this benchmark does not start.
    """

    def __init__(self) -> None:
        self.started = 0
        self._raylet = next(
            p for p in os.listdir("/proc") if p.isdigit() and Path(f"/proc/{p}/comm").read_text().strip() == "raylet"
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _children(self) -> set[str]:
        kids: set[str] = set()
        for task in Path(f"/proc/{self._raylet}/task").iterdir():
            try:
                kids.update((task / "children").read_text().split())
            except OSError:
                pass  # a raylet thread that just ended
        return kids

    def _poll(self, before: set[str]) -> None:
        trials: set[str] = set()
        while not self._stop.wait(0.2):
            for pid in self._children() - before - trials:
                try:  # Ray titles a worker by the actor it hosts: ray::ImplicitFunc... for a Tune trial
                    if TRIAL_ACTOR in Path(f"/proc/{pid}/cmdline").read_text():
                        trials.add(pid)
                except OSError:
                    pass  # ended between the listing and the read
        self.started = len(trials)

    def __enter__(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, args=(self._children(),), daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()


def _each(run: dict) -> str:
    """One search's overhead ratio, with its trial worker processes where the run counted them."""
    workers = f" ({run['worker_processes']})" if "worker_processes" in run else ""
    return f"{run['overhead_ratio']:.2f}{workers}"


def _task_text(report: dict) -> str:
    """The task a report ran: digits, or a --task spec with what it is."""
    task = report.get("task", "digits")
    if task == "digits":
        return "digits"
    return f"`{task}` (from benchmarks/, see its docstring)"


def _section(name: str, report: dict, before: dict | None, before_label: str) -> str:
    """The BENCHMARKS.md section of a report (and of the ``--before`` one above it)."""
    lines = [
        f"## {name}: overhead and throughput",
        "",
        f"Task {_task_text(report)}, default space, {report['trials']} trials per search, fine-tune epochs {report['finetune_epochs']}, "
        "one Ray instance (num_cpus=2), actors reused between trials, MLflow sqlite store; a warm-up search ran "
        "first and is not counted. Each row is the median of the searches of its configuration, the "
        "configurations interleaved. `deterministic: false` tells Optuna each result as it arrives (the "
        "behaviour before reproducible mode); `true` (the default) tells them in trial order. "
        "Overhead ratio = Tune fit wall / (sum of trial compute / concurrency); search wall = all of `run_search`; "
        "driver CPU = user + system CPU of the driver process over `run_search` (Tune's loop, the MLflow writer, "
        "set-up; not the trial workers), which other jobs on the machine barely move. "
        "To first trial = from `fit()` to the first trial's start (Tune's start, then each trial worker is a new "
        "process that imports Ray Tune, torch and rayzor, and since a4dc927 what its first trial would import "
        "lazily, torch._dynamo and onnx, before its first trial: see worker_startup); after it, overhead per trial = "
        "(last trial's end - first trial's start - compute / concurrency) / trials; floor = the overhead ratio "
        "that the time to the first trial alone leaves (every later per-trial cost zero); each search's overhead "
        "ratio shows a stalled search, which a median hides, and beside it the worker processes that hosted its "
        "trials (`concurrency` when Tune kept each trial actor for the next trial; each extra one is a new "
        "process that spends 5-6 s on its start and imports). `true, start-up waits`: the reproducible mode as it was before the "
        "sampler's start-up trials stopped waiting for older trials (`blind_trials` forced to 0 in this process, "
        "where the searcher runs). `true, undeferred`: the reproducible mode as it was before deferred params "
        '(a trial that must wait for older ones is not started: the searcher answers Tune "not yet").',
        "",
    ]
    if before is not None:
        lines += [f"Before ({before_label}):", "", *_table(before), "", "After (this commit):", ""]
    lines += _table(report)
    return "\n".join(lines)


def _trial_times(result: Any) -> tuple[list[float], list[float]]:
    """The finished trials' start and end (epoch seconds), as their MLflow runs record them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    infos = [client.get_run(r.run_id).info for r in result.trials if r.status == "FINISHED"]
    return [i.start_time / 1000 for i in infos], [i.end_time / 1000 for i in infos]


def _speedups(rows: list[dict]) -> dict[bool, float]:
    """Trials per minute at concurrency 2 over concurrency 1, per ``deterministic``."""
    by = {(r["concurrency"], r["deterministic"]): r for r in rows if not _variant(r)}
    return {d: by[(2, d)]["trials_per_minute"] / by[(1, d)]["trials_per_minute"] for d in (False, True)}


def _variant(row: dict) -> str:
    """A row's variant (older reports flag the one they had)."""
    return str(row.get("variant") or (START_UP_WAITS if row.get("start_up_waits") else ""))


def _table(report: dict) -> list[str]:
    """A report's command, machine, rows and speed-up, as Markdown lines (older reports lack the search wall)."""
    speedups = _speedups(report["rows"])
    lines = [
        f"Command: `{report['command']}` ({describe_machine(report)}; {report['repeats']} repeats). {report['note']}",
        "",
        "| concurrency | deterministic | Tune fit wall (s) | search wall (s) | sum of trial compute (s) "
        "| overhead ratio | overhead per trial (s) | trials / min | driver CPU (s) "
        "| to first trial (s) | after it, overhead per trial (s) | floor | overhead ratio (trial worker processes), "
        "each search |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        wall = f"{r['search_wall_s']:.1f}" if "search_wall_s" in r else "-"
        cpu = f"{r['driver_cpu_s']:.1f}" if "driver_cpu_s" in r else "-"
        first = f"{r['to_first_trial_s']:.1f}" if "to_first_trial_s" in r else "-"
        after = f"{r['overhead_after_start_per_trial_s']:.3f}" if "overhead_after_start_per_trial_s" in r else "-"
        floor = f"{r['ratio_floor']:.2f}" if "ratio_floor" in r else "-"
        waits = f", {_variant(r)}" if _variant(r) else ""
        each = ", ".join(_each(run) for run in r["runs"]) if "runs" in r else "-"
        lines.append(
            f"| {r['concurrency']} | {str(r['deterministic']).lower()}{waits} | {r['fit_s']:.1f} | {wall} | "
            f"{r['sum_trial_compute_s']:.1f} | {r['overhead_ratio']:.2f} | {r['overhead_per_trial_s']:.2f} | "
            f"{r['trials_per_minute']:.0f} | {cpu} | {first} | {after} | {floor} | {each} |"
        )
    work = _work_speedups(report["rows"])
    lines += [
        "",
        f"Throughput speed-up of concurrency 2 over 1 on 2 cores: **{speedups[True]:.2f}x** deterministic, "
        f"{speedups[False]:.2f}x not. In trial compute done per second of wall (2 x the concurrency-1 overhead "
        f"ratio / the concurrency-2 one; the fairer figure where the searches' plans, and so their compute, "
        f"differ): {work[True]:.2f}x deterministic, {work[False]:.2f}x not.",
    ]
    return lines


def _work_speedups(rows: list[dict]) -> dict[bool, float]:
    """Trial compute per wall second at concurrency 2 over concurrency 1, per ``deterministic``."""
    by = {(r["concurrency"], r["deterministic"]): r for r in rows if not _variant(r)}
    return {d: 2 * by[(1, d)]["overhead_ratio"] / by[(2, d)]["overhead_ratio"] for d in (False, True)}


if __name__ == "__main__":
    main()
