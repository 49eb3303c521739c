"""Benchmark: what the packed file's entropy stage costs to write, and what it saves.

For each task and plan, one compressed model is saved side by side in one run
with ``entropy=None``, ``"lzma"`` and ``"zstd"`` (median of ``--repeats``
saves each, after one untimed warm-up), and each file is read back. A search
with ``entropy:`` set pays the coded save once per trial, so on a small model
the ``x plain save`` column is what the stage adds to each trial.

``--before`` adds the same table from a results file this script wrote at an
earlier commit (the comparison is then across two runs: the ratios to the
plain save, which the entropy stage does not touch, are what to compare).

Writes benchmarks/results/<name>.json and the "<name>" section of BENCHMARKS.md.

    python benchmarks/entropy_stage.py [--repeats 5] [--before benchmarks/results/entropy_stage_<commit>.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

CODECS = (None, "lzma", "zstd")


def _plans() -> dict[str, Any]:
    from rayzor.compression import MagnitudePruning, UniformQuantization

    return {
        "8-bit": (UniformQuantization(8),),
        "4-bit": (UniformQuantization(4),),
        "50% sparse, 4-bit": (MagnitudePruning(0.5), UniformQuantization(4)),
    }


def _time_saves(task: Any, methods: tuple, repeats: int, scratch: Path) -> dict[str, Any]:
    from rayzor.compression import CompressionPlan, compress, compressible_layers, load_packed, save_packed

    out = compress(task.model, CompressionPlan({name: methods for name in compressible_layers(task.model)}))
    row: dict[str, Any] = {}
    for codec in CODECS:
        path = scratch / f"{codec}.rzp"
        save_packed(out, path, arch=task.arch, entropy=codec)  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            size = save_packed(out, path, arch=task.arch, entropy=codec)
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        _, info = load_packed(path)
        row[str(codec)] = {
            "bytes": size,
            "save_s": statistics.median(times),
            "saves_s": times,
            "load_s": time.perf_counter() - started,
            "coded": info.entropy,
        }
    return row


def _table(report: dict[str, Any]) -> list[str]:
    lines = [
        "| task | plan | plain (B) | lzma (B) | zstd (B) | plain save (ms) | lzma save (ms) | x plain save "
        "| zstd save (ms) | x plain save | lzma load (ms) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        plain, lz, zs = r["None"], r["lzma"], r["zstd"]
        lines.append(
            f"| {r['task']} | {r['plan']} | {plain['bytes']:,} | {lz['bytes']:,} | {zs['bytes']:,} "
            f"| {1e3 * plain['save_s']:.1f} | {1e3 * lz['save_s']:.1f} | {lz['save_s'] / plain['save_s']:.1f} "
            f"| {1e3 * zs['save_s']:.1f} | {zs['save_s'] / plain['save_s']:.1f} | {1e3 * lz['load_s']:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tasks", default="digits,resnet18", help="comma-separated task names")
    parser.add_argument("--name", default="entropy_stage", help="results file and BENCHMARKS.md section")
    parser.add_argument("--before", help="a results JSON of this script at an earlier commit")
    parser.add_argument("--before-label", default="", help="what --before measured")
    args = parser.parse_args()

    import torch

    from rayzor.tasks import create_task

    torch.set_num_threads(1)  # as in a trial on this 2-core machine
    rows = []
    with tempfile.TemporaryDirectory(prefix="rayzor-entropy-") as scratch:
        for task_name in args.tasks.split(","):
            task = create_task(task_name)
            for label, methods in _plans().items():
                row = {"task": task_name, "plan": label, **_time_saves(task, methods, args.repeats, Path(scratch))}
                rows.append(row)
                print(task_name, label, {c: (row[c]["bytes"], round(row[c]["save_s"], 4)) for c in map(str, CODECS)})
    command = "python benchmarks/entropy_stage.py" + "".join(
        f" --{k.replace('_', '-')} {json.dumps(v) if ' ' in str(v) else v}"
        for k, v in vars(args).items()
        if v and v != parser.get_default(k)
    )
    report = {**machine(), "command": command, "repeats": args.repeats, "load_average_1min": os.getloadavg()[0]}
    report["rows"] = rows
    write_result(args.name, report)
    lines = [
        "## entropy_stage: the packed file's lossless stage, its bytes and its cost",
        "",
        "Each task's model compressed once per plan (every compressible layer), then saved with "
        "`entropy=None`, `lzma` and `zstd` side by side in one run: median of "
        f"{args.repeats} saves each after a warm-up, 1 torch thread; the load is one `load_packed` of the lzma file. "
        "`x plain save` = the coded save's time / the plain save's: what `entropy:` adds to each trial's save.",
        "",
    ]
    if args.before:
        before = json.loads(Path(args.before).read_text())
        lines += [
            f"Before ({args.before_label or args.before}):",
            "",
            f"Command: `{before['command']}` ({describe_machine(before)}).",
            "",
            *_table(before),
            "",
            "After (this commit):",
            "",
        ]
    lines += [f"Command: `{command}` ({describe_machine(report)}).", "", *_table(report)]
    replace_section(args.name, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
