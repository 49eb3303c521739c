"""What a search shows in the MLflow UI: Pareto run names, the descriptions, the URL to open."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from urllib.parse import quote, urlparse

from rayzor.search._config import quality_metric
from rayzor.search._records import FINISHED, STOPPED, TrialRecord, trial_label
from rayzor.search._tags import PARETO_FILTER, PARETO_HTML, PARETO_PNG, TAG_PARENT, TAG_PARETO, TAG_PLAN

__all__ = [
    "EXPERIMENT_NOTE",
    "browse_hint",
    "format_bytes",
    "pareto_run_name",
    "runs_url",
    "search_filter",
    "search_note",
    "size_metric",
]

#: Where ``mlflow ui`` serves by default.
_LOCAL_UI = "http://127.0.0.1:5000"
#: MLflow caps a run tag's value (the parent's description) at 8000 characters.
_NOTE_CHARS = 7800
#: The MLflow UI's model-training view (MLflow 3 opens a fresh browser in its GenAI view).
_ML_VIEW = "workflowType=machine_learning"
#: Short names of quality metrics in a Pareto run's name.
_SHORT = {"accuracy": "acc"}

#: The experiment's description (``mlflow.note.content``): what a rayzor search logs and how to find the answer.
EXPERIMENT_NOTE = f"""\
Runs written by **rayzor**, a search over per-layer compression plans (Ray Tune + Optuna).

- Each `rayzor search` is one **parent run** (named after the search): the config and the fp32 baseline
  (`baseline.*`) as params, the hypervolume per finished trial, and the Pareto front as
  `pareto.csv`, `pareto.json`, `{PARETO_PNG}` and `{PARETO_HTML}` (interactive: hover a point).
  Its description lists the front with an export command per point.
- Each trial is a **child run** `trial-NNNN` nested under it: the plan's per-layer choices as params
  (`LAYER.sparsity`, `LAYER.bits`, ...), the metrics (the task's quality metric, `size_bytes` of the packed
  file, `deploy_bytes` of the deploy artifact, `latency_ms`, `compression_ratio`, `trial_seconds`, ...),
  the tags `{TAG_PLAN}` (plan summary) and `{TAG_PARETO}`, `plan.json` and the packed model under `packed/`.
  A failed trial keeps its error in `rayzor.error` and `error.txt`.
- Pareto-optimal trials are renamed `trial-NNNN ★ <quality> · <size>` when the search ends.
  Show only them with the filter `{PARETO_FILTER}`.
- Export one: `rayzor export --run RUN_ID --format onnx --out model.onnx`.
"""


def format_bytes(n: float) -> str:
    """``512 B``, ``12.8 KiB``, ``1.25 MiB``: sizes as a reader compares them."""
    for unit, scale, digits in (("GiB", 2**30, 2), ("MiB", 2**20, 2), ("KiB", 2**10, 1)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}f} {unit}"
    return f"{n:.0f} B"


def size_metric(objectives: Sequence[str], metrics: Mapping[str, float] | None = None) -> str:
    """The size a search's front is on: its ``*_bytes`` objective, else ``deploy_bytes`` when measured, else ``size_bytes``."""
    chosen = next((o for o in objectives if o.endswith("_bytes")), None)
    if chosen:
        return chosen
    return "deploy_bytes" if metrics is not None and "deploy_bytes" in metrics else "size_bytes"


def _quality_text(value: float) -> str:
    return f"{value:.3f}" if 0.0 <= value <= 1.0 else f"{value:.4g}"


def pareto_run_name(record: TrialRecord, objectives: Sequence[str]) -> str:
    """The run name of a Pareto-optimal trial: ``trial-0018 ★ acc 0.972 · 12.8 KiB`` (``· 0.41 ms`` with latency)."""
    quality = quality_metric(tuple(objectives))
    m = record.metrics
    parts = [f"{_SHORT.get(quality, quality)} {_quality_text(m[quality])}" if quality in m else quality]
    size = size_metric(objectives, m)
    if size in m:
        parts.append(format_bytes(m[size]))
    if "latency_ms" in objectives and "latency_ms" in m:
        parts.append(f"{m['latency_ms']:.3g} ms")
    return f"{trial_label(record.number)} ★ " + " · ".join(parts)


def search_filter(parent_run_id: str | None = None) -> str:
    """The runs-table filter of Pareto-optimal trials: of one search, or (no id) of every search."""
    if parent_run_id is None:
        return PARETO_FILTER
    return f"{PARETO_FILTER} and tags.\"{TAG_PARENT}\" = '{parent_run_id}'"


def _ui_base(tracking_uri: str) -> str:
    if urlparse(tracking_uri).scheme in ("http", "https"):
        return tracking_uri.rstrip("/")
    return _LOCAL_UI


