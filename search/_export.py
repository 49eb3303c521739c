"""Read a search back from MLflow, pick a trial of its front, and export that trial's model."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rayzor.compression import (
    CompressedModel,
    OrtModule,
    PackedInfo,
    export_deploy,
    export_onnx,
    load_packed,
    max_abs_diff,
    measure_deploy_latency,
    measure_latency,
    quantize_onnx_int8,
)
from rayzor.errors import ConfigError, RayzorError
from rayzor.search._config import SearchConfig
from rayzor.search._pareto import parse_pick, pick
from rayzor.search._records import FINISHED, TrialRecord, front_of, has_objectives, record_of
from rayzor.search._tags import (
    PACKED_ARTIFACT_DIR,
    PACKED_NAME,
    ROLE_TRIAL,
    TAG_MODEL_METRIC_PREFIX,
    TAG_MODEL_RUN,
    TAG_MODEL_SEARCH,
    TAG_OBJECTIVES,
    TAG_PARENT,
    TAG_PARETO,
    TAG_ROLE,
)
from rayzor.search._tracking import connect, latest_search_run, trial_runs
from rayzor.tasks import Task, create_task

__all__ = [
    "EXPORT_FORMATS",
    "ONNX_TOLERANCE",
    "ExportReport",
    "SearchView",
    "check_out",
    "check_registry",
    "export_model",
    "load_search",
    "pick_run",
    "register_model",
]

#: ``onnx``: the deploy artifact the trial measured (low-bit codes in onnxruntime's native ops);
#: ``onnx-fp32``: every weight dequantized into plain fp32 ops, for tools that need them;
#: ``onnx-int8``: the deploy artifact with its remaining fp32 MatMul / Conv weights dynamically int8-quantized;
#: ``packed``: rayzor's packed file.
EXPORT_FORMATS = ("onnx", "onnx-fp32", "onnx-int8", "packed")
#: Largest |onnxruntime - torch| output difference an ONNX export may show.
ONNX_TOLERANCE = 1e-4


@dataclass
class SearchView:
    """A search as MLflow holds it: the parent run, its trials and its front.

    Attributes:
        recomputed: True when the front was recomputed from the trial
            metrics (the search wrote no ``rayzor.pareto`` tags yet).
    """

    client: Any
    experiment_id: str
    parent: Any
    objectives: tuple[str, ...]
    trials: list[TrialRecord]
    pareto: list[TrialRecord]
    recomputed: bool = False


def load_search(tracking_uri: str | None, experiment: str) -> SearchView:
    """The latest search of ``experiment``, read back from MLflow.

    The front is the one the search wrote: its trial runs tagged
    ``rayzor.pareto=true``, with the metrics they logged (a running search
    keeps them current, so this is its front so far). Only a search whose
    finished trials lack those tags (logged by a rayzor that tagged only at
    the end, and not ended) has its front recomputed from the FINISHED
    trials' metrics (``SearchView.recomputed``). Either way the front is
    sorted by size.

    Raises:
        ConfigError: no such store or experiment.
        RayzorError: the experiment has no search yet.
    """
    client, _, experiment_id = connect(tracking_uri, experiment, create=False)
    parent = latest_search_run(client, experiment_id, experiment)
    objectives = tuple(parent.data.tags.get(TAG_OBJECTIVES, "accuracy,size_bytes").split(","))
    pairs = sorted(
        ((record_of(r), r) for r in trial_runs(client, experiment_id, parent.info.run_id)),
        key=lambda pair: pair[0].number,
    )
    trials = [t for t, _ in pairs]
    # Tags are the search's word once every finished trial carries one (each is tagged as it is logged).
    # A FINISHED run without its objectives (an interrupted trial an older rayzor logged) is no result.
    tagged = bool(pairs) and all(
        TAG_PARETO in r.data.tags for t, r in pairs if t.status == FINISHED and has_objectives(t, objectives)
    )
    if tagged:
        front = [t for t, r in pairs if r.data.tags.get(TAG_PARETO) == "true" and has_objectives(t, objectives)]
    else:
        front = front_of(trials, objectives)
    front.sort(key=lambda r: r.metrics.get("size_bytes", 0.0))
    return SearchView(client, experiment_id, parent, objectives, trials, front, recomputed=not tagged)


def pick_run(view: SearchView, spec: str) -> TrialRecord:
    """The Pareto-optimal trial a ``--pick`` spec selects."""
    if not view.pareto:
        raise RayzorError(f"search {view.parent.info.run_name!r} has no finished trial to pick from")
    metrics = sorted({k for r in view.pareto for k in r.metrics})
    return view.pareto[pick([r.metrics for r in view.pareto], parse_pick(spec, metrics))]


@dataclass
class ExportReport:
    """What an export wrote and how it checked out."""

    run_id: str
    format: str
    path: str
    size_bytes: int
    val_metrics: dict[str, float]
    test_metrics: dict[str, float]
    max_abs_diff: float
    latency: dict[str, float]
    #: The file's bytes beside the trial's logged sizes and the fp32 ONNX model's.
    sizes: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    registered: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _config_of(client: Any, parent_run_id: str) -> SearchConfig:
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent_run_id, "search_config.json", tmp)
        return SearchConfig.model_validate(json.loads(Path(path).read_text()))


def _task_of(client: Any, parent_run_id: str) -> Task:
    config = _config_of(client, parent_run_id)
    return create_task(config.task, **config.task_options)


def _reference_batch(task: Task) -> torch.Tensor:
    inputs = next(iter(task.loader("val")))[0]
    return torch.cat([task.example_input, inputs])


def _write(
    compressed: CompressedModel,
    packed: Path,
    fmt: str,
    out: Path,
    batch: torch.Tensor,
    example: torch.Tensor,
    accuracy_level: int = 0,
) -> tuple[torch.nn.Module, float]:
    """Write ``out`` in ``fmt``; return the shipped model (as run from the file) and its max |diff| to the model."""
    model = compressed.model
    if fmt == "packed":
        shutil.copyfile(packed, out)
        shipped, _ = load_packed(out)
    elif fmt == "onnx":
        export_deploy(compressed, example, out, accuracy_level=accuracy_level)  # as the trial built it: same bytes
        shipped = OrtModule(out)
    elif fmt == "onnx-fp32":
        export_onnx(model, example, out)
        shipped = OrtModule(out)
    else:  # onnx-int8: the deploy artifact, its still-fp32 weights int8; stored codes are never re-quantized
        with tempfile.TemporaryDirectory() as tmp:
            export_deploy(compressed, example, Path(tmp) / "deploy.onnx", accuracy_level=accuracy_level)
            quantize_onnx_int8(Path(tmp) / "deploy.onnx", out)
        shipped = OrtModule(out)
    with torch.inference_mode():
        diff = max_abs_diff(shipped(batch), model(batch))
    return shipped, diff


def _compressed(model: torch.nn.Module, info: PackedInfo) -> CompressedModel:
    """The packed file's model as the engine returned it, for the deploy exporter."""
    return CompressedModel(model, info.plan, info.weights, info.structure, info.activations)


