"""Benchmark: what early stopping (scheduler: asha) saves, and what it costs the front.

Runs the same digits search twice per seed, with and without ``scheduler:
asha``: the random sampler with one seed draws the same plans in both runs
(it does not learn from results), so the two runs differ only by the trials
ASHA stopped. Reports the fine-tune epochs actually run, the search's wall
time, the hypervolume of both fronts, and how many of the full run's Pareto
points ASHA let finish (a stopped trial cannot be on the front).

Writes benchmarks/results/asha.json and the "asha" section of BENCHMARKS.md.

    python benchmarks/asha.py [--trials 48] [--epochs 4] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, describe_machine, machine, replace_section, write_result  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--grace", type=int, default=1, help="asha.grace_period (epochs)")
    parser.add_argument("--bucket-width", type=float, default=0.5, help="asha.bucket_width (octaves)")
    parser.add_argument("--no-protect", action="store_true", help="asha.protect_front: false (plain ASHA per bucket)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import ray

    from rayzor.search import STOPPED, load_config, run_search

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-asha-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    for seed in args.seeds:
        runs = {}
        for scheduler in ("none", "asha"):
            config = load_config(
                None,
                trials=args.trials,
                sampler="random",
                seed=seed,
                finetune_epochs=args.epochs,
                scheduler=scheduler,
                warm_start="none",
                asha={
                    "grace_period": args.grace,
                    "bucket_width": args.bucket_width,
                    "protect_front": not args.no_protect,
                },
                experiment=f"asha-{scheduler}-{seed}",
                tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
                storage_path=str(scratch / "ray"),
            )
            result = run_search(config, progress=lambda line: None)
            epochs = sum(
                int(r.metrics.get("epoch", 0)) if r.status == STOPPED else args.epochs
                for r in result.trials
                if r.status in ("FINISHED", STOPPED)
            )
            runs[scheduler] = {
                "hypervolume": result.hypervolume,
                "front": sorted(r.number for r in result.pareto),
                "stopped": sum(r.status == STOPPED for r in result.trials),
                "stopped_numbers": sorted(r.number for r in result.trials if r.status == STOPPED),
                "finetune_epochs_run": epochs,
                "fit_seconds": result.fit_seconds,
                "params": {r.number: r.params for r in result.trials},
            }
            print(
                f"seed {seed} {scheduler:>4}: HV {result.hypervolume:.4f}, front {len(result.pareto)}, "
                f"stopped {runs[scheduler]['stopped']}, epochs {epochs}, fit {result.fit_seconds:.1f} s",
                flush=True,
            )
        full, asha = runs["none"], runs["asha"]
        same_plans = full["params"] == asha["params"]
        # A full-run Pareto point survives if ASHA let the same plan run to the end.
        kept = sum(n not in set(asha["stopped_numbers"]) for n in full["front"])
        rows.append(
            {
                "seed": seed,
                "same_plans": same_plans,
                "hv_full": full["hypervolume"],
                "hv_asha": asha["hypervolume"],
                "front_full": len(full["front"]),
                "front_asha": len(asha["front"]),
                "full_front_points_kept": kept,
                "stopped": asha["stopped"],
                "epochs_full": full["finetune_epochs_run"],
                "epochs_asha": asha["finetune_epochs_run"],
                "fit_full": full["fit_seconds"],
                "fit_asha": asha["fit_seconds"],
                "asha_front_in_full_front": len(set(asha["front"]) & set(full["front"])),
            }
        )
    ray.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)

    report = {
        **machine(),
        "trials": args.trials,
        "finetune_epochs": args.epochs,
        "seeds": args.seeds,
        "grace_period": args.grace,
        "bucket_width": args.bucket_width,
        "protect_front": not args.no_protect,
        "rows": rows,
    }
    # One result file per ASHA setting; the section shows every setting measured so far.
    write_result(f"asha_g{args.grace}_bw{args.bucket_width:g}{'_np' if args.no_protect else ''}", report)
    body = render(sorted(RESULTS.glob("asha_g*_bw*.json")))
    replace_section("asha", body)
    print(body)


def render(paths: list[Path]) -> str:
    """The BENCHMARKS.md section: one table per ASHA setting, each with the command that produced it."""
    lines = [
        "## Early stopping: ASHA inside size buckets (`scheduler: asha`)",
        "",
        "Digits, random sampler (the same plans with and without ASHA, checked in the `same plans` column), "
        "recovery fine-tune epochs per trial as given, ASHA eta 2. A trial is only compared with trials of about "
        "its compression ratio (see `search/_scheduler.py`); with the partial front protected (the default), a trial "
        "ASHA would stop goes on while no other result at its epoch dominates its (accuracy, size). A full-front point is kept when ASHA let that plan "
        "run to the end. On digits a fine-tune epoch is short beside Tune's per-trial cost, so the saving shows in "
        "the epochs column more than in the fit seconds; a bigger model's epochs dominate instead.",
    ]
    for path in paths:
        report = json.loads(path.read_text())
        rows, protect = report["rows"], report.get("protect_front", True)
        lines += [
            "",
            f"### grace {report['grace_period']} epoch(s), buckets {report['bucket_width']:g} octave wide, "
            f"partial front {'protected' if protect else 'not protected'}",
            "",
            f"Command: `python benchmarks/asha.py --trials {report['trials']} --epochs {report['finetune_epochs']} "
            f"--seeds {' '.join(map(str, report['seeds']))} --grace {report['grace_period']} "
            f"--bucket-width {report['bucket_width']:g}{'' if protect else ' --no-protect'}` "
            f"({describe_machine(report)}).",
            "",
            "| seed | same plans | trials stopped | fine-tune epochs run (full / ASHA) | compute saved "
            "| fit s (full / ASHA) | HV full | HV ASHA | full-front points ASHA kept |",
            "|---:|:---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            saved = 1 - r["epochs_asha"] / r["epochs_full"]
            lines.append(
                f"| {r['seed']} | {'yes' if r['same_plans'] else 'no'} | {r['stopped']} | {r['epochs_full']} / "
                f"{r['epochs_asha']} | {saved:.0%} | {r['fit_full']:.1f} / {r['fit_asha']:.1f} | "
                f"{r['hv_full']:.4f} | {r['hv_asha']:.4f} | {r['full_front_points_kept']} of {r['front_full']} |"
            )
        saved = statistics.mean(1 - r["epochs_asha"] / r["epochs_full"] for r in rows)
        kept = sum(r["full_front_points_kept"] for r in rows)
        total = sum(r["front_full"] for r in rows)
        lines += [
            "",
            f"Mean compute saved: {saved:.0%} of the fine-tune epochs; {kept} of {total} Pareto points of the "
            "full runs kept.",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
