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


def machine() -> dict[str, Any]:
    """Where and with what a benchmark ran."""
    import mlflow
    import optuna
    import ray
    import torch

    return {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
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
    return f"{report['date']}, {report['machine']}; {versions}"


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
