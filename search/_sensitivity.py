"""Sensitivity probes on Ray, logged to MLflow: a table and a heatmap, alone or inside a search."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rayzor.compression import FinetuneConfig
from rayzor.search._config import SearchConfig
from rayzor.search._ray import check_ray_address, start_ray
from rayzor.search._tags import ROLE_SENSITIVITY, TAG_ROLE, TAG_TASK
from rayzor.search._tracking import connect, log_params
from rayzor.spaces import (
    CompressionSpace,
    SensitivityRow,
    sensitivity,
    sensitivity_points,
)
from rayzor.tasks import Task, create_task

__all__ = [
    "ROLE_SENSITIVITY",
    "SENSITIVITY_DIR",
    "SensitivityResult",
    "drop_matrix",
    "level_label",
    "log_sensitivity",
    "probe",
    "run_sensitivity",
    "search_phase",
]

#: Artifact folder of the sensitivity phase inside a search's parent run.
SENSITIVITY_DIR = "sensitivity"


@dataclass
class SensitivityResult:
    """The probes, the warm-start plans they give, and where they were logged."""

    task: str
    metric: str
    baseline: float
    rows: list[SensitivityRow]
    points: list[dict[str, Any]]
    seconds: float
    run_id: str = ""
    experiment_id: str = ""
    tracking_uri: str = ""
    units: dict[str, list[str]] = field(default_factory=dict)


def level_label(dimension: str, value: float) -> str:
    """A probe level as a column header: ``s=0.5`` (sparsity) or ``4b`` (bits)."""
    return f"s={value:g}" if dimension == "sparsity" else f"{value:g}b"


def drop_matrix(rows: Sequence[SensitivityRow]) -> tuple[list[str], list[tuple[str, float]], list[list[float | None]]]:
    """Units (probe order) x levels (sparsity rising, then bits falling: milder to harsher), metric drop or None."""
    units = list(dict.fromkeys(r.unit for r in rows))
    levels = sorted(
        {(r.dimension, r.value) for r in rows},
        key=lambda lv: (lv[0] != "sparsity", lv[1] if lv[0] == "sparsity" else -lv[1]),
    )
    drops = {(r.unit, r.dimension, r.value): r.drop for r in rows}
    return units, levels, [[drops.get((u, *lv)) for lv in levels] for u in units]


def probe(
    task: Task, space: CompressionSpace, progress: Callable[[str], None] = lambda line: None
) -> tuple[list[SensitivityRow], list[dict[str, Any]], float]:
    """Run the probes as Ray tasks (Ray must be running) and derive the warm-start plans.

    Returns ``(rows, points, seconds)``.
    """
    started = time.perf_counter()
    rows = sensitivity(task, space, parallel=True)
    points = sensitivity_points(space, rows)
    seconds = time.perf_counter() - started
    progress(
        f"sensitivity: {len(rows)} probes of {len({r.unit for r in rows})} units on Ray in {seconds:.1f} s, "
        f"{len(points)} warm-start plans"
    )
    return rows, points, seconds


def _heatmap(rows: Sequence[SensitivityRow], metric: str, title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    units, levels, matrix = drop_matrix(rows)
    values = np.ma.masked_invalid(np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float))
    fig, ax = plt.subplots(figsize=(2.5 + 0.75 * max(1, len(levels)), 1.4 + 0.32 * max(1, len(units))), dpi=110)
    cmap = plt.get_cmap("Reds").with_extremes(bad="#e9ecef")  # grey: a level outside the unit's range, not probed
    top = float(values.max()) if values.count() else 1.0
    image = ax.imshow(values, cmap=cmap, vmin=0.0, vmax=max(top, 1e-3), aspect="auto")
    if len(units) * len(levels) <= 600:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                if v is not None:
                    ax.text(
                        j,
                        i,
                        f"{v:+.3f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > 0.6 * top else "black",
                    )
    ax.set_xticks(range(len(levels)), [level_label(*lv) for lv in levels])
    ax.set_yticks(range(len(units)), units, fontsize=8)
    ax.set_xlabel("level (only this unit compressed, no fine-tune)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=f"{metric} drop")
    fig.tight_layout()
    return fig


def log_sensitivity(client: Any, run_id: str, result: SensitivityResult, artifact_dir: str = "") -> None:
    """Log the probes of ``result`` in one MLflow run.

    Artifacts (under ``artifact_dir``): ``sensitivity.json`` (an MLflow table:
    unit, layers, dimension, value, metric, drop), ``sensitivity.csv``,
    ``heatmap.png`` (units x levels, metric drop) and ``warm_start.json``.
    """
    import matplotlib.pyplot as plt

    path = (lambda name: f"{artifact_dir.rstrip('/')}/{name}") if artifact_dir else (lambda name: name)
    columns = ["unit", "layers", "dimension", "value", "metric", "drop"]
    records = [
        {
            "unit": r.unit,
            "layers": ",".join(result.units.get(r.unit, [r.unit])),
            "dimension": r.dimension,
            "value": r.value,
            "metric": r.metric,
            "drop": r.drop,
        }
        for r in result.rows
    ]
    client.log_table(run_id, {c: [rec[c] for rec in records] for c in columns}, path("sensitivity.json"))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(records)
    client.log_text(run_id, out.getvalue(), path("sensitivity.csv"))
    client.log_text(run_id, json.dumps(result.points, indent=2), path("warm_start.json"))
    if result.rows:
        fig = _heatmap(
            result.rows,
            result.metric,
            f"{result.metric} drop per unit, task {result.task!r} (fp32 {result.baseline:.4f})",
        )
        try:
            client.log_figure(run_id, fig, path("heatmap.png"))
        finally:
            plt.close(fig)


def _result(
    task: Task, space: CompressionSpace, rows: list[SensitivityRow], points: list[dict[str, Any]], seconds: float
) -> SensitivityResult:
    base = task.baseline["val"][task.metric]
    return SensitivityResult(
        task.name, task.metric, base, rows, points, seconds, units={u.prefix: list(u.layers) for u in space.units}
    )


def search_phase(
    client: Any, parent_id: str, task: Task, space: CompressionSpace, progress: Callable[[str], None]
) -> SensitivityResult:
    """The sensitivity phase of a search with ``warm_start: sensitivity``, logged in its parent run."""
    result = _result(task, space, *probe(task, space, progress))
    log_sensitivity(client, parent_id, result, SENSITIVITY_DIR)
    client.log_metric(parent_id, "sensitivity_seconds", result.seconds)
    result.run_id = parent_id
    return result


def run_sensitivity(config: SearchConfig, *, progress: Callable[[str], None] = print) -> SensitivityResult:
    """``rayzor sensitivity``: probe on Ray (the config's cluster, else a local one), log one MLflow run.

    The run (tag ``rayzor.role=sensitivity``, in ``config.experiment``) holds
    the config's task and space as params and the artifacts of
    :func:`log_sensitivity`. Bad input raises before Ray starts.
    """
    check_ray_address(config)
    client, uri, experiment_id = connect(config.tracking_uri, config.experiment)
    task = create_task(config.task, **config.task_options)
    space = config.space.build(
        task.model,
        FinetuneConfig(epochs=config.finetune_epochs, seed=config.seed),
        example_input=task.example_input,
        target=config.target,
        accuracy_level=config.accuracy_level,
    )
    started_ray = start_ray(config)
    run_id, status = None, "FAILED"
    try:
        run_id = client.create_run(
            experiment_id,
            run_name=datetime.now().strftime("sensitivity-%Y%m%d-%H%M%S"),
            tags={TAG_ROLE: ROLE_SENSITIVITY, TAG_TASK: task.name},
        ).info.run_id
        result = _result(task, space, *probe(task, space, progress))
        log_params(
            client,
            run_id,
            {
                "task": config.task,
                "task_options": config.task_options,
                "metric": task.metric,
                f"baseline.{task.metric}": result.baseline,
                "units": len(space.units),
                "probes": len(result.rows),
                "space.sparsity": list(config.space.sparsity),
                "space.bits": list(config.space.bits),
            },
        )
        client.log_text(run_id, json.dumps(space.describe(), indent=2), "space.json")
        log_sensitivity(client, run_id, result)
        client.log_metric(run_id, "sensitivity_seconds", result.seconds)
        result.run_id, result.experiment_id, result.tracking_uri = run_id, experiment_id, uri
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if run_id is not None:
            client.set_terminated(run_id, status)
        if started_ray:
            import ray

            ray.shutdown()
    return result
