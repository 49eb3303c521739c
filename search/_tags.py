"""Every MLflow tag, role and artifact name a search writes and reads.

The layout is a contract: ``rayzor pareto``/``export``, the tests and users'
own queries read these names.
"""

from __future__ import annotations

__all__ = [
    "PACKED_ARTIFACT_DIR",
    "PARETO_FILTER",
    "PARETO_HTML",
    "PARETO_PNG",
    "PACKED_NAME",
    "DEPLOY_NAME",
    "TAG_MODEL_RUN",
    "TAG_MODEL_SEARCH",
    "TAG_NOTE",
    "TAG_RUN_NAME",
    "TAG_MODEL_METRIC_PREFIX",
    "PLAN_ARTIFACT",
    "ROLE_SEARCH",
    "ROLE_SENSITIVITY",
    "ROLE_TRIAL",
    "TAG_DEVICE",
    "TAG_EARLY_STOPPED",
    "TAG_ERROR",
    "TAG_MODEL",
    "TAG_NODE_ID",
    "TAG_OBJECTIVES",
    "TAG_ORPHAN",
    "TAG_PARENT",
    "TAG_PARETO",
    "TAG_PLAN",
    "TAG_RESUMABLE",
    "TAG_ROLE",
    "TAG_TASK",
    "TAG_TRIAL",
    "TAG_TRIAL_ID",
    "TAG_WARM_START",
]

#: MLflow's own tag nesting a child run under its parent.
TAG_PARENT = "mlflow.parentRunId"
#: MLflow's own description of a run or an experiment (markdown, shown in the UI).
TAG_NOTE = "mlflow.note.content"
#: MLflow's own run name tag (the name the runs table shows).
TAG_RUN_NAME = "mlflow.runName"
#: What a run is: :data:`ROLE_SEARCH`, :data:`ROLE_TRIAL` or :data:`ROLE_SENSITIVITY`.
TAG_ROLE = "rayzor.role"
#: Tags of a registered model version (``rayzor export --register``): the trial's run, its search, its metrics.
TAG_MODEL_RUN = "rayzor.run_id"
TAG_MODEL_SEARCH = "rayzor.search_id"
TAG_MODEL_METRIC_PREFIX = "rayzor.metric."
ROLE_SEARCH = "search"
ROLE_TRIAL = "trial"
ROLE_SENSITIVITY = "sensitivity"

# Parent (search) runs
#: Comma-separated objectives of the search.
TAG_OBJECTIVES = "rayzor.objectives"

#: ``true`` on a search that stopped before its end (Ctrl-C, a crash, a tracking outage):
#: ``rayzor search --resume NAME`` finishes it; ``false`` once it finished.
TAG_RESUMABLE = "rayzor.resumable"

# Child (trial) runs
#: ``true``/``false``: whether the trial is on the search's final Pareto front.
TAG_PARETO = "rayzor.pareto"
#: The MLflow search filter (runs table, ``search_runs``) that shows only Pareto-optimal trials.
PARETO_FILTER = f"tags.\"{TAG_PARETO}\" = 'true'"
#: The compact plan summary (one cell per layer).
TAG_PLAN = "rayzor.plan"
#: The trial's 1-based number in the search.
TAG_TRIAL = "rayzor.trial"
#: Tune's trial id: a resumed search finds the runs it logged by it.
TAG_TRIAL_ID = "rayzor.trial_id"
#: The compressed model: a student family, or ``teacher``.
TAG_MODEL = "rayzor.model"
#: Set on a trial that ran an enqueued warm-start plan; the value is the config's ``warm_start``.
TAG_WARM_START = "rayzor.warm_start"
#: The last line of a failed trial's error.
TAG_ERROR = "rayzor.error"
#: Set on a trial the scheduler stopped early: ``after epoch N``.
TAG_EARLY_STOPPED = "rayzor.early_stopped"
#: Set on a run deleted because the restored Tune experiment never saw its trial.
TAG_ORPHAN = "rayzor.orphan"
#: Ray node the trial ran on.
TAG_NODE_ID = "rayzor.node_id"
#: ``cpu`` or ``cuda``: where the trial fine-tuned.
TAG_DEVICE = "rayzor.device"

# Sensitivity runs
#: The probed task's name.
TAG_TASK = "rayzor.task"

# Artifacts of a search (parent) run
#: The Pareto plot: quality against size, every finished trial, the front labelled.
PARETO_PNG = "pareto.png"
#: The same plot, interactive: hover a point for its trial, metrics and plan.
PARETO_HTML = "pareto.html"

# Artifacts of a trial run
#: The plan's JSON (:meth:`compression.CompressionPlan.to_json`).
PLAN_ARTIFACT = "plan.json"
#: Folder of the packed model.
PACKED_ARTIFACT_DIR = "packed"
#: File name of the packed model, in the trial's checkpoint and under :data:`PACKED_ARTIFACT_DIR`.
PACKED_NAME = "packed.safetensors"
#: File name of a trial's deploy artifact (``target: onnxruntime``), rebuilt from the packed file on export.
DEPLOY_NAME = "model.onnx"