def _sizes(run: Any, task: Task, out: Path) -> tuple[dict[str, float], list[str]]:
    """The written file's bytes beside the trial's logged sizes and the fp32 ONNX model; warnings where they part."""
    sizes = {"file_bytes": float(out.stat().st_size)}
    for key in ("deploy_bytes", "size_bytes"):
        if key in run.data.metrics:
            sizes[key] = float(run.data.metrics[key])
    with tempfile.TemporaryDirectory() as tmp:
        sizes["fp32_onnx_bytes"] = float(
            export_onnx(task.model, task.example_input, Path(tmp) / "m.onnx").stat().st_size
        )
    warnings = []
    if sizes["file_bytes"] >= sizes["fp32_onnx_bytes"]:
        warnings.append(
            f"the file ({sizes['file_bytes']:.0f} B) is not smaller than the fp32 ONNX model "
            f"({sizes['fp32_onnx_bytes']:.0f} B): its compression does not survive this format"
        )
    return sizes, warnings


def check_out(out: Path) -> None:
    """Refuse an ``--out`` the export could not write, before any work.

    Raises:
        ConfigError: a path in a missing folder, or an existing folder.
    """
    if out.is_dir():
        raise ConfigError("--out", str(out), "a file path; that is an existing folder (name a file in it)")
    if not out.parent.is_dir():
        raise ConfigError("--out", str(out), "a path in an existing folder")


