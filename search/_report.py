"""What a finished search writes on its parent run: Pareto tags, pareto.json/csv/png, the final metrics."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayzor.search._config import quality_metric
from rayzor.search._records import FINISHED, STOPPED, TrialRecord, has_objectives
from rayzor.search._tags import TAG_PARETO

__all__ = ["front_rows", "log_report", "pareto_plot"]


def front_rows(front: Sequence[TrialRecord]) -> list[dict[str, Any]]:
    """One row per front trial, smallest first: run id, trial number, every metric, the plan summary."""
    rows = [{"run_id": r.run_id, "trial": r.number, **r.metrics, "plan": r.plan_summary} for r in front]
    return sorted(rows, key=lambda row: row.get("size_bytes", 0.0))


def pareto_plot(
    records: Sequence[TrialRecord],
    front: Sequence[TrialRecord],
    objectives: Sequence[str],
    baseline: Mapping[str, float],
) -> bytes:
    """PNG of quality against packed size: every finished trial, the front as a staircase, the fp32 line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.status == FINISHED and has_objectives(r, objectives)]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    quality = quality_metric(tuple(objectives))
    # the size the front is on: the deploy artifact's under a runtime target, else the packed file's
    size = next((o for o in objectives if o.endswith("_bytes")), "size_bytes")
    ax.scatter(
        [r.metrics[size] / 1024 for r in done],
        [r.metrics[quality] for r in done],
        s=18,
        c="#9aa5b1",
        label="trials",
    )
    pts = sorted((r.metrics[size] / 1024, r.metrics[quality]) for r in front)
    ax.step([p[0] for p in pts], [p[1] for p in pts], where="post", color="#d9480f", lw=1.5)
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=36, c="#d9480f", label="Pareto front", zorder=3)
    ax.axhline(baseline[quality], color="#2b8a3e", ls="--", lw=1, label=f"fp32 {quality}")
    ax.set_xscale("log")
    ax.set_xlabel(f"{'deploy artifact' if size == 'deploy_bytes' else 'packed'} size (KiB, log)")
    ax.set_ylabel(f"validation {quality}")
    ax.set_title(f"rayzor search: {' vs '.join(objectives)}")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


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
) -> None:
    """Tag every trial ``rayzor.pareto`` true/false and log the front and the counts on the parent run.

    Artifacts: ``pareto.json``, ``pareto.csv`` (rows of :func:`front_rows`)
    and ``pareto.png``; metrics ``pareto_size``, ``trials_finished``,
    ``trials_failed``, ``trials_stopped_early``.
    """
    on_front = {r.run_id for r in front}
    for r in records:
        client.set_tag(r.run_id, TAG_PARETO, "true" if r.run_id in on_front else "false")
    rows = front_rows(front)
    client.log_text(parent, json.dumps(rows, indent=2), "pareto.json")
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    client.log_text(parent, out.getvalue(), "pareto.csv")
    if front:
        client.log_image(parent, _png_array(pareto_plot(records, front, objectives, baseline)), "pareto.png")
    client.log_metric(parent, "pareto_size", len(front))
    client.log_metric(parent, "trials_finished", sum(r.status == FINISHED for r in records))
    client.log_metric(parent, "trials_failed", sum(r.status == "FAILED" for r in records))
    client.log_metric(parent, "trials_stopped_early", sum(r.status == STOPPED for r in records))
