"""Benchmark: does a sensitivity warm start buy hypervolume at the same trial budget?

For the digits task and the resnet18 task (seeded random ResNet-18 scored by
logit fidelity to its fp32 self), 3 seeds, the TPE sampler, runs the search
three times per seed at the same number of trials:

* ``sensitivity``: per-unit probes on Ray first (not counted in the trial
  budget; their seconds are reported), whose plans are the first trials;
* ``uniform``: the first trials are one bit-width for every layer (the default);
* ``none``: the sampler starts cold.

Reports each search's hypervolume (the search's unit box: 1 - quality x
size / fp32 size, reference (1, 1); higher is better), the hypervolume after
half of the budget, front sizes and the sensitivity phase's seconds. Writes
benchmarks/results/sensitivity_warmstart.json and the "sensitivity_warmstart"
section of BENCHMARKS.md (``--quick`` only prints: a timing run).

    python benchmarks/sensitivity_warmstart.py [--quick] [--seeds 0 1 2] [--digits-trials 32] [--resnet-trials 16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

MODES = ("sensitivity", "uniform", "none")
#: One tied group per ResNet stage: 4 units x (sparsity, bits) = 8 dimensions, 44 sensitivity probes.
RESNET_GROUPS = [{"name": f"stage{i}", "match": [f"net.resnet.encoder.stages.{i}.*"], "tie": True} for i in range(4)]


def _tasks(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The search settings per task (everything but warm_start and seed)."""
    return {
        "digits": {"trials": args.digits_trials},
        "resnet18": {
            "trials": args.resnet_trials,
            "task": "resnet18",
            "finetune_epochs": 0,
            "space": {"groups": RESNET_GROUPS},
        },
    }