def export_model(
    client: Any, run_id: str, fmt: str, out: str | Path, *, allow_unverified: bool = False
) -> ExportReport:
    """Export one trial's model and check it.

    The packed artifact logged by the trial is the source of truth: it is
    loaded and re-scored on the validation split (must equal the logged
    metric). Then the file is written and checked: ``packed`` must reload to
    identical outputs; ``onnx`` (the deploy artifact, rebuilt by the function
    the trial built it with, so its bytes are the logged ``deploy_bytes``) and
    ``onnx-fp32`` must match torch in onnxruntime within 1e-4; ``onnx-int8``
    (int8 kernels for what stayed fp32) reports its difference. The test
    split is scored on the written file itself, as it will ship, and the
    batch-1 latency of the file is measured beside the torch model's. The
    report sets the file's bytes beside the trial's sizes and the fp32 ONNX
    model's, with a warning when the file is not smaller than fp32 or not the
    bytes the trial logged. A packed file without a checksum (older writers)
    is refused unless ``allow_unverified``.

    Raises:
        ConfigError: unknown format or run id.
        RayzorError: a check failed (the output file is removed).
    """
    from mlflow.exceptions import MlflowException

    if fmt not in EXPORT_FORMATS:
        raise ConfigError("--format", fmt, EXPORT_FORMATS)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError("--run", run_id, "the run id of a trial; `rayzor pareto` lists them") from None
    if run.data.tags.get(TAG_ROLE) != ROLE_TRIAL or run.info.status != "FINISHED" or not run.data.metrics:
        raise ConfigError("--run", run_id, "the run id of a FINISHED trial; `rayzor pareto` lists them")
    out = Path(out)
    check_out(out)
    config = _config_of(client, run.data.tags[TAG_PARENT])
    task = create_task(config.task, **config.task_options)
    # int8 activations (accuracy_level 4): the trial scored its deploy artifact, whose outputs are not torch's
    int8_compute = config.target == "onnxruntime" and config.accuracy_level != 0
    torch.set_num_threads(1)  # latency as a trial measured it
    with tempfile.TemporaryDirectory() as tmp:
        packed = Path(client.download_artifacts(run_id, f"{PACKED_ARTIFACT_DIR}/{PACKED_NAME}", tmp))
        # errors name the run, not the temporary download
        model, info = load_packed(packed, label=f"packed artifact of run {run_id}", allow_unverified=allow_unverified)
        val = task.score(model, "val")
        logged = float(run.data.metrics[task.metric])
        if not int8_compute and abs(val[task.metric] - logged) > 1e-6:
            raise RayzorError(
                f"packed model of run {run_id} scores {task.metric}={val[task.metric]} on val, but the trial logged {logged}"
            )
        batch = _reference_batch(task)
        try:
            shipped, diff = _write(
                _compressed(model, info), packed, fmt, out, batch, task.example_input, config.accuracy_level
            )
            if fmt == "packed" and diff != 0.0:
                raise RayzorError(f"packed file {out} reloads to different outputs (max abs diff {diff})")
            if fmt == "onnx-fp32" or (fmt == "onnx" and not int8_compute):
                if diff > ONNX_TOLERANCE:
                    raise RayzorError(f"ONNX export {out} differs from torch by {diff} > {ONNX_TOLERANCE}")
            if fmt == "onnx" and int8_compute:
                val = task.score(shipped, "val")  # what the trial logged: the artifact's own score
                if abs(val[task.metric] - logged) > 1e-6:
                    raise RayzorError(
                        f"deploy artifact of run {run_id} scores {task.metric}={val[task.metric]} on val, "
                        f"but the trial logged {logged}"
                    )
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    test = task.score(shipped, "test")
    latency = {"torch_ms": measure_latency(model, task.example_input)}
    if fmt != "packed":
        latency["file_ms"] = measure_deploy_latency(out, task.example_input)  # the trials' protocol
        latency["speedup"] = latency["torch_ms"] / latency["file_ms"]
        if "latency_ms" in run.data.metrics:
            latency["trial_ms"] = float(run.data.metrics["latency_ms"])
    sizes, warnings = _sizes(run, task, out)
    if fmt == "onnx" and "deploy_bytes" in sizes and sizes["deploy_bytes"] != sizes["file_bytes"]:
        warnings.append(
            f"the file ({sizes['file_bytes']:.0f} B) is not the {sizes['deploy_bytes']:.0f} B the trial logged as "
            "deploy_bytes (the rayzor or onnx version changed since the search?)"
        )
    return ExportReport(run_id, fmt, str(out), out.stat().st_size, val, test, diff, latency, sizes, warnings)


