"""Benchmark: what each fault a user meets leaves behind, counted from the MLflow store.

Every search is a real ``rayzor search`` subprocess (its own Ray) on the
digits task, signalled as a terminal would. Scenarios:

* ``sigint``: Ctrl-C (SIGINT) after 3 logged trials, then ``--resume``;
* ``sigkill x2``: SIGKILL of the driver after 3 logged trials, ``--resume``,
  SIGKILL again after 2 more, ``--resume``;
* ``raising trial``: a task whose evaluation always raises (``max_failures: 2``);
* ``two at once``: two searches started together on a fresh sqlite store;
* ``duplicate --name``: a new search given a name already used;
* ``tracking outage``: a real ``mlflow server`` (HTTP, one worker) stopped after
  1 logged trial and kept down past the end of the search, restarted, then ``--resume``;
* ``clean``: an uninterrupted search, with rayzor's 1 s experiment saves and
  with Tune's adaptive ones (``TUNE_GLOBAL_CHECKPOINT_S=auto``): the cost of the
  frequent saves, as the ratio of the two wall times.

Counts per scenario: requested trials, FINISHED with metrics, FAILED,
duplicated (trials with more than one live run), re-run (trials finished
before a fault that ran again: a changed run or an orphan), runs left
RUNNING (soft-deleted runs and parents included), and code attempts of the
raising trials. Writes benchmarks/results/faults.json and the "faults"
section of BENCHMARKS.md.

    python benchmarks/faults.py [--trials 8]
    python benchmarks/faults.py --render    # the section again, from benchmarks/results/faults.json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, ROOT, describe_machine, machine, replace_section, write_result  # noqa: E402

RAYZOR = [sys.executable, "-c", "from rayzor.search.cli import main; main()"]
YAML = """trials: {trials}
concurrency: 2
finetune_epochs: {epochs}
sampler: random
warm_start: none
target: packed
storage_path: {root}/ray
space:
  sparsity: [0.0, 0.5]
  bits: [4, 8]
