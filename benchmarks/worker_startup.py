"""Benchmark: what a new trial worker costs before its first trial, stage by stage, against a digits trial.

Tune starts one worker process per concurrent trial slot in every search
(``reuse_actors`` keeps it for the next trials). Before its first trial, a
worker starts Python and joins Ray, loads Tune's trainable wrapper
(``ray.tune``), imports the trial's code (torch, rayzor) and then the modules
the trial's first optimizer, FLOP count and ONNX export import lazily
(:func:`rayzor.search._trial.import_lazy_dependencies`). Each stage is timed
as fresh processes that import up to it, one alone and two at once (the
default concurrency on 2 cores), alternated, median of ``--repeats``; beside them, the
median digits trial (the default search's plan space, 1 thread, after a
warm-up) and the overhead ratio the start-up alone would leave a 64-trial
search of such trials: (start-up + compute / c) / (compute / c).

Writes benchmarks/results/worker_startup.json and the "worker_startup" section of BENCHMARKS.md.

    python benchmarks/worker_startup.py [--repeats 5] [--trials 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

#: (label, the imports a fresh process does up to and including that stage).
STAGES = [
    ("Python interpreter", "pass"),
    ("+ join-able Ray (import ray)", "import ray"),
    ("+ Tune's trainable wrapper (import ray.tune)", "import ray, ray.tune"),
    ("+ the trial's code (torch, rayzor)", "import ray, ray.tune, rayzor.search._trial"),
    (
        "+ the first trial's lazy imports (torch._dynamo, onnx, onnxruntime)",
        "import ray, ray.tune, rayzor.search._trial as t; t.import_lazy_dependencies('onnxruntime')",
    ),
]


def _processes(code: str, count: int) -> float:
    """Seconds until ``count`` fresh processes, started at once, have each run ``code``."""
    started = time.perf_counter()
    running = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]
    if any(p.wait() != 0 for p in running):
        raise SystemExit(f"failed: {code}")
    return time.perf_counter() - started


def _digits_trial_seconds(samples: int) -> float:
    """The median ``trial_seconds`` of the default search's digits plans, after a warm-up trial."""
    import optuna
    import torch

    from rayzor.search import evaluate_plan, load_config
    from rayzor.search._trial import QUICK_LATENCY_SECONDS
    from rayzor.tasks import create_task

    torch.set_num_threads(1)  # as in a trial
    config = load_config(None, trials=samples)
    task = create_task(config.task, **config.task_options)
    space = config.space.build(task.model, config.finetune(), example_input=task.example_input, target=config.target)
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(samples + 1):
            trial = study.ask()
            space.suggest(trial)
            out = Path(tmp) / str(i)
            out.mkdir()
            metrics = evaluate_plan(
                task, space, trial.params, out, target=config.target, latency_seconds=QUICK_LATENCY_SECONDS
            )
            if i:  # the first pays the process's first-use costs
                seconds.append(metrics["trial_seconds"])
    return statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trials", type=int, default=64, help="the search size the floor is computed for")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = []
    for label, code in STAGES:
        _processes(code, 1)  # warm the page cache
        # one alone and two at once alternate, so a slow spell of the machine hits both alike
        runs = [(_processes(code, 1), _processes(code, 2)) for _ in range(args.repeats)]
        one, two = (statistics.median(r[i] for r in runs) for i in (0, 1))
        rows.append({"stage": label, "code": code, "one_s": one, "two_at_once_s": two})
        print(rows[-1], flush=True)
    trial = _digits_trial_seconds(24)
    startup = {c: rows[-1]["one_s" if c == 1 else "two_at_once_s"] for c in (1, 2)}
    floors = {c: (startup[c] + args.trials * trial / c) / (args.trials * trial / c) for c in (1, 2)}
    report = {
        "command": "python benchmarks/worker_startup.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "repeats": args.repeats,
        "trials": args.trials,
        "rows": rows,
        "digits_trial_s": trial,
        "startup_in_trials": {str(c): startup[c] / trial for c in (1, 2)},
        "ratio_floor": {str(c): floors[c] for c in (1, 2)},
        "seconds": time.perf_counter() - started,
    }
    write_result("worker_startup", report)
    replace_section("worker_startup", _section(report))


def _section(report: dict) -> str:
    lines = [
        "## worker_startup: a trial worker's start-up against a digits trial",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}); whole run {report['seconds'] / 60:.1f} min.",
        f"Each stage: fresh processes that import up to it, one alone and two started at once (the default "
        f"concurrency here), alternated, median of {report['repeats']}. Tune starts one such worker per concurrent trial "
        "slot in each search and keeps it for the next trials.",
        "",
        "| stage | 1 process (s) | 2 at once (s) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r['stage']} | {r['one_s']:.2f} | {r['two_at_once_s']:.2f} |" for r in report["rows"]]
    t = report["digits_trial_s"]
    lines += [
        "",
        f"A digits trial of the default search (median of 24 plans, 1 thread, after a warm-up trial): "
        f"**{t:.3f} s**. A worker's start-up is **{report['startup_in_trials']['1']:.0f}** such trials alone, "
        f"**{report['startup_in_trials']['2']:.0f}** with two workers starting at once. In a "
        f"{report['trials']}-trial search of trials that long, the start-up alone would make the overhead ratio "
        f"**{report['ratio_floor']['1']:.2f}** at concurrency 1 and **{report['ratio_floor']['2']:.2f}** at "
        "concurrency 2, before Tune's own start and each trial's round trip. (Two trials at once on 2 cores, "
        "beside the driver, each take longer than one alone, so a real concurrency-2 search has more compute "
        "over which to spread it: see system_default.)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
