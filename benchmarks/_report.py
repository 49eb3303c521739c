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
