"""Benchmark: how much work two processes get done at once on this machine, against one alone.

A search at concurrency 2 on 2 cores can be at most twice as fast as at
concurrency 1, and only if two trial processes run side by side as fast as
one alone. This script measures that ceiling, without Ray or a search: each
workload runs in one process alone, then in two processes started together
(after their imports and a warm-up, released at once), in alternating rounds.
Ratio = median seconds of a process running beside another / alone; ceiling =
2 / ratio, the most that concurrency 2 can give over concurrency 1 for that
kind of work, before any scheduling cost.

Workloads: ``python`` (an interpreter loop, no native code), ``matmul``
(a 256x256 fp32 matrix product, torch on one thread), and ``trial`` (what a
default digits trial computes: compress a plan, fine-tune one epoch, score,
pack, build and time the deploy artifact, through the trials' own
``evaluate``).

Writes benchmarks/results/cores.json and the "cores" section of BENCHMARKS.md.

    python benchmarks/cores.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

KINDS = ("python", "matmul", "trial")


def _workload(kind: str):
    """The function one process times, after its imports and one untimed call."""
    if kind == "python":

        def run() -> None:
            x = 0
            for i in range(20_000_000):
                x += i

        return run
    import torch

    torch.set_num_threads(1)
    if kind == "matmul":
        a = torch.randn(256, 256)

        def run() -> None:
            for _ in range(1500):
                a @ a

        return run
    from rayzor.compression import CompressionPlan, FinetuneConfig
    from rayzor.search._trial import QUICK_LATENCY_SECONDS, TrialPlan, evaluate
    from rayzor.tasks import create_task

    task = create_task("digits")
    layers = ("conv1", "conv2", "fc1", "fc2")
    plans = [
        CompressionPlan(
            CompressionPlan.from_settings({n: {"sparsity": s, "bits": b} for n in layers}).layers,
            FinetuneConfig(epochs=1),
        )
        for s, b in ((0.0, 8), (0.3, 4), (0.5, 8), (0.2, 4))
    ]
    scratch = Path(tempfile.mkdtemp(prefix="rayzor-cores-"))

    def run() -> None:
        for i, plan in enumerate(plans * 3):
            out = scratch / str(i)
            out.mkdir(exist_ok=True)
            # timed as the default search times its trials (latency_ms is not one of its objectives: two rounds)
            evaluate(task, TrialPlan(plan), out, target="onnxruntime", latency_seconds=QUICK_LATENCY_SECONDS)

    return run


def _worker(kind: str) -> None:
    run = _workload(kind)
    run()  # warm-up: first-call costs are not what concurrency changes
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    run()
    print(f"{time.perf_counter() - start:.6f}", flush=True)


def _together(kind: str, n: int) -> list[float]:
    """Seconds of each of ``n`` processes released at once."""
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    out = [float(p.communicate()[0].strip()) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a {kind} worker failed")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of alone / two at once")
    parser.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    started = time.perf_counter()
    seconds: dict[str, dict[str, list[float]]] = {k: {"alone": [], "beside": []} for k in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            seconds[kind]["alone"] += _together(kind, 1)
            seconds[kind]["beside"] += _together(kind, 2)
            print(kind, {k: [round(v, 3) for v in vs] for k, vs in seconds[kind].items()}, flush=True)
    rows = []
    for kind in KINDS:
        alone, beside = statistics.median(seconds[kind]["alone"]), statistics.median(seconds[kind]["beside"])
        rows.append({"kind": kind, "alone_s": alone, "beside_s": beside, "ratio": beside / alone})
        rows[-1]["ceiling"] = 2 / rows[-1]["ratio"]
    report = {
        "command": "python benchmarks/cores.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "rounds": args.rounds,
        "seconds": seconds,
        "rows": rows,
        "wall_seconds": time.perf_counter() - started,
    }
    write_result("cores", report)
    _write_section(report)
    print(json.dumps(rows, indent=1))


_LABELS = {
    "python": "interpreter loop (20M additions)",
    "matmul": "torch matmul 256x256 fp32, 1 thread (x1500)",
    "trial": "digits trial compute, `evaluate` (4 plans x 3: compress, 1 fine-tune epoch, score, pack, deploy artifact)",
}


def _write_section(r: dict) -> None:
    lines = [
        "## cores: two processes at once against one alone",
        "",
        f"Command: `{r['command']}` ({describe_machine(r)}); {r['rounds']} alternating rounds, "
        f"whole run {r['wall_seconds']:.0f} s.",
        "",
        "Each workload runs in one process alone, then in two processes released together after their imports and "
        "a warm-up (no Ray, no search). Ratio = median seconds of a process beside another / alone. Ceiling = 2 / "
        "ratio: the most concurrency 2 can give over concurrency 1 on this kind of work, before any scheduling "
        "cost (the system benchmarks' throughput speed-up of c=2 over c=1 is bounded by it).",
        "",
        "| workload | alone (s) | beside another (s) | ratio | ceiling of c=2 over c=1 |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {_LABELS[row['kind']]} | {row['alone_s']:.3f} | {row['beside_s']:.3f} | {row['ratio']:.2f} "
            f"| {row['ceiling']:.2f}x |"
        )
    replace_section("cores", "\n".join(lines))


if __name__ == "__main__":
    main()
