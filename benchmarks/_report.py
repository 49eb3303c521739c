"""Shared by the benchmark scripts: machine facts and BENCHMARKS.md sections."""

from __future__ import annotations

import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def cpu() -> dict[str, Any]:
    """The CPU model and its int8-related flags: onnxruntime's int8 kernels use VNNI or AMX when present,
    so an int8 speed-up measured on one CPU is not another's."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or "unknown", "int8_flags": []}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": fields.get("model name", "unknown"), "int8_flags": [f for f in wanted if f in flags]}


def speed_phases(rounds: int = 60, gap_s: float = 0.05) -> dict[str, Any]:
    """How steady this machine's speed is: a fixed 64x64 fp32 matmul (torch, 1 thread), timed as the
    median of 200 runs per round, ``rounds`` rounds ``gap_s`` apart.

    A shared VM can run at two speeds that alternate every fraction of a second (a host's other tenant
    on the same physical core); a latency timed in one spell and re-timed in another differs by their
    ratio, whatever the protocol. ``slow_share``: rounds over 1.25x the fast speed.
    """
    import statistics
    import time

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    a = torch.randn(64, 64)
    medians = []
    try:
        for _ in range(rounds):
            times = []
            for _ in range(200):
                start = time.perf_counter()
                a @ a
                times.append(time.perf_counter() - start)
            medians.append(statistics.median(times) * 1e6)
            time.sleep(gap_s)
    finally:
        torch.set_num_threads(threads)
    fast = sorted(medians)[len(medians) // 10]
    slow = [m for m in medians if m > 1.25 * fast]
    return {
        "round_us": medians,
        "fast_us": fast,
        "slow_us": statistics.median(slow) if slow else None,
        "slow_share": len(slow) / len(medians),
    }


def describe_phases(p: dict[str, Any]) -> str:
    """One sentence on :func:`speed_phases`."""
    n = len(p["round_us"])
    if p["slow_us"] is None:
        return f"a fixed 64x64 matmul (1 thread) ran at one speed, {p['fast_us']:.1f} us, in all {n} rounds"
    return (
        f"a fixed 64x64 matmul (1 thread) took {p['fast_us']:.1f} us in fast rounds and {p['slow_us']:.1f} us "
        f"({p['slow_us'] / p['fast_us']:.2f}x) in {p['slow_share']:.0%} of {n} rounds 50 ms apart"
    )


def machine() -> dict[str, Any]:
    """Where and with what a benchmark ran."""
    import mlflow
    import optuna
    import ray
    import torch

    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        "cpu": cpu(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "optuna": optuna.__version__,
            "mlflow": mlflow.__version__,
        },
    }


def describe_machine(report: dict[str, Any]) -> str:
    """One line: date, machine and versions of a report made with :func:`machine`."""
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    where = report["machine"]
    if "cpu" in report:  # reports written before the CPU was recorded have none
        flags = report["cpu"]["int8_flags"]
        where += f" ({report['cpu']['model']}; {', '.join(flags) if flags else 'no AVX2'})"
    return f"{report['date']}, {where}; {versions}"


def write_result(name: str, report: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path


def replace_section(name: str, body: str) -> None:
    """Replace (or append) the ``<!-- name:begin -->`` section of BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    text = (
        path.read_text()
        if path.exists()
        else (
            "# Benchmarks\n\nEvery figure here is written by the command named in its section; "
            "rerun the command to refresh it, never edit a figure by hand.\n"
        )
    )
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
