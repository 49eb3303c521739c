"""Benchmark: does the search pay off on digits?

For one budget (64 trials) and 3 seeds, runs the search with each sampler
(tpe = the default, random, nsga2) and reports the hypervolume of each front
(same unit box as the search: accuracy reference 0, size reference = fp32
size). Beside them it evaluates every uniform baseline, one setting for all
layers (sparsity {0.5, 0.8, 0.9} x bits {8, 4, 2}, same recovery fine-tune),
and says which of those points the searched fronts dominate.

Writes benchmarks/results/search_quality.json, search_quality.png and the
"search_quality" section of BENCHMARKS.md.

    python benchmarks/search_quality.py [--trials 64] [--seeds 0 1 2] [--samplers tpe random nsga2]
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
from _report import RESULTS, describe_machine, machine, replace_section, write_result  # noqa: E402

SPARSITIES = (0.5, 0.8, 0.9)
BITS = (8, 4, 2)


def _dominates(a: dict, b: dict) -> bool:
    return (
        a["accuracy"] >= b["accuracy"]
        and a["size_bytes"] <= b["size_bytes"]
        and (a["accuracy"] > b["accuracy"] or a["size_bytes"] < b["size_bytes"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samplers", nargs="+", default=["tpe", "random", "nsga2"])
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import ray
    import torch

    from rayzor.compression import CompressionPlan
    from rayzor.search import evaluate_plan, load_config, run_search, search_hypervolume
    from rayzor.search._runner import prepare

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-quality-"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs: dict[str, list[dict]] = {s: [] for s in args.samplers}
    for sampler in args.samplers:
        for seed in args.seeds:
            config = load_config(
                None,
                trials=args.trials,
                sampler=sampler,
                seed=seed,
                experiment=f"quality-{sampler}",
                tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}",
                storage_path=str(scratch / "ray"),
            )
            result = run_search(config, progress=lambda line: None)
            front = [
                {"trial": r.number, "accuracy": r.metrics["accuracy"], "size_bytes": r.metrics["size_bytes"]}
                for r in result.pareto
            ]
            runs[sampler].append(
                {
                    "seed": seed,
                    "hypervolume": result.hypervolume,
                    "front": front,
                    "finished": sum(r.status == "FINISHED" for r in result.trials),
                }
            )
            print(
                f"{sampler:>6} seed {seed}: hypervolume {result.hypervolume:.4f}, front {len(front)} points", flush=True
            )
    ray.shutdown()

    # Uniform baselines through the very code path a trial runs.
    config = load_config(None, tracking_uri=f"sqlite:///{scratch / 'mlflow.db'}")
    prepared = prepare(config)
    task, space, baseline = prepared.task, prepared.space, prepared.baseline
    torch.set_num_threads(1)
    uniform = []
    for sparsity in SPARSITIES:
        for bits in BITS:
            settings = {layer: {"sparsity": sparsity, "bits": bits} for layer in space.layers}
            params = space.encode(CompressionPlan.from_settings(settings, finetune=space.finetune))
            out = scratch / f"uniform-{sparsity}-{bits}"
            out.mkdir()
            m = evaluate_plan(task, space, params, out)
            point = {
                "sparsity": sparsity,
                "bits": bits,
                "accuracy": m["accuracy"],
                "size_bytes": m["size_bytes"],
                "compression_ratio": m["compression_ratio"],
            }
            point["dominated_by"] = {
                s: sum(any(_dominates(p, point) for p in run["front"]) for run in runs[s]) for s in runs
            }
            uniform.append(point)
            print(
                f"uniform s={sparsity} b={bits}: accuracy {m['accuracy']:.4f}, {m['size_bytes']:.0f} bytes", flush=True
            )
    uniform_hv = search_hypervolume(uniform, ("accuracy", "size_bytes"), baseline)

    report = {
        "command": "python benchmarks/search_quality.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "trials": args.trials,
        "seeds": args.seeds,
        "baseline": baseline,
        "samplers": {
            s: {
                "hypervolume_mean": statistics.mean(r["hypervolume"] for r in rs),
                "hypervolume_min": min(r["hypervolume"] for r in rs),
                "hypervolume_max": max(r["hypervolume"] for r in rs),
                "runs": rs,
            }
            for s, rs in runs.items()
        },
        "uniform": uniform,
        "uniform_grid_hypervolume": uniform_hv,
    }
    write_result("search_quality", report)
    _plot(report, RESULTS / "search_quality.png")
    _write_section(report)
    shutil.rmtree(scratch, ignore_errors=True)


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    colors = {"tpe": "#d9480f", "random": "#1c7ed6", "nsga2": "#2b8a3e", "gp": "#862e9c"}
    for sampler, data in report["samplers"].items():
        for i, run in enumerate(data["runs"]):
            pts = sorted((p["size_bytes"] / 1024, p["accuracy"]) for p in run["front"])
            ax.step(
                [p[0] for p in pts],
                [p[1] for p in pts],
                where="post",
                color=colors.get(sampler, "k"),
                alpha=0.8,
                lw=1.2,
                label=f"{sampler} front" if i == 0 else None,
            )
    u = report["uniform"]
    ax.scatter(
        [p["size_bytes"] / 1024 for p in u],
        [p["accuracy"] for p in u],
        marker="x",
        c="k",
        s=40,
        label="uniform (s, bits)",
        zorder=3,
    )
    for p in u:
        ax.annotate(
            f"{p['sparsity']:.1f}/{p['bits']}b",
            (p["size_bytes"] / 1024, p["accuracy"]),
            fontsize=7,
            xytext=(3, -9),
            textcoords="offset points",
        )
    ax.axhline(report["baseline"]["accuracy"], color="#868e96", ls="--", lw=1, label="fp32 accuracy")
    ax.set_xscale("log")
    ax.set_ylim(max(0.0, min(p["accuracy"] for p in u) - 0.05), 1.0)
    ax.set_xlabel("packed size (KiB, log)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"digits: searched fronts ({report['trials']} trials, seeds {report['seeds']}) vs uniform settings")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_section(report: dict) -> None:
    n = len(report["seeds"])
    lines = [
        "## search_quality: searched fronts vs random, nsga2 and uniform settings",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}).",
        f"Digits task, {report['trials']} trials per search, seeds {report['seeds']}, default space and "
        "1 fine-tune epoch. Hypervolume in the search's unit box (error rate x size / fp32 size, reference (1, 1)); "
        "higher is better.",
        "",
        "| sampler | hypervolume mean | min | max |",
        "|---|---:|---:|---:|",
    ]
    for sampler, data in report["samplers"].items():
        lines.append(
            f"| {sampler} | {data['hypervolume_mean']:.4f} | {data['hypervolume_min']:.4f} | "
            f"{data['hypervolume_max']:.4f} |"
        )
    lines.append(f"| uniform grid (9 points) | {report['uniform_grid_hypervolume']:.4f} | | |")
    lines += [
        "",
        f"Uniform baselines (one setting for all layers) and how many of the {n} searched fronts of each "
        "sampler dominate them:",
        "",
        "| sparsity | bits | val accuracy | size (bytes) | ratio | "
        + " | ".join(f"dominated by {s}" for s in report["samplers"])
        + " |",
        "|---:|---:|---:|---:|---:|" + "---:|" * len(report["samplers"]),
    ]
    for p in report["uniform"]:
        lines.append(
            f"| {p['sparsity']} | {p['bits']} | {p['accuracy']:.4f} | {p['size_bytes']:.0f} | "
            f"{p['compression_ratio']:.1f}x | "
            + " | ".join(f"{p['dominated_by'][s]}/{n}" for s in report["samplers"])
            + " |"
        )
    lines += ["", "![fronts vs uniform](benchmarks/results/search_quality.png)"]
    replace_section("search_quality", "\n".join(lines))


if __name__ == "__main__":
    main()
