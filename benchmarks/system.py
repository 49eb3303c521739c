"""Benchmark: what Ray Tune, Optuna and MLflow cost around the trials.

Runs the digits search with 32 trials at concurrency 1 and at concurrency 2,
in one process, one Ray instance, and reports for each:

* the overhead ratio = Tune fit wall time / (sum of trial compute / concurrency),
  where 1.0 would mean the machinery costs nothing;
* throughput in trials per minute, and the speed-up of concurrency 2 over 1.

Writes benchmarks/results/system.json and the "system" section of BENCHMARKS.md.

    python benchmarks/system.py [--trials 32]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import ray

    from rayzor.search import load_config, run_search

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-system-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    # A warm-up search first, so both measured runs find imports and caches warm.
    for concurrency in (2, 1, 2):
        config = load_config(
            None,
            trials=args.trials,
            concurrency=concurrency,
            experiment="system",
            tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
            storage_path=str(scratch / "ray"),
        )
        result = run_search(config, progress=lambda line: None)
        compute = sum(r.metrics["trial_seconds"] for r in result.trials if r.status == "FINISHED")
        rows.append(
            {
                "concurrency": concurrency,
                "fit_s": result.fit_seconds,
                "sum_trial_compute_s": compute,
                "overhead_ratio": result.fit_seconds / (compute / concurrency),
                "trials_per_minute": 60 * args.trials / result.fit_seconds,
            }
        )
        print(rows[-1], flush=True)
    ray.shutdown()
    rows = rows[1:]
    report = {
        "command": "python benchmarks/system.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "trials": args.trials,
        "runs": rows,
        "speedup_2_over_1": rows[1]["trials_per_minute"] / rows[0]["trials_per_minute"],
    }
    write_result("system", report)
    lines = [
        "## system: overhead and throughput",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}).",
        f"Digits task, default space, {args.trials} trials per search, one Ray instance (num_cpus=2), "
        "actors reused between trials, MLflow sqlite store; a warm-up search ran first and is not counted.",
        "",
        "| concurrency | Tune fit wall (s) | sum of trial compute (s) | overhead ratio | trials / min |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['concurrency']} | {r['fit_s']:.1f} | {r['sum_trial_compute_s']:.1f} | "
            f"{r['overhead_ratio']:.2f} | {r['trials_per_minute']:.0f} |"
        )
    lines += ["", f"Throughput speed-up of concurrency 2 over 1: **{report['speedup_2_over_1']:.2f}x** on 2 cores."]
    replace_section("system", "\n".join(lines))
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
