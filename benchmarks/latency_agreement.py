"""Benchmark: does the latency a trial logs agree with the exported model re-measured in a fresh process?

Runs a digits search (``--trials``, concurrency 2, objectives accuracy + size +
latency), then, for every Pareto trial, loads its logged packed artifact in a
new Python process (nothing else running) and measures it the way a trial does
(``measure_latency``, 1 thread, batch 1). Reports each ratio logged / fresh;
the target is agreement within +-15%.

Writes benchmarks/results/latency_agreement.json and the "latency_agreement"
section of BENCHMARKS.md.

    python benchmarks/latency_agreement.py [--trials 24]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

_FRESH = """
import json, sys, torch
from rayzor.compression import load_packed, measure_latency
from rayzor.tasks import create_task
model, _ = load_packed(sys.argv[1])
x = create_task("digits").example_input
print(json.dumps(measure_latency(model.eval(), x, threads=1)))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from mlflow.tracking import MlflowClient

    from rayzor.search import load_config, run_search

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-latency-"))
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    config = load_config(
        None,
        trials=args.trials,
        objectives=["accuracy", "size_bytes", "latency_ms"],
        tracking_uri=uri,
        storage_path=str(scratch / "ray"),
        experiment="latency",
    )
    result = run_search(config, progress=lambda line: None)
    client = MlflowClient(uri)
    rows = []
    for record in result.pareto:
        path = client.download_artifacts(record.run_id, "packed/packed.safetensors", str(scratch / record.run_id))
        out = subprocess.run([sys.executable, "-c", _FRESH, path], capture_output=True, text=True, check=True)
        fresh = json.loads(out.stdout.strip().splitlines()[-1])
        logged = record.metrics["latency_ms"]
        rows.append(
            {
                "trial": record.number,
                "logged_ms": logged,
                "fresh_ms": fresh,
                "ratio": logged / fresh,
                "plan": record.plan_summary,
            }
        )
        print(
            f"trial {record.number}: logged {logged:.4f} ms, fresh {fresh:.4f} ms, ratio {logged / fresh:.2f}",
            flush=True,
        )
    shutil.rmtree(scratch, ignore_errors=True)

    report = {**machine(), "trials": args.trials, "concurrency": result.concurrency, "rows": rows}
    write_result("latency_agreement", report)
    within = sum(abs(r["ratio"] - 1) <= 0.15 for r in rows)
    lines = [
        "## latency_agreement: a trial's logged latency vs the exported model in a fresh process",
        "",
        f"Command: `python benchmarks/latency_agreement.py --trials {args.trials}` ({describe_machine(report)}).",
        "",
        f"Digits search, {args.trials} trials, {result.concurrency} at a time, objectives accuracy + size_bytes + "
        "latency_ms. Each Pareto trial's packed artifact is loaded in a new process and timed like a trial times it "
        "(median of 20 forwards after 3 warm-ups, 1 thread, batch 1).",
        "",
        "| trial | logged (ms) | fresh process (ms) | logged / fresh |",
        "|---:|---:|---:|---:|",
        *(f"| {r['trial']} | {r['logged_ms']:.4f} | {r['fresh_ms']:.4f} | {r['ratio']:.2f} |" for r in rows),
        "",
        f"{within} of {len(rows)} within +-15%.",
    ]
    replace_section("latency_agreement", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
