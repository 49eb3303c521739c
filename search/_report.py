"""What a search writes beside its trials: Pareto tags and run names (kept current while it runs),
and once it ends the parent's description, pareto.json/csv/png/html, the final metrics."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayzor.search._browse import pareto_run_name, search_note
from rayzor.search._plot import pareto_html, pareto_png
from rayzor.search._records import FINISHED, STOPPED, TrialRecord, search_hypervolume, trial_label
from rayzor.search._tags import PARETO_HTML, PARETO_PNG, TAG_NOTE, TAG_PARETO, TAG_RUN_NAME

__all__ = ["front_rows", "log_report", "tag_front"]


def front_rows(front: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """One row per front trial, smallest first: run id, trial number, every metric, the plan summary."""
    rows = [{"run_id": r.run_id, "trial": r.number, **r.metrics, "plan": r.plan_summary} for r in front]
    return sorted(rows, key=lambda row: row.get("size_bytes", 0.0))


def tag_front(
    client: Any,
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    written: dict[str, dict[str, str]],
) -> int:
    """Tag each record's run ``rayzor.pareto`` true/false and name it, writing only what changed.

    A front member is named ``trial-0018 ★ acc 0.972 · 12.8 KiB``, any other
    run ``trial-0018`` (a run that left the front gets its plain name back).
    The tracker calls this after every logged trial, so the runs table's
    Pareto filter shows the front so far while a search runs.

    Args:
        client: An ``MlflowClient``.
        records: Every trial record of the search.
        front: The Pareto-optimal records among them.
        objectives: The search's objectives (the run names show them).
        written: Run id -> the tags its run holds, as far as the caller knows;
            updated with what this call writes. A run not in it is written.

    Returns:
        How many runs were written.
    """
    from mlflow.entities import RunTag

    on_front = {r.run_id for r in front}
    count = 0
    for r in records:
        member = r.run_id in on_front
        tags = {
            TAG_PARETO: "true" if member else "false",
            TAG_RUN_NAME: pareto_run_name(r, objectives) if member else trial_label(r.number),
        }
        if written.get(r.run_id) != tags:
            client.log_batch(r.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            written[r.run_id] = tags
            count += 1
    return count


def _png_array(png: bytes) -> np.ndarray:
    import matplotlib.image

    return (matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(np.uint8)


def log_report(
    client: Any,
    parent: str,
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
    written: dict[str, dict[str, str]] | None = None,
) -> None:
    """Mark the front in MLflow and log the report on the parent run.

    Every trial is tagged ``rayzor.pareto`` true/false and named (see
    :func:`tag_front`; ``written``: the tags its runs already hold). The
    parent's description (``mlflow.note.content``) lists the front, the
    runs-table filter and an export command per point. Artifacts:
    ``pareto.json``, ``pareto.csv`` (rows of :func:`front_rows`),
    ``pareto.png`` and ``pareto.html``; metrics ``pareto_size``,
    ``trials_finished``, ``trials_failed``, ``trials_stopped_early``.
    """
    tag_front(client, records, front, objectives, {} if written is None else written)
    rows = front_rows(front)
    client.log_text(parent, json.dumps(rows, indent=2), "pareto.json")
    out = io.StringIO()
    if rows:
        # Trials need not share every metric (a deferred trial's params_wait_seconds, GPTQ's calibration count).
        fields = list(dict.fromkeys(k for row in rows for k in row))
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    client.log_text(parent, out.getvalue(), "pareto.csv")
    info = client.get_run(parent).info
    if front:
        client.log_image(parent, _png_array(pareto_png(records, front, objectives, baseline)), PARETO_PNG)
        title = f"rayzor search {info.run_name}"
        client.log_text(parent, pareto_html(records, front, objectives, baseline, title=title), PARETO_HTML)
    note = search_note(
        name=info.run_name,
        parent_run_id=parent,
        experiment_id=info.experiment_id,
        tracking_uri=client.tracking_uri,
        records=records,
        front=front,
        objectives=objectives,
        baseline=baseline,
        hypervolume=search_hypervolume([r.metrics for r in front], objectives, baseline),
    )
    client.set_tag(parent, TAG_NOTE, note)
    client.log_metric(parent, "pareto_size", len(front))
    client.log_metric(parent, "trials_finished", sum(r.status == FINISHED for r in records))
    client.log_metric(parent, "trials_failed", sum(r.status == "FAILED" for r in records))
    client.log_metric(parent, "trials_stopped_early", sum(r.status == STOPPED for r in records))