def runs_url(tracking_uri: str, experiment_id: str, parent_run_id: str | None = None) -> str:
    """The MLflow UI's runs table of the experiment, filtered to the Pareto-optimal trials (of one search).

    ``workflowType=machine_learning`` opens the UI's model-training view
    (MLflow 3 starts a fresh browser in its GenAI view).
    """
    return (
        f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{_ML_VIEW}"
        f"&searchFilter={quote(search_filter(parent_run_id), safe='')}"
    )


def browse_hint(tracking_uri: str, experiment_id: str, parent_run_id: str) -> list[str]:
    """The lines that tell a user where to look: the server to start (local store), the URL, the filter.

    The URL opens the runs table filtered to this search's Pareto-optimal
    trials; the short filter (every search of the experiment) is printed to
    paste into the table's search box.
    """
    lines = []
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        lines.append(f"mlflow ui --backend-store-uri {tracking_uri}")
        lines.append(f"then open {runs_url(tracking_uri, experiment_id, parent_run_id)}")
    else:
        lines.append(f"open {runs_url(tracking_uri, experiment_id, parent_run_id)}")
    lines.append(f"search run {_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{parent_run_id}?{_ML_VIEW}")
    lines.append(f"filter: {PARETO_FILTER}")
    return lines


def _cell(text: str, chars: int = 80) -> str:
    # A large model's plan summary runs to thousands of characters: the table keeps its start.
    text = text if len(text) <= chars else text[: chars - 1] + "…"
    return text.replace("|", "\\|").replace("\n", " ")


def search_note(
    *,
    name: str,
    parent_run_id: str,
    experiment_id: str,
    tracking_uri: str,
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
    hypervolume: float,
) -> str:
    """The parent run's description (markdown): the front, the filter, an export command per point.

    Kept under MLflow's tag length: rows that do not fit are counted, and
    ``pareto.csv`` holds them all.
    """
    quality = quality_metric(tuple(objectives))
    size = size_metric(objectives, baseline)
    fp32_size = baseline.get(size, baseline.get("size_bytes", math.nan))
    counts = {s: sum(r.status == s for r in records) for s in (FINISHED, "FAILED", STOPPED)}
    rows = sorted(front, key=lambda r: (r.metrics.get(size, math.inf), -r.metrics.get(quality, 0.0)))
    size_label = "deploy size" if size == "deploy_bytes" else "packed size" if size == "size_bytes" else size
    head = [
        f"### rayzor search `{name}`: {len(front)} Pareto-optimal of {len(records)} trials",
        "",
        f"Objectives {', '.join(objectives)}; hypervolume {hypervolume:.4f}; "
        f"{counts[FINISHED]} finished, {counts['FAILED']} failed, {counts[STOPPED]} stopped early. "
        f"fp32 baseline: {quality} {baseline.get(quality, math.nan):.4f}, {format_bytes(fp32_size)}.",
        "",
        f"| trial | {quality} | {size_label} | smaller than fp32 | latency | plan |",
        "|---|---:|---:|---:|---:|---|",
    ]
    table = []
    for r in rows:
        m = r.metrics
        link = f"[{trial_label(r.number)}](#/experiments/{experiment_id}/runs/{r.run_id})"
        table.append(
            f"| {link} | {m.get(quality, math.nan):.4f} | {format_bytes(m.get(size, math.nan))} | "
            f"{fp32_size / m.get(size, math.nan):.1f}x | {m.get('latency_ms', math.nan):.3g} ms | "
            f"`{_cell(r.plan_summary)}` |"
        )
    filters = [
        "",
        "**Only these runs** in the runs table: paste into its search box",
        "",
        "```",
        search_filter(parent_run_id),
        "```",
        "",
        f"(Pareto runs of every search in this experiment: `{PARETO_FILTER}`)",
        "",
        f"**Export a point** (`--format onnx`, `onnx-fp32`, `onnx-int8` or `packed`); "
        f"plots: `{PARETO_PNG}`, `{PARETO_HTML}` (hover a point); every row: `pareto.csv`.",
        "",
        "```",
    ]
    exports = [
        f"rayzor export --run {r.run_id} --tracking-uri {tracking_uri} --format onnx --out {trial_label(r.number)}.onnx"
        for r in rows
    ]
    budget = _NOTE_CHARS - sum(len(line) + 1 for line in head + filters) - 120
    # A point's row and its export command go together; the points that do not fit are counted.
    kept = 0
    for row, command in zip(table, exports):
        cost = len(row) + len(command) + 2
        if cost > budget:
            break
        budget -= cost
        kept += 1
    lines = head + table[:kept]
    if kept < len(table):
        lines.append(f"\n{len(table) - kept} more points, with their run ids, in `pareto.csv`.")
    lines += [*filters, *exports[:kept], "```"]
    return "\n".join(lines) + "\n"