def _run(settings: dict[str, Any], mode: str, seed: int, scratch: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from rayzor.search import load_config, run_search, search_hypervolume

    config = load_config(
        None,
        sampler="tpe",
        seed=seed,
        warm_start=mode,
        experiment="warmstart",
        tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
        storage_path=str(scratch / "ray"),
        **settings,
    )
    started = time.perf_counter()
    result = run_search(config, progress=lambda line: None)
    wall = time.perf_counter() - started
    done = sorted((r for r in result.trials if r.status == "FINISHED"), key=lambda r: r.number)
    half = [r.metrics for r in done if r.number <= config.trials // 2]
    parent = MlflowClient(result.tracking_uri).get_run(result.parent_run_id)
    quality = result.objectives[0]
    return {
        "seed": seed,
        "hypervolume": result.hypervolume,
        "hypervolume_half_budget": search_hypervolume(half, result.objectives, result.baseline),
        "front_size": len(result.pareto),
        "front": [
            {"trial": r.number, quality: r.metrics[quality], "size_bytes": r.metrics["size_bytes"]}
            for r in result.pareto
        ],
        "finished": len(done),
        "warm_start_trials": _warm_count(result),
        "sensitivity_seconds": parent.data.metrics.get("sensitivity_seconds"),
        "search_seconds": wall,
        "fit_seconds": result.fit_seconds,
        "objectives": list(result.objectives),
    }


def _warm_count(result: Any) -> int:
    """Trials that ran an enqueued warm-start plan (their MLflow runs carry the tag)."""
    from mlflow.tracking import MlflowClient

    from rayzor.search import trial_runs
    from rayzor.search._tags import TAG_WARM_START

    client = MlflowClient(result.tracking_uri)
    return sum(
        TAG_WARM_START in run.data.tags for run in trial_runs(client, result.experiment_id, result.parent_run_id)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one seed, 8 digits and 6 resnet18 trials; prints, writes nothing (a timing run)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--digits-trials", type=int, default=None)
    parser.add_argument("--resnet-trials", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=["digits", "resnet18"], choices=["digits", "resnet18"])
    args = parser.parse_args()
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.digits_trials = args.digits_trials or (8 if args.quick else 32)
    args.resnet_trials = args.resnet_trials or (6 if args.quick else 16)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import ray

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-warmstart-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    started = time.perf_counter()
    tasks = _tasks(args)
    report_tasks: dict[str, Any] = {}
    try:
        for name in args.tasks:
            settings = dict(tasks[name])
            by_mode: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
            for seed in args.seeds:  # seeds outer: the run's warm-up does not always land on one mode
                for mode in MODES:
                    run = _run(settings, mode, seed, scratch)
                    by_mode[mode].append(run)
                    sens = f", sensitivity {run['sensitivity_seconds']:.1f} s" if run["sensitivity_seconds"] else ""
                    print(
                        f"{name:>8} {mode:>11} seed {seed}: hypervolume {run['hypervolume']:.4f} "
                        f"(half budget {run['hypervolume_half_budget']:.4f}), front {run['front_size']}, "
                        f"{run['search_seconds']:.0f} s{sens}",
                        flush=True,
                    )
            modes: dict[str, Any] = {}
            for mode, runs in by_mode.items():
                modes[mode] = {
                    "hypervolume_mean": statistics.mean(r["hypervolume"] for r in runs),
                    "hypervolume_half_budget_mean": statistics.mean(r["hypervolume_half_budget"] for r in runs),
                    "front_size_mean": statistics.mean(r["front_size"] for r in runs),
                    "search_seconds_mean": statistics.mean(r["search_seconds"] for r in runs),
                    "runs": runs,
                }
            report_tasks[name] = {"settings": settings, "trials": settings["trials"], "modes": modes}
    finally:
        ray.shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    report = {
        "command": "python benchmarks/sensitivity_warmstart.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "seeds": args.seeds,
        "sampler": "tpe",
        "quick": args.quick,
        "wall_seconds": time.perf_counter() - started,
        "tasks": report_tasks,
    }
    if args.quick:  # a timing run: nothing is written
        print(f"quick run: {report['wall_seconds']:.0f} s for {len(args.tasks) * len(MODES)} searches")
        return
    write_result("sensitivity_warmstart", report)
    _write_section(report)


def _write_section(report: dict[str, Any]) -> None:
    seeds = report["seeds"]
    lines = [
        "## sensitivity_warmstart: hypervolume with vs without a sensitivity warm start",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}); whole run {report['wall_seconds'] / 60:.0f} min.",
        "",
        "Same sampler (TPE), seeds and trial budget per task; only `warm_start` changes. `sensitivity` first probes "
        "each unit (layer or tied group) alone at each sparsity and bit-width level on Ray and enqueues the plans "
        "that keep each unit within a drop of 0.005/0.01/0.02 of the metric; those probes are extra compute outside the trial budget "
        "(their seconds are in the last column). `uniform` (the default) enqueues one bit-width for every layer; "
        "`none` starts the sampler cold. Hypervolume in the search's unit box ((1 - quality) x size / fp32 size, "
        "reference (1, 1)); higher is better. *half* = hypervolume of the trials numbered up to half of the budget. "
        "Search seconds include MLflow logging and, for the run's first search, Ray worker start-up; 2 trials at a "
        "time.",
        "",
    ]
    descriptions = {
        "digits": "digits CNN, default space and 1 fine-tune epoch, objectives accuracy + size_bytes",
        "resnet18": "ResNet-18 (random init, seed 0, BatchNorm and logits calibrated on 64 N(0,1) 64x64 images; "
        "task `resnet18`), one tied group per stage (4 units, 8 dimensions), no fine-tune, objectives "
        "fidelity (mean cosine of the logits to fp32's on 32 validation images) + size_bytes",
    }
    for name, data in report["tasks"].items():
        lines += [
            f"### {name}: {data['trials']} trials per search, seeds {seeds}",
            "",
            descriptions[name] + ".",
            "",
            "| warm start | hypervolume per seed | mean | half-budget mean | front size per seed | warm-start trials | "
            "search s (mean) | sensitivity s per seed |",
            "|---|---|---:|---:|---|---|---:|---|",
        ]
        for mode, m in data["modes"].items():
            runs = m["runs"]
            sens = ", ".join(f"{r['sensitivity_seconds']:.1f}" for r in runs) if runs[0]["sensitivity_seconds"] else "-"
            per_seed = ", ".join(f"{r['hypervolume']:.4f}" for r in runs)
            lines.append(
                f"| {mode} | {per_seed} | {m['hypervolume_mean']:.4f} | "
                f"{m['hypervolume_half_budget_mean']:.4f} | {', '.join(str(r['front_size']) for r in runs)} | "
                f"{', '.join(str(r['warm_start_trials']) for r in runs)} | {m['search_seconds_mean']:.0f} | {sens} |"
            )
        best = max(data["modes"], key=lambda k: data["modes"][k]["hypervolume_mean"])
        wins = {
            mode: sum(r["hypervolume"] > u["hypervolume"] for r, u in zip(m["runs"], data["modes"]["uniform"]["runs"]))
            for mode, m in data["modes"].items()
            if mode != "uniform"
        }
        lines += [
            "",
            f"Highest mean: `{best}`. Seeds where each beats `uniform`: "
            + ", ".join(f"`{k}` {v}/{len(seeds)}" for k, v in wins.items())
            + ".",
            "",
        ]
    replace_section("sensitivity_warmstart", "\n".join(lines).rstrip("\n"))


if __name__ == "__main__":
    main()
