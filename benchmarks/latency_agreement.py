"""Benchmark: does the latency a trial logs agree with its exported deploy artifact re-timed in a fresh process?

Runs a digits search with ``target: onnxruntime`` (the default; ``--trials``,
concurrency 2, objectives accuracy + deploy_bytes + latency_ms), so each trial
logs ``latency_ms`` of its own deploy artifact. Then, for every Pareto trial,
exports that artifact with ``export_model(..., "onnx")`` (what ``rayzor export
--format onnx`` runs; its bytes must equal the logged ``deploy_bytes``) and
times the file in a new Python process (nothing else running) the way a trial
does (``measure_deploy_latency``, onnxruntime, 1 thread, batch 1). Reports
each ratio logged / fresh; the target is agreement within +-15% for at least
8 of 9 points. Each file is timed again in a second new process after all the
first ones, by the protocol and by the one before it (the median of a few
milliseconds of runs), so the two protocols' repeatability is compared side by
side on the same files.

Writes benchmarks/results/latency_agreement.json and the "latency_agreement"
section of BENCHMARKS.md.

    python benchmarks/latency_agreement.py [--trials 64]
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
from _report import (  # noqa: E402
    describe_machine,
    describe_phases,
    machine,
    replace_section,
    speed_phases,
    write_result,
)

_FRESH = """
import json, statistics, sys, time
from rayzor.compression import measure_deploy_latency
from rayzor.compression._onnx import _session
from rayzor.tasks import create_task
x = create_task("digits").example_input


def before(path):
    # the protocol before fb8f276: 5 warm-ups, rounds of 10 until two round medians agree within 3%
    # (at most 10 rounds), the median of every timed run; a few milliseconds on a digits file
    session = _session(path, 1)
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(5):
        session.run(None, feed)
    times, previous = [], None
    for _ in range(10):
        current = []
        for _ in range(10):
            start = time.perf_counter()
            session.run(None, feed)
            current.append((time.perf_counter() - start) * 1000)
        times += current
        median = statistics.median(current)
        if previous is not None and abs(median - previous) <= 0.03 * previous:
            break
        previous = median
    return statistics.median(times)


print(json.dumps({"protocol": measure_deploy_latency(sys.argv[1], x, threads=1), "before": before(sys.argv[1])}))
"""


def _fresh(path: str) -> dict[str, float]:
    """Time ``path`` in a new Python process, by the protocol and by the one before it."""
    out = subprocess.run([sys.executable, "-c", _FRESH, path], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from mlflow.tracking import MlflowClient

    from rayzor.search import export_model, load_config, run_search

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-latency-"))
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    config = load_config(
        None,
        trials=args.trials,
        target="onnxruntime",
        objectives=["accuracy", "deploy_bytes", "latency_ms"],
        tracking_uri=uri,
        storage_path=str(scratch / "ray"),
        experiment="latency",
    )
    result = run_search(config, progress=lambda line: None)
    client = MlflowClient(uri)
    rows = []
    phases = speed_phases()  # how steady the machine is while the files are re-timed
    files = []
    for record in result.pareto:
        exported = export_model(client, record.run_id, "onnx", scratch / f"trial-{record.number}.onnx")
        files.append((record, exported))
        first = _fresh(exported.path)
        logged = record.metrics["latency_ms"]
        rows.append(
            {
                "trial": record.number,
                "logged_ms": logged,
                "fresh_ms": first["protocol"],
                "ratio": logged / first["protocol"],
                "before_ms": first["before"],
                "deploy_bytes": record.metrics["deploy_bytes"],
                "file_bytes": exported.sizes["file_bytes"],
                "plan": record.plan_summary,
            }
        )
        print(
            f"trial {record.number}: logged {logged:.4f} ms, fresh {first['protocol']:.4f} ms, "
            f"ratio {logged / first['protocol']:.2f}",
            flush=True,
        )
    # every file once more, in a second new process after all the first ones: two timings of one file
    # apart in time, by each protocol side by side
    for row, (_, exported) in zip(rows, files):
        second = _fresh(exported.path)
        row["fresh_later_ms"], row["before_later_ms"] = second["protocol"], second["before"]
    shutil.rmtree(scratch, ignore_errors=True)

    report = {
        **machine(),
        "trials": args.trials,
        "target": "onnxruntime",
        "concurrency": result.concurrency,
        "search_seconds": result.wall_seconds,
        "rows": rows,
        "speed_phases": phases,
    }
    write_result("latency_agreement", report)
    within = sum(abs(r["ratio"] - 1) <= 0.15 for r in rows)

    def spread(pairs: list[tuple[float, float]]) -> str:
        worst = max(max(a, b) / min(a, b) for a, b in pairs)
        return f"{sum(max(a, b) / min(a, b) <= 1.15 for a, b in pairs)} of {len(pairs)} pairs within 15%, worst {worst:.2f}x"

    lines = [
        "## latency_agreement: a trial's logged latency vs its exported deploy artifact in a fresh process",
        "",
        f"Command: `python benchmarks/latency_agreement.py --trials {args.trials}` ({describe_machine(report)}).",
        "",
        f"Digits search, `target: onnxruntime`, {args.trials} trials, {result.concurrency} at a time, objectives "
        "accuracy + deploy_bytes + latency_ms: each trial logs the latency of its own deploy artifact (onnxruntime, "
        "`measure_deploy_latency`: 5 warm-ups, then rounds of 10 runs back to back for at least 0.3 s, the lowest "
        "round median; 1 thread, batch 1), measured while the other trial runs on the second core. Each Pareto "
        "trial is exported with `export_model(..., 'onnx')` (= `rayzor export --format onnx`) and the file is "
        "timed the same way in a new process, nothing else running; that process also times it by the protocol "
        "before this one (rounds of 10 until two round medians agree within 3%, the median: a few milliseconds). "
        "After all the files, a second new process times each file again by both.",
        "",
        "| trial | deploy_bytes logged | exported file bytes | logged (ms) | fresh process (ms) | logged / fresh "
        "| second process (ms) | protocol before, first and second process (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['trial']} | {r['deploy_bytes']:.0f} | {r['file_bytes']:.0f} | {r['logged_ms']:.4f} | "
            f"{r['fresh_ms']:.4f} | {r['ratio']:.2f} | {r['fresh_later_ms']:.4f} | "
            f"{r['before_ms']:.4f}, {r['before_later_ms']:.4f} |"
            for r in rows
        ),
        "",
        f"**{within} of {len(rows)} within +-15%** (target: at least 8 of 9); exported bytes equal the logged "
        f"deploy_bytes for {sum(r['file_bytes'] == r['deploy_bytes'] for r in rows)} of {len(rows)}. Digits artifacts "
        "run in about 0.1 ms; the minilm section compares the same on a 10-30 ms encoder, where the other trial's "
        "compute on the second core inflates the logged latencies.",
        "",
        f"The same file in two new processes: by the protocol, {spread([(r['fresh_ms'], r['fresh_later_ms']) for r in rows])}; "
        f"by the protocol before it, {spread([(r['before_ms'], r['before_later_ms']) for r in rows])}.",
        "",
        f"The machine's own speed, measured just before the re-timing: {describe_phases(phases)}. A file timed in "
        "one kind of spell and re-timed in the other differs by about that ratio, whichever process times it.",
    ]
    replace_section("latency_agreement", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