"""


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
        "RAY_AUTH_MODE": "disabled",
        "RAY_AIR_NEW_OUTPUT": "0",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        **extra,
    }


class Scenario:
    """One scratch folder, its sqlite store and the searches run in it."""

    def __init__(
        self, trials: int, epochs: int = 1, extra: str = "", env: dict[str, str] | None = None, uri: str | None = None
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rayzor-faults-"))
        self.trials = trials
        self.config = self.root / "search.yaml"
        self.config.write_text(YAML.format(trials=trials, epochs=epochs, root=self.root) + extra)
        self.uri = uri or f"sqlite:///{self.root / 'mlflow.db'}"
        self.env = _env(**(env or {}))
        self.codes: list[int] = []
        self.finished_before: dict[str, int] = {}

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [*RAYZOR, "search", *args, "--tracking-uri", self.uri],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def new(self, name: str) -> subprocess.Popen:
        return self.start(str(self.config), "--name", name)

    def resume(self, name: str) -> subprocess.Popen:
        return self.start("--resume", name, "--storage-path", str(self.root / "ray"))

    def finish(self, proc: subprocess.Popen) -> str:
        out, err = proc.communicate()
        self.codes.append(proc.returncode)
        self._end_group(proc)
        return out + err

    def signal_after(self, proc: subprocess.Popen, logged: int, sig: int) -> None:
        """Send ``sig`` once ``logged`` trials were logged; wait for the process; stop its group."""
        seen = 0
        assert proc.stdout is not None
        while seen < logged:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line.startswith("[")
        if sig == signal.SIGKILL:
            time.sleep(1.0)  # mid-way through the next trials
        proc.send_signal(sig)
        proc.communicate()
        self.codes.append(proc.returncode)
        self._end_group(proc)
        for trial_id, run in self._finished().items():
            self.finished_before.setdefault(trial_id, run.info.end_time)

    @staticmethod
    def _end_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes a killed driver leaves behind
        except ProcessLookupError:
            pass

    def _client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def _runs(self, deleted: bool) -> list[Any]:
        from mlflow.entities import ViewType

        client = self._client()
        experiment = client.get_experiment_by_name("rayzor")
        if experiment is None:
            return []
        view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
        return client.search_runs([experiment.experiment_id], run_view_type=view, max_results=10000)

    def _finished(self) -> dict[str, Any]:
        runs = self._runs(False)
        objectives = {
            r.info.run_id: r.data.tags.get("rayzor.objectives", "").split(",")
            for r in runs
            if r.data.tags.get("rayzor.role") == "search"
        }
        return {
            r.data.tags["rayzor.trial_id"]: r
            for r in runs
            if r.data.tags.get("rayzor.role") == "trial"
            and r.info.status == "FINISHED"
            and all(o in r.data.metrics for o in objectives.get(r.data.tags.get("mlflow.parentRunId", ""), ["?"]))
        }

    def counts(self, searches: int = 1) -> dict[str, Any]:
        live = [r for r in self._runs(False) if r.data.tags.get("rayzor.role") == "trial"]
        every = self._runs(True)
        finished = self._finished()
        per_trial = Counter((r.data.tags.get("mlflow.parentRunId"), r.data.tags.get("rayzor.trial")) for r in live)
        rerun = sum(
            1 for t, end in self.finished_before.items() if t not in finished or finished[t].info.end_time != end
        )
        rerun += sum(1 for r in every if r.data.tags.get("rayzor.orphan"))
        return {
            "requested": self.trials * searches,
            "finished": len(finished),
            "failed": sum(r.info.status == "FAILED" for r in live),
            "duplicated": sum(n - 1 for n in per_trial.values() if n > 1),
            "re_run": rerun,
            "left_running": sum(r.info.status == "RUNNING" for r in every),
            "exit_codes": list(self.codes),
        }


def sigint(trials: int) -> dict[str, Any]:
    s = Scenario(trials)
    s.signal_after(s.new("paused"), 3, signal.SIGINT)
    s.finish(s.resume("paused"))
    return s.counts()


def sigkill_twice(trials: int) -> dict[str, Any]:
    s = Scenario(trials)
    s.signal_after(s.new("killed"), 3, signal.SIGKILL)
    s.signal_after(s.resume("killed"), 2, signal.SIGKILL)
    s.finish(s.resume("killed"))
    return s.counts()


def raising(trials: int) -> dict[str, Any]:
    attempts = Path(tempfile.mkdtemp(prefix="rayzor-attempts-")) / "attempts.txt"
    s = Scenario(
        trials,
        epochs=0,
        extra="task: tests.search.attempt_task:make_task\nmax_failures: 2\n",
        env={"RAYZOR_TEST_ATTEMPTS": str(attempts)},
    )
    s.finish(s.new("raising"))
    return {**s.counts(), "attempts": len(attempts.read_text().splitlines()) if attempts.exists() else 0}


def together(trials: int) -> dict[str, Any]:
    s = Scenario(trials, epochs=0)
    procs = [s.new(f"together-{i}") for i in range(2)]
    for proc in procs:
        s.finish(proc)
    return s.counts(searches=2)


def duplicate(trials: int) -> dict[str, Any]:
    s = Scenario(1, epochs=0)
    s.finish(s.new("taken"))
    out = s.finish(s.new("taken"))
    return {**s.counts(), "last_line": out.strip().splitlines()[-1]}


def _server(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port)]
        + ["--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--default-artifact-root", str(root / "art")]
        + ["-w", "1"],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("mlflow server did not start") from None
            time.sleep(0.5)


def outage(trials: int) -> dict[str, Any]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    s = Scenario(trials, extra="tracking_wait: 3\n", uri=f"http://127.0.0.1:{port}")
    server = _server(s.root, port)
    proc = s.new("outage")
    seen = 0
    assert proc.stdout is not None
    while seen < 1:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line.startswith("[")
    Scenario._end_group(server)
    server.wait()
    last = s.finish(proc).strip().splitlines()[-1]
    server = _server(s.root, port)
    try:
        s.finish(s.resume("outage"))
        return {**s.counts(), "last_line": last}
    finally:
        Scenario._end_group(server)
        server.wait()


def clean(trials: int, period: str | None) -> dict[str, Any]:
    s = Scenario(trials, env={"TUNE_GLOBAL_CHECKPOINT_S": period} if period else None)
    started = time.perf_counter()
    s.finish(s.new("clean"))
    return {**s.counts(), "wall_s": round(time.perf_counter() - started, 1)}


def render(report: dict[str, Any]) -> str:
    """The "faults" section of BENCHMARKS.md, from a report of :func:`main`."""
    rows = report["scenarios"]
    n = report["trials"]
    cost = rows["clean, 1 s experiment saves"]["wall_s"] / rows["clean, Tune's adaptive saves"]["wall_s"]
    lines = [
        "## faults: Ctrl-C, kills, a raising trial, concurrent starts, a tracking outage",
        "",
        f"`python benchmarks/faults.py --trials {n}` ({describe_machine(report)}). Each search is a "
        "`rayzor search` subprocess on digits (concurrency 2, 1 fine-tune epoch), signalled as from a terminal; "
        "counts are read back from the MLflow store. *re-run*: a trial finished before a fault that ran again; "
        "*left RUNNING*: runs in RUNNING state after the last command, soft-deleted ones and parents included.",
        "",
        "| scenario | requested | finished | failed | duplicated | re-run | left RUNNING | exit codes | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for scenario, r in rows.items():
        notes = []
        if "attempts" in r:
            notes.append(f"{r['attempts']} code attempts for {r['requested']} trials")
        if "last_line" in r:
            notes.append(f"`{r['last_line']}`")
        if "wall_s" in r:
            notes.append(f"{r['wall_s']} s")
        lines.append(
            f"| {scenario} | {r['requested']} | {r['finished']} | {r['failed']} | {r['duplicated']} | "
            f"{r['re_run']} | {r['left_running']} | {' '.join(map(str, r['exit_codes']))} | {'; '.join(notes)} |"
        )
    lines += [
        "",
        f"Saving Tune's experiment state every second instead of adaptively (>= 10 s): {cost:.2f}x the wall time "
        "of the clean search (one search each, in this run, not repeated, on a machine shared with other jobs). "
        "*notes*: the last line a failing command printed.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the section from benchmarks/results/faults.json"
    )
    args = parser.parse_args()
    if args.render:
        report = json.loads((RESULTS / "faults.json").read_text())
    else:
        n = args.trials
        rows = {
            "sigint, then --resume": sigint(n),
            "sigkill x2, then --resume": sigkill_twice(n),
            "raising trial (max_failures 2)": raising(max(2, n // 2)),
            "two searches at once, fresh sqlite": together(max(1, n // 4)),
            "duplicate --name": duplicate(n),
            "tracking outage, then --resume": outage(max(2, n // 2)),
            "clean, 1 s experiment saves": clean(n, None),
            "clean, Tune's adaptive saves": clean(n, "auto"),
        }
        report = {**machine(), "trials": n, "scenarios": rows}
        write_result("faults", report)
    section = render(report)
    replace_section("faults", section)
    print(section)


if __name__ == "__main__":
    main()
