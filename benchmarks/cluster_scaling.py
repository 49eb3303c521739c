"""Trial throughput on a local multi-process Ray cluster with 1, 2 and 3 worker
nodes, and the driver's per-result MLflow logging cost.

    python benchmarks/cluster_scaling.py

Starts `ray start --head` + N `ray start --address` workers (1 CPU each, on
loopback, the same helper the tests use), runs the same search against each,
and writes benchmarks/results/cluster_scaling.json and the cluster_scaling
section of BENCHMARKS.md. On a 2-core machine, 3 one-CPU workers oversubscribe
the cores: the figures measure Ray's scheduling, not free hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # explicit, as in every process of the cluster

from _report import replace_section  # noqa: E402  (benchmarks/ is on sys.path)

from rayzor.search import load_config, run_search  # noqa: E402
from tests.cluster.conftest import LocalCluster  # noqa: E402


def _run(workers: int, trials: int, root: Path) -> dict:
    cluster = LocalCluster()
    try:
        cluster.start_head()
        cluster.add_workers(*(f"w{i + 1}" for i in range(workers)))
        config = load_config(
            None,
            trials=trials,
            sampler="random",
            experiment=f"scaling-{workers}",
            tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
            address=cluster.address,
            storage_path=str(root / "ray"),
            resources_per_trial={"worker": 1},
        )
        result = run_search(config, progress=lambda line: None)
    finally:
        cluster.stop()
    return {
        "workers": workers,
        "trials": trials,
        "concurrency": result.concurrency,
        "fit_s": result.fit_seconds,
        "trials_per_min": 60 * trials / result.fit_seconds,
        **{f"logging_{k}": v for k, v in result.logging_seconds.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [_run(n, args.trials, Path(tmp)) for n in (1, 2, 3)]
    base = rows[0]["trials_per_min"]
    for row in rows:
        row["speedup"] = row["trials_per_min"] / base
        row["efficiency"] = row["speedup"] / row["workers"]
    out = ROOT / "benchmarks" / "results" / "cluster_scaling.json"
    out.write_text(json.dumps({"rows": rows, "cpus": os.cpu_count()}, indent=2))
    lines = [
        "## Cluster scaling (local multi-process Ray cluster)",
        "",
        f"`python benchmarks/cluster_scaling.py`: {args.trials} digits trials (1 fine-tune epoch) per run, one trial per worker "
        f"node (`resources_per_trial: {{worker: 1}}`), head + N `ray start` workers on one {os.cpu_count()}-core host.",
        "",
        "| worker nodes | concurrency | Tune fit (s) | trials / min | speed-up | scaling efficiency | driver ms / result | writer ms / result |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['concurrency']} | {r['fit_s']:.1f} | {r['trials_per_min']:.1f} | {r['speedup']:.2f}x | "
            f"{r['efficiency']:.0%} | {1000 * r['logging_driver_per_result']:.3f} | {1000 * r['logging_writer_per_result']:.1f} |"
        )
    lines += [
        "",
        "Driver ms / result: time Tune's event loop spends in rayzor's callback per finished trial (it only queues). "
        "Writer ms / result: the MLflow calls (sqlite here) the background writer makes per trial, which the driver "
        "made inline before this change.",
    ]
    replace_section("cluster_scaling", "\n".join(lines))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
