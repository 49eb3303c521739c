"""Benchmark: do students and distilled recovery widen the digits front at the same trial budget?

Runs the digits search (tpe, same budget and seed) in three set-ups:

* ``compress``: the teacher only, 2 epochs of plain recovery fine-tune (masks kept);
* ``+ recovery KD``: the same, with the uncompressed teacher's soft targets in the
  recovery loss (``recovery.distill_alpha``) and quantization-aware recovery (``recovery.qat``);
* ``+ students``: the teacher or a ``cnn`` student (width per stage, depth), the
  student distilled from the teacher's logits, then compressed per layer, with
  the same KD recovery.

Reports the hypervolume (the search's unit box: accuracy reference 0, size
reference = the fp32 teacher) and the front of each, per seed.

Writes benchmarks/results/students.json and the "students" section of BENCHMARKS.md.

    python benchmarks/students.py [--trials 48] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

SETUPS = {
    "compress": {},
    "+ recovery KD": {"recovery": {"distill_alpha": 0.5, "qat": True}},
    "+ students": {
        "recovery": {"distill_alpha": 0.5, "qat": True},
        "students": {"families": ["cnn"], "distill_epochs": 15},
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=2, help="recovery fine-tune epochs of every trial")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import ray

    from rayzor.search import run_search, validate_config

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-students-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    for seed in args.seeds:
        for setup, extra in SETUPS.items():
            config = validate_config(
                {
                    "trials": args.trials,
                    "seed": seed,
                    "finetune_epochs": args.epochs,
                    "experiment": f"students-{seed}-{setup}",
                    "tracking_uri": f"sqlite:///{scratch / 'mlflow.db'}",
                    "storage_path": str(scratch / "ray"),
                    **extra,
                }
            )
            result = run_search(config, progress=lambda line: None)
            front = [
                {
                    "trial": r.number,
                    "accuracy": r.metrics["accuracy"],
                    "size_bytes": r.metrics["size_bytes"],
                    "plan": r.plan_summary,
                }
                for r in result.pareto
            ]
            models = [r.params.get("student.family", "teacher") for r in result.trials]
            front_models = [r.params.get("student.family", "teacher") for r in result.pareto]
            rows.append(
                {
                    "seed": seed,
                    "setup": setup,
                    "hypervolume": result.hypervolume,
                    "front": front,
                    "student_trials": sum(m != "teacher" for m in models),
                    "student_front_points": sum(m != "teacher" for m in front_models),
                    "fit_seconds": result.fit_seconds,
                    "baseline": result.baseline,
                }
            )
            print(
                f"seed {seed} {setup:>14}: HV {result.hypervolume:.4f}, front {len(front)} "
                f"({rows[-1]['student_front_points']} students), fit {result.fit_seconds:.0f} s",
                flush=True,
            )
    ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)

    report = {**machine(), "trials": args.trials, "seeds": args.seeds, "recovery_epochs": args.epochs, "rows": rows}
    write_result("students", report)
    lines = [
        "## Students and distilled recovery at the same trial budget",
        "",
        f"Command: `python benchmarks/students.py --trials {args.trials} --seeds {' '.join(map(str, args.seeds))}` "
        f"({describe_machine(report)}).",
        "",
        f"Digits, tpe, {args.trials} trials per search, {args.epochs} recovery epochs per trial. `+ recovery KD`: "
        "the fp32 teacher's soft targets in the recovery loss (alpha 0.5, T 4) and quantization-aware recovery. "
        "`+ students`: each trial compresses the teacher or a `cnn` student (width multipliers per stage, 1-2 blocks), "
        "the student first distilled for 15 epochs from the teacher's logits (computed once, shared through the "
        "object store). Hypervolume in the search's unit box (higher is better).",
        "",
        "| setup | " + " | ".join(f"HV seed {s}" for s in args.seeds) + " | mean HV | front points (students) | "
        "smallest front point >= 0.95 accuracy |",
        "|---|" + "---:|" * (len(args.seeds) + 3),
    ]
    for setup in SETUPS:
        mine = [r for r in rows if r["setup"] == setup]
        hvs = [r["hypervolume"] for r in mine]
        points = ", ".join(f"{len(r['front'])} ({r['student_front_points']})" for r in mine)
        small = [
            min((p["size_bytes"] for p in r["front"] if p["accuracy"] >= 0.95), default=float("nan")) for r in mine
        ]
        lines.append(
            f"| {setup} | " + " | ".join(f"{h:.4f}" for h in hvs) + f" | {statistics.mean(hvs):.4f} | "
            f"{points} | " + ", ".join(f"{s:,.0f} B" for s in small) + " |"
        )
    replace_section("students", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