def check_registry(client: Any, name: str) -> None:
    """Refuse ``--register NAME`` before anything is written: a valid name and a store with a model registry.

    Raises:
        ConfigError: an empty name, or a tracking store without a model registry.
    """
    if not name or not name.strip():
        raise ConfigError("--register", name, "a registered-model name, e.g. digits-cnn")
    try:
        client.search_registered_models(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure here means no usable registry
        raise ConfigError(
            "--register",
            name,
            f"a tracking store with a model registry, e.g. sqlite:///mlflow.db or an MLflow server "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no registry'})",
        ) from None


def register_model(client: Any, report: ExportReport, name: str) -> dict[str, str]:
    """Log the exported ONNX file as an MLflow model of the trial's run and register a version of it as ``name``.

    The model has the onnx flavor, a signature and an input example (the
    task's example input). The version is tagged with the trial's run id,
    its search id and the trial's metrics.

    Returns:
        ``{"name", "version", "model_uri"}``.

    Raises:
        ConfigError: the export is not an ONNX file.
    """
    import mlflow
    import onnx
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    if not report.format.startswith("onnx"):
        raise ConfigError("--format", report.format, "onnx, onnx-fp32 or onnx-int8 with --register")
    run = client.get_run(report.run_id)
    task = _task_of(client, run.data.tags[TAG_PARENT])
    example = task.example_input.detach().cpu().numpy()
    output = OrtModule(report.path)(task.example_input).numpy()
    # Saved, logged and registered through the client: no process-wide tracking URI or active run is touched.
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        mlflow.onnx.save_model(
            onnx.load(report.path),
            str(local),
            signature=infer_signature(example, output),
            input_example=example,
            save_as_external_data=False,
        )
        client.log_artifacts(report.run_id, str(local), "model")
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # it exists: a new version of it is what is asked for
    version = client.create_model_version(name, f"runs:/{report.run_id}/model", run_id=report.run_id).version
    tags = {TAG_MODEL_RUN: report.run_id, TAG_MODEL_SEARCH: run.data.tags[TAG_PARENT]}
    tags.update({f"{TAG_MODEL_METRIC_PREFIX}{k}": repr(v) for k, v in sorted(run.data.metrics.items())})
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)
    return {"name": name, "version": str(version), "model_uri": f"models:/{name}/{version}"}
