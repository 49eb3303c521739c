"""Benchmark: the README's main job, ``rayzor search``, end to end, and the wait after its summary.

Runs the default search as a user does, in fresh processes and a fresh
working directory each, two ways alternated (median of ``--repeats``):

* ``rayzor search``: the console script as installed;
* the same command with ``gc.freeze`` made a no-op, i.e. as before the CLI
  froze the garbage collector on its way out: interpreter shutdown then
  collects every object torch, Ray and MLflow left behind.

For each it reports the whole wall (process start to exit), when the last
line of the summary appeared, and the wait between the two, which the user
spends looking at a finished summary without a prompt. Each run's MLflow store
is then read back: the search run and every trial run FINISHED, each trial
with its packed artifact, so nothing the shutdown used to do is lost.

Writes benchmarks/results/cli_exit.json and the "cli_exit" section of BENCHMARKS.md.

    python benchmarks/cli_exit.py [--repeats 3] [--trials N]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

RAYZOR = str(Path(sys.executable).with_name("rayzor"))
#: The CLI as it was before it froze the collector at exit.
UNFROZEN = (
    "import gc, sys; gc.freeze = lambda: None; from rayzor.search.cli import main; sys.argv[0] = 'rayzor'; main()"
)
ARMS = {"rayzor search": [RAYZOR, "search"], "before: no gc.freeze at exit": [sys.executable, "-c", UNFROZEN, "search"]}


def _run(argv: list[str], trials: int | None) -> dict[str, float]:
    """One search in a fresh folder: its walls, then its MLflow store checked whole."""
    folder = Path(tempfile.mkdtemp(prefix="rayzor-cli-exit-"))
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv + ([] if trials is None else ["--trials", str(trials)]),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    last, summary = 0.0, False
    for line in proc.stdout:
        last = time.perf_counter() - started
        summary = summary or line.startswith("Pareto front:")
    if proc.wait() != 0 or not summary:
        raise SystemExit(f"{argv}: exit {proc.returncode}, summary printed: {summary}")
    wall = time.perf_counter() - started
    trials_logged = _check_store(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return {"wall_s": wall, "last_line_s": last, "exit_wait_s": wall - last, "trials": trials_logged}


def _check_store(folder: Path) -> int:
    """The search run and every trial run FINISHED, each trial with its packed file; the trial count."""
    from mlflow.tracking import MlflowClient

    from rayzor.search import trial_runs
    from rayzor.search._tags import ROLE_SEARCH, TAG_ROLE

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(experiments, filter_string=f"tags.`{TAG_ROLE}` = '{ROLE_SEARCH}'")
    if len(parents) != 1:
        raise SystemExit(f"{folder}: {len(parents)} search runs, expected 1")
    parent = parents[0]
    trials = trial_runs(client, parent.info.experiment_id, parent.info.run_id)
    if any(r.info.status != "FINISHED" for r in [parent, *trials]):
        raise SystemExit(
            f"{folder}: a run did not finish: {[(r.info.run_name, r.info.status) for r in [parent, *trials]]}"
        )
    for run in trials:
        if not client.list_artifacts(run.info.run_id, "packed"):
            raise SystemExit(f"{folder}: {run.info.run_name} has no packed artifact")
    return len(trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=None, help="default: the search default")
    args = parser.parse_args()
    started = time.perf_counter()
    _run(ARMS["rayzor search"], args.trials)  # untimed: the baseline model's cache, the page cache
    runs: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    for _ in range(args.repeats):
        for arm, argv in ARMS.items():
            runs[arm].append(_run(argv, args.trials))
            print(arm, runs[arm][-1], flush=True)
    rows = [
        {
            "arm": arm,
            "runs": rs,
            **{k: statistics.median(r[k] for r in rs) for k in ("wall_s", "last_line_s", "exit_wait_s")},
        }
        for arm, rs in runs.items()
    ]
    report = {
        "command": "python benchmarks/cli_exit.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "repeats": args.repeats,
        "trials": rows[0]["runs"][0]["trials"],
        "rows": rows,
        "seconds": time.perf_counter() - started,
    }
    write_result("cli_exit", report)
    replace_section("cli_exit", _section(report))


def _section(report: dict) -> str:
    now, before = report["rows"]
    lines = [
        "## cli_exit: the main job end to end, and the wait after its summary",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}); whole run {report['seconds'] / 60:.1f} min.",
        f"`rayzor search` ({report['trials']} trials) in a fresh process and folder, alternated with the same "
        "command as before the CLI froze the garbage collector at exit (`gc.freeze` a no-op), median of "
        f"{report['repeats']} each. Every run's MLflow store was read back whole: the search run and every "
        "trial run FINISHED, each trial with its packed artifact.",
        "",
        "| how | whole wall (s) | summary's last line (s) | wait after it (s) |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['arm']} | {r['wall_s']:.1f} | {r['last_line_s']:.1f} | {r['exit_wait_s']:.2f} |" for r in (now, before)
    ]
    lines += [
        "",
        f"The wait after the summary: **{before['exit_wait_s'] / now['exit_wait_s']:.1f}x** shorter; the whole "
        f"main job: {before['wall_s'] / now['wall_s']:.2f}x (each run's wall also moves with the machine's speed).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
