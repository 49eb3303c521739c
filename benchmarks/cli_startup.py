"""Benchmark: how long the CLI takes to answer help, and to refuse bad input.

Times fresh processes of the installed ``rayzor`` console script, side by side
in one run (median of ``--repeats`` runs each, after one untimed warm-up):

* ``python -c pass``: the interpreter alone, the floor;
* ``rayzor --help``, ``rayzor search --help``, ``rayzor --version``;
* importing the whole stack the commands use (torch, Ray Tune, MLflow), which
  is what ``--help`` cost when the CLI imported it at start-up;
* refusals of bad input, each checked to leave no tracking store behind: a
  usage error (``--trials abc``), an unknown task, a space glob that matches
  no layer (the digits task is built first), ``--gpus-per-trial 1`` with no GPU,
  a Ray Client (``ray://``) address.

Writes benchmarks/results/cli_startup.json and the "cli_startup" section of BENCHMARKS.md.

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
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


def _cases(scratch: Path) -> list[tuple[str, list[str], int]]:
    """(label, argv, expected exit code)."""
    (scratch / "unknown_task.yaml").write_text("task: nope\n")
    (scratch / "bad_glob.yaml").write_text("space:\n  groups:\n    - {name: g, match: ['nomatch*']}\n")
    search = [RAYZOR, "search"]
    return [
        ("python -c pass (interpreter floor)", [sys.executable, "-c", "pass"], 0),
        ("rayzor --help", [RAYZOR, "--help"], 0),
        ("rayzor search --help", [RAYZOR, "search", "--help"], 0),
        ("rayzor --version", [RAYZOR, "--version"], 0),
        (
            "import torch, Ray Tune and MLflow (the old start-up)",
            [sys.executable, "-c", "import rayzor.search._runner, rayzor.search._export"],
            0,
        ),
        ("refuse `search --trials abc`", [*search, "--trials", "abc"], 2),
        ("refuse an unknown task", [*search, str(scratch / "unknown_task.yaml")], 2),
        ("refuse a space glob matching no layer", [*search, str(scratch / "bad_glob.yaml")], 2),
        ("refuse `search --gpus-per-trial 1` (no GPU)", [*search, "--gpus-per-trial", "1"], 2),
        (
            "refuse `search --address ray://127.0.0.1:10001` (Ray Client)",
            [*search, "--address", "ray://127.0.0.1:10001"],
            2,
        ),
    ]


def _time(argv: list[str], code: int, cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != code:
        raise SystemExit(f"{argv}: exit {done.returncode}, expected {code}\n{done.stderr[-2000:]}")
    if code == 2 and (len(done.stderr.strip().splitlines()) != 1 or not done.stderr.startswith("error: ")):
        raise SystemExit(f"{argv}: not a one-line error:\n{done.stderr[-2000:]}")
    if (cwd / "mlflow.db").exists():
        raise SystemExit(f"{argv}: a tracking store was created")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="rayzor-cli-startup-"))
    try:
        cases = _cases(scratch)
        rows = []
        for label, argv, code in cases:
            _time(argv, code, scratch)  # warm-up: file caches, the digits baseline in ~/.cache/rayzor
            times = [_time(argv, code, scratch) for _ in range(args.repeats)]
            rows.append({"case": label, "argv": argv[1:], "median_s": statistics.median(times), "runs_s": times})
            print(f"{label}: {statistics.median(times):.2f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    floor = rows[0]["median_s"]
    load = os.getloadavg()[0]  # other processes on the machine slow every row alike; the ratios hold better
    report = {
        **machine(),
        "command": "python benchmarks/cli_startup.py",
        "repeats": args.repeats,
        "load_average_1min": load,
        "rows": rows,
    }
    write_result("cli_startup", report)
    lines = [
        "## cli_startup: help and refusals, in fresh processes",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}).",
        f"Median of {args.repeats} fresh processes each, after one warm-up; every refusal is one `error:` line, "
        f"exit 2, and leaves no tracking store. Load average (1 min) at the end: {load:.1f} on {os.cpu_count()} cores.",
        "",
        "| what | median (s) | x interpreter alone |",
        "|---|---:|---:|",
        *(f"| {r['case']} | {r['median_s']:.2f} | {r['median_s'] / floor:.1f} |" for r in rows),
    ]
    replace_section("cli_startup", "\n".join(lines))
    print(os.linesep.join(lines))


if __name__ == "__main__":
    main()
