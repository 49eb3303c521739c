"""What the CLI prints: a Pareto table that fits any terminal, and plain aligned rows off one.

On a terminal the table fits its width: the run id shrinks to a prefix, the
plan is cut with an ellipsis, and columns that are not objectives go before a
number is ever cut. Off a terminal (a pipe, a CI log, a Ray Job's log) the rows
are full width and never wrapped, so ``grep`` and ``less`` read them whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console

__all__ = ["RUN_ID_PREFIX", "FrontTable", "fit", "fmt_metric", "front_table", "print_front", "render_rows"]

#: Metric columns after the quality metric, in order, with their headers.
_COLUMNS = {
    "deploy_bytes": "deploy",
    "size_bytes": "packed",
    "compression_ratio": "ratio",
    "latency_ms": "latency",
    "weight_sparsity": "zeros",
}
#: Metric columns dropped first when a terminal is too narrow (objectives never are).
_DROP_ORDER = ("weight_sparsity", "latency_ms", "compression_ratio", "size_bytes", "deploy_bytes")
#: Characters of the run id kept on a terminal: unique within any real experiment, and `rayzor pareto --json` has all.
RUN_ID_PREFIX = 8
#: Narrowest plan column worth showing on a terminal.
_MIN_PLAN = 16
_GAP = "  "


def fmt_metric(metric: str, value: float) -> str:
    """One metric as the table shows it (bytes in KiB, ratios as ``3.5x``)."""
    if metric.endswith("_bytes"):
        return f"{value / 1024:.1f} KiB"
    if metric == "compression_ratio":
        return f"{value:.1f}x"
    if metric == "latency_ms":
        return f"{value:.3f} ms"
    return f"{value:.4f}"


@dataclass
class FrontTable:
    """A table as plain cells: headers, rows, which columns are right-aligned, and the metric of each metric column."""

    headers: list[str]
    rows: list[list[str]]
    right: list[bool]
    metrics: list[str]


def front_table(records: Sequence[Any], objectives: Sequence[str], quality: str, *, full_ids: bool) -> FrontTable:
    """The Pareto front as cells: trial, run id, the quality metric, sizes, ratio, latency, zeros, plan.

    Args:
        records: The front's ``TrialRecord``s, in the order to print.
        objectives: The search's objectives (their columns are never dropped).
        quality: The quality metric.
        full_ids: Full run ids; else a prefix of :data:`RUN_ID_PREFIX` characters.
    """
    from rayzor.search._records import trial_label

    shown = [m for m in _COLUMNS if any(m in r.metrics for r in records) or m in objectives]
    metrics = [quality, *shown]
    headers = ["trial", "run id", *(_COLUMNS.get(m, m) for m in metrics), "plan (layer sparsity/bits)"]
    rows = [
        [
            trial_label(r.number),
            r.run_id if full_ids else r.run_id[:RUN_ID_PREFIX],
            *(fmt_metric(m, r.metrics[m]) if m in r.metrics else "-" for m in metrics),
            r.plan_summary,
        ]
        for r in records
    ]
    return FrontTable(headers, rows, [False, False, *(True for _ in metrics), False], metrics)


def _widths(table: FrontTable) -> list[int]:
    return [max([len(h), *(len(row[i]) for row in table.rows)]) for i, h in enumerate(table.headers)]


def _drop(table: FrontTable, column: int) -> None:
    del table.headers[column], table.right[column]
    for row in table.rows:
        del row[column]


def fit(table: FrontTable, width: int, objectives: Sequence[str]) -> FrontTable:
    """Fit ``table`` into ``width`` columns without cutting a number.

    The plan column is cut first (with an ellipsis, down to a few
    characters), then dropped; then metric columns that are not objectives
    are dropped, least telling first.
    """
    metrics = table.metrics

    def total() -> int:
        widths = _widths(table)
        return sum(widths) + len(_GAP) * (len(widths) - 1)

    plan = len(table.headers) - 1
    excess = total() - width
    if excess > 0:
        room = _widths(table)[plan] - excess
        if room >= _MIN_PLAN:
            table.headers[plan] = _cut(table.headers[plan], room)
            for row in table.rows:
                row[plan] = _cut(row[plan], room)
        else:
            _drop(table, plan)
    for metric in _DROP_ORDER:
        if total() <= width:
            break
        if metric in metrics and metric not in objectives:
            _drop(table, 2 + metrics.index(metric))
            metrics.remove(metric)
    return table


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_rows(table: FrontTable) -> list[str]:
    """Aligned plain-text lines: a header, then one line per row; cells are never wrapped."""
    widths = _widths(table)

    def line(cells: list[str]) -> str:
        out = [c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, table.right)]
        return _GAP.join(out).rstrip()

    return [line(table.headers), *(line(row) for row in table.rows)]


def print_front(console: Console, records: Sequence[Any], objectives: Sequence[str], quality: str, title: str) -> None:
    """Print a titled Pareto table: fitted to a terminal, or full width off one."""
    terminal = console.is_terminal
    table = front_table(records, objectives, quality, full_ids=not terminal)
    if terminal:
        table = fit(table, console.width, objectives)
    console.print(title, markup=False, highlight=False, soft_wrap=True)
    for text in render_rows(table):
        console.print(text, markup=False, highlight=False, soft_wrap=True, overflow="ignore", crop=False)
    if terminal and records:
        console.print(
            f"run ids are cut to {RUN_ID_PREFIX} characters; `rayzor pareto --json` lists them whole",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
