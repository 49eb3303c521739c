"""What one trial does, inside a Ray worker: decode its plan once, compress, score, pack, measure."""

from __future__ import annotations

import json
import random
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from rayzor.compression import (
    LATENCY_SECONDS,
    CompressedModel,
    CompressionPlan,
    DistillConfig,
    FinetuneConfig,
    LayerStats,
    OrtModule,
    check_student,
    compress,
    distill,
    export_deploy,
    export_onnx,
    get_student_family,
    measure_deploy_latency,
    measure_latency,
    model_stats,
    save_packed,
    state_dict_bytes,
)
from rayzor.errors import ConfigError
from rayzor.search._deferred import DEFERRED_KEY, PARAMS_JSON, PARAMS_WAIT, await_params
from rayzor.search._tags import DEPLOY_NAME, PACKED_NAME
from rayzor.spaces import TEACHER, CompressionSpace, StudentSpace
from rayzor.tasks import Task

__all__ = [
    "DEPLOY_NAME",
    "PACKED_NAME",
    "PLAN_KEYS",
    "QUICK_LATENCY_SECONDS",
    "REPLAYED",
    "TRIAL_ERROR",
    "TrialPlan",
    "compact_plan",
    "decode_trial",
    "deploy_baseline",
    "deploy_metrics",
    "evaluate",
    "evaluate_plan",
    "failure_result",
    "latency_seconds_for",
    "planned_size",
    "run_trial",
    "seed_everything",
    "trial_device",
]

#: Span of a trial's deploy latency timing when ``latency_ms`` is not an objective: two rounds only
#: (see :func:`latency_seconds_for`).
QUICK_LATENCY_SECONDS = 0.0

#: Result keys of every report that describe the trial's plan (the driver logs them as they are).
PLAN_KEYS = ("plan_json", "plan_summary", "model")


@dataclass(frozen=True)
class TrialPlan:
    """What a trial's params stand for, decoded once on the worker.

    Attributes:
        plan: The method configs per layer of the compressed model.
        model: ``teacher`` (the task's model) or the student family.
        student_params: The student family's parameters (empty for the teacher).
    """

    plan: CompressionPlan
    model: str = TEACHER
    student_params: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, str]:
        """The :data:`PLAN_KEYS` of a trial's results: the plan JSON, its :func:`compact_plan`, the model."""
        return {"plan_json": self.plan.to_json(), "plan_summary": compact_plan(self.plan), "model": self.model}


def decode_trial(space: CompressionSpace | StudentSpace, params: dict[str, Any]) -> TrialPlan:
    """The plan a trial's sampled params stand for (the model choice too, with a :class:`~spaces.StudentSpace`)."""
    if not isinstance(space, StudentSpace):
        return TrialPlan(space.decode(params))
    choice = space.resolve(params)
    return TrialPlan(choice.plan, choice.family, dict(choice.params))


def compact_plan(plan: CompressionPlan) -> str:
    """One short cell per layer, ``"conv1 43%/4b"`` (``"fc 0%/3b kmeans"`` for other methods), for tables and tags."""
    cells = []
    for layer, flat in plan.settings().items():
        method = flat.get("quant")
        kind = "" if method in (None, "uniform_quantization") else f" {method.removesuffix('_quantization')}"
        rank = f" rank{flat['rank_ratio']:.2f}" if flat.get("rank_ratio") else ""
        if flat.get("factorize") not in (None, "low_rank"):  # e.g. " tucker2 rank0.30"
            rank = f" {flat['factorize']}{rank}"
        if flat.get("structure") == "channel_pruning":
            rank += f" ch-{flat['ratio']:.0%}"  # share of output channels removed
        if flat.get("prune") not in (None, "magnitude_pruning"):
            rank += f" {flat['prune'].removesuffix('_pruning')}"
        cells.append(f"{layer} {flat.get('sparsity', 0.0):.0%}/{flat.get('bits', 32)}b{kind}{rank}")
    return "  ".join(cells)


def trial_device() -> str:
    """``cuda`` when Ray gave this trial a GPU and torch can use it, else ``cpu``."""
    import ray

    if torch.cuda.is_available() and ray.is_initialized() and ray.get_gpu_ids():
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU: it is device 0 here.
        return "cuda"
    return "cpu"


def evaluate_plan(
    task: Task,
    space: CompressionSpace | StudentSpace,
    params: dict[str, Any],
    out_dir: Path,
    device: str = "cpu",
    entropy: str | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    distillation: dict[str, Any] | None = None,
    target: str = "packed",
    calibration_stats: dict[str, LayerStats] | None = None,
    accuracy_level: int = 0,
    latency_seconds: float = LATENCY_SECONDS,
) -> dict[str, float]:
    """Compress the task's model (or a student) with the plan ``params`` decode to, and measure it.

    See :func:`evaluate` (this decodes ``params`` with :func:`decode_trial` first).
    """
    return evaluate(
        task,
        decode_trial(space, params),
        out_dir,
        device=device,
        entropy=entropy,
        on_epoch=on_epoch,
        distillation=distillation,
        target=target,
        calibration_stats=calibration_stats,
        accuracy_level=accuracy_level,
        latency_seconds=latency_seconds,
    )


def evaluate(
    task: Task,
    trial: TrialPlan,
    out_dir: Path,
    device: str = "cpu",
    entropy: str | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    distillation: dict[str, Any] | None = None,
    target: str = "packed",
    calibration_stats: dict[str, LayerStats] | None = None,
    accuracy_level: int = 0,
    latency_seconds: float = LATENCY_SECONDS,
) -> dict[str, float]:
    """Compress the task's model (or a student) with a decoded plan, and measure it.

    The packed artifact is written to ``out_dir``; ``size_bytes`` is its length.
    Under ``target="onnxruntime"`` the deploy artifact is built there too
    (:func:`~rayzor.compression.export_deploy`, from the trial's own codes and
    scales): ``deploy_bytes`` is its length and ``latency_ms`` is measured on it
    in onnxruntime (:func:`~rayzor.compression.measure_deploy_latency`, over
    ``latency_seconds``: see :func:`latency_seconds_for`), so both are what an
    export of this trial ships. Under ``packed``, ``latency_ms`` is
    the torch model's. ``calibration_stats`` (the search's, from the object
    store) spare GPTQ / AWQ their statistics pass. With ``accuracy_level`` 4
    the artifact's MatMulNBits layers quantize their activations to int8, so
    its outputs are no longer the torch model's: the quality metrics are then
    scored on the artifact itself, in onnxruntime.
    ``device`` is where the fine-tune runs; scoring and latency stay on CPU,
    so figures are comparable whichever node a trial lands on. ``on_epoch``
    is handed to :func:`compression.compress` (intermediate results).

    For a student, the student is built, trained by knowledge distillation
    from the teacher's precomputed logits (``distillation``, from the object
    store), then compressed; ``compression_ratio`` and ``quality_drop`` stay
    relative to the teacher.
    """
    import_lazy_dependencies(target)
    started = time.perf_counter()
    started_at = time.time()  # wall clock: the trial's MLflow run starts here
    model, arch = _candidate(task, trial, device, distillation)
    plan = trial.plan
    loader = None
    if plan.finetune.epochs > 0:
        loader = DataLoader(
            task.data["train"],
            batch_size=plan.finetune.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(plan.finetune.seed),
        )
    teacher_logits = distillation["teacher_logits"] if distillation and plan.finetune.distill_alpha > 0 else None
    compressed = compress(
        model,
        plan,
        train_loader=loader,
        loss_fn=task.loss_fn,
        device=device,
        teacher_logits=teacher_logits,
        on_epoch=on_epoch,
        example_input=task.example_input,
        calibration_data=_calibration(task, plan),
        calibration_stats=calibration_stats if trial.model == TEACHER else None,
    )
    metrics = task.score(compressed.model, "val")
    size = save_packed(
        compressed,
        out_dir / PACKED_NAME,
        arch=arch,
        metadata={"task": task.name, "model": trial.model},
        entropy=entropy,
    )
    dense = state_dict_bytes(task.model)
    # The model already holds every dense() weight: count there, not by
    # materialising each weight again.
    modules = dict(compressed.model.named_modules())
    weights = [modules[name].weight for name in compressed.weights if name in modules]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    metrics.update(
        size_bytes=float(size),
        compression_ratio=dense / size,
        weight_sparsity=zeros / max(total, 1),
        quality_drop=task.baseline["val"][task.metric] - metrics[task.metric],
        calibration_layers_computed=float(len(compressed.stats_computed)),
    )
    if target == "onnxruntime":
        deploy = out_dir / DEPLOY_NAME
        metrics.update(deploy_metrics(compressed, task.example_input, deploy, accuracy_level, latency_seconds))
        if accuracy_level:
            metrics.update(task.score(OrtModule(deploy), "val"))
            metrics["quality_drop"] = task.baseline["val"][task.metric] - metrics[task.metric]
    else:
        metrics["latency_ms"] = measure_latency(compressed.model, task.example_input)
    # params, nonzero_params, flops, macs, bitops of one forward of the example input
    metrics.update(model_stats(compressed.model, task.example_input, compressed.weights))
    metrics["trial_seconds"] = time.perf_counter() - started
    metrics["trial_started"] = started_at
    metrics["final"] = 1.0
    return metrics


def import_lazy_dependencies(target: str) -> None:
    """Import, before a trial's clock starts, what its first run in a worker would import inside it.

    torch imports ``torch._dynamo`` on an optimizer's first use and on the
    first FLOP count of a convolution (:func:`~rayzor.compression.model_stats`,
    every trial): 2.5 s on this 2-core machine. The ONNX export imports
    ``onnx`` (0.75 s). Inside the first trial of each worker, they made its
    ``trial_seconds`` (and its MLflow run's duration) 15x its next trials' on
    digits (3.3 s against 0.2 s). A worker still pays them once, as its
    start-up, not as a trial's compute; ONNX only under ``target="onnxruntime"``.
    """
    import torch._dynamo  # noqa: F401

    if target == "onnxruntime":
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401


def deploy_metrics(
    compressed: CompressedModel,
    example_input: Any,
    path: Path,
    accuracy_level: int = 0,
    latency_seconds: float = LATENCY_SECONDS,
) -> dict[str, float]:
    """``deploy_bytes`` and ``latency_ms`` of the deploy artifact of ``compressed``, written to ``path``.

    The file is :func:`~rayzor.compression.export_deploy`'s, which ``rayzor export --format onnx`` calls with
    the same arguments on the packed model: the same bytes.
    """
    export_deploy(compressed, example_input, path, accuracy_level=accuracy_level)
    return {
        "deploy_bytes": float(path.stat().st_size),
        "latency_ms": measure_deploy_latency(path, example_input, min_seconds=latency_seconds),
    }


def latency_seconds_for(objectives: Sequence[str]) -> float:
    """How long a trial times its deploy artifact: the protocol's full span when ``latency_ms`` is an objective.

    The search ranks trials by that figure then, and a short timing on a VM whose speed alternates
    can land in either speed (:func:`~rayzor.compression.measure_deploy_latency`). Otherwise the
    figure is only logged, and the full span would cost more than a small model's whole trial
    (0.3 s against 0.2 s on digits): two rounds only, :data:`QUICK_LATENCY_SECONDS`. A middle
    span buys little: the slow spells last up to a second, and 50 ms of rounds already cost the
    default search at concurrency 1 a sixth of its trials per minute.
    """
    return LATENCY_SECONDS if "latency_ms" in objectives else QUICK_LATENCY_SECONDS


def deploy_baseline(task: Task, latency_seconds: float = LATENCY_SECONDS) -> dict[str, float]:
    """The uncompressed model as onnxruntime runs it: its fp32 ONNX file's length and latency
    (timed over ``latency_seconds``, as the search's trials time theirs)."""
    with tempfile.TemporaryDirectory(prefix="rayzor-baseline-") as tmp:
        path = export_onnx(task.model, task.example_input, Path(tmp) / "fp32.onnx")
        return {
            "deploy_bytes": float(path.stat().st_size),
            "latency_ms": measure_deploy_latency(path, task.example_input, min_seconds=latency_seconds),
        }


def _calibration(task: Task, plan: CompressionPlan) -> list[Any] | None:
    """The task's calibration batches for a plan with an activation-stage method or a calibrated quantizer."""
    needs = plan.by_stage("activation") or any(cfg.calibrated for cfg in plan.by_stage("quantize").values())
    return task.calibration_batches() if needs else None


def _candidate(
    task: Task, trial: TrialPlan, device: str, distillation: dict[str, Any] | None, train: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """The model a trial compresses (the teacher, or a distilled student) and its arch.

    ``train=False`` skips the distillation (for what only depends on the architecture).
    """
    if trial.model == TEACHER:
        return task.model, dict(task.arch)
    family = get_student_family(trial.model)
    student = family.build(task.model, **trial.student_params)
    check_student(student, task.model, task.example_input)
    arch = family.arch(task.model, teacher_arch=task.arch, **trial.student_params)
    if not train:
        return student, arch
    d = distillation or {}
    if "teacher_logits" not in d:
        raise ConfigError("distillation", None, "the teacher's logits for a student trial (run_search computes them)")
    config = DistillConfig(temperature=d["temperature"], alpha=d["alpha"])
    distill(
        student,
        None,
        task.data["train"],
        config,
        epochs=d["epochs"],
        lr=d["lr"],
        batch_size=task.batch_size,
        seed=trial.plan.finetune.seed,
        device=device,
        teacher_logits=d["teacher_logits"],
    )
    return student, arch


def planned_size(task: Task, trial: TrialPlan, out_dir: Path, entropy: str | None = None) -> float:
    """Packed size of the plan without its fine-tune: what the bits and masks cost.

    Fine-tuning moves weights, not bits or masks, so this is the trial's size
    (up to the entropy stage) before any training: enough to place a trial in
    its size bucket at its first result.
    """
    model, arch = _candidate(task, trial, "cpu", None, train=False)
    plan = CompressionPlan(trial.plan.layers, FinetuneConfig(epochs=0, seed=trial.plan.finetune.seed))
    compressed = compress(model, plan, example_input=task.example_input, calibration_data=_calibration(task, plan))
    return float(save_packed(compressed, out_dir / "planned.safetensors", arch=arch, entropy=entropy))


def _epoch_reporter(
    task: Task,
    trial: TrialPlan,
    out_dir: Path,
    schedule: dict[str, Any],
    entropy: str | None,
    described: dict[str, Any],
) -> Callable[[int, nn.Module], None]:
    """``on_epoch`` that reports each fine-tune epoch but the last to Tune, for early stopping."""
    from ray import tune

    from rayzor.search._scheduler import (  # imports ray.tune: only on a worker
        BUCKET_KEY,
        size_bucket,
    )

    size = planned_size(task, trial, out_dir, entropy)
    bucket = size_bucket(size, schedule["baseline_bytes"], schedule["bucket_width"])
    epochs = trial.plan.finetune.epochs
    described = {**trial.report(), **described}

    def report(epoch: int, model: nn.Module) -> None:
        if epoch + 1 >= epochs:
            return  # the last epoch is the trial's final result, with its artifact
        metrics = task.score(model, "val")
        tune.report({**metrics, "size_bytes": size, BUCKET_KEY: bucket, "epoch": epoch + 1, "final": 0.0, **described})

    return report


#: Result key of a trial whose own code (the task, the engine) raised: the traceback. The
#: trial reports it as its last result, so Tune never retries it: Tune's retries
#: (``max_failures``) are for lost workers and nodes, and a deterministic error would only repeat.
TRIAL_ERROR = "trial_error"
#: Result key of a trial a resumed search replayed from its MLflow run instead of running it again.
REPLAYED = "replayed"
#: Every objective a search may have besides the task's metric (see ``resolve_objectives``).
_SIZE_OBJECTIVES = ("size_bytes", "deploy_bytes", "latency_ms")


def failure_result(task_metric: str, text: str) -> dict[str, Any]:
    """The last result of a trial that raised: its traceback, and NaN objectives (Optuna records FAIL)."""
    nan = float("nan")
    return {TRIAL_ERROR: text, "final": 1.0, **{k: nan for k in (task_metric, *_SIZE_OBJECTIVES)}}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (what student init or a sampler may draw from)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_trial(
    config: dict[str, Any],
    *,
    task: Task,
    space: CompressionSpace | StudentSpace,
    entropy: str | None = None,
    schedule: dict[str, Any] | None = None,
    distillation: dict[str, Any] | None = None,
    target: str = "packed",
    calibration_stats: dict[str, LayerStats] | None = None,
    accuracy_level: int = 0,
    latency_seconds: float = LATENCY_SECONDS,
    replay: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Ray Tune function trainable: one plan, one report with its packed artifact.

    The params are decoded here, once: every report carries the plan
    (:data:`PLAN_KEYS`), so the driver logs it without decoding again.

    ``task`` arrives through ``tune.with_parameters``: it sits in the object
    store once and every trial reads it from there. With ``schedule``
    (``scheduler: asha``: ``baseline_bytes`` and ``bucket_width``), each
    fine-tune epoch but the last is reported too (``final: 0``, the size
    from :func:`planned_size`), so the scheduler can stop the trial there.
    ``distillation`` (teacher logits and KD settings) trains sampled students
    and a distilled recovery fine-tune. ``calibration_stats``: the layer
    statistics of the uncompressed model, computed once by the driver for
    GPTQ / AWQ. ``latency_seconds``: the span of the deploy artifact's
    latency timing (:func:`latency_seconds_for`). ``replay``: the logged results of a resumed search, by Tune
    trial id; such a trial reports its result again instead of running.
    A deferred trial (``config`` is the reproducible searcher's placeholder,
    :mod:`~rayzor.search._deferred`) first waits here for its params, and
    reports them (``params_json``) with the seconds it waited.
    An exception of the trial's own code is reported as
    :func:`failure_result` (attempted once); Ray's own errors propagate.

    The trial's last report says ``done``: Tune ends the trial on it, instead
    of asking the worker once more only to learn that the function returned
    (one actor round trip and one pass of Tune's loop per trial).
    """
    from ray import tune
    from ray.tune.result import DONE

    logged = (replay or {}).get(tune.get_context().get_trial_id())
    if logged is not None:  # finished before a driver crash: Tune and Optuna get its result back, nothing reruns
        tune.report({**logged, REPLAYED: 1.0, DONE: True})
        return
    config, described = _params(config)
    # Two trials share two cores here: more threads per trial only thrash.
    torch.set_num_threads(1)
    device = trial_device()
    with tempfile.TemporaryDirectory(prefix="rayzor-trial-") as tmp:
        try:
            metrics = _run_plan(
                task,
                space,
                config,
                Path(tmp),
                device,
                schedule,
                entropy,
                distillation,
                target,
                calibration_stats,
                accuracy_level,
                latency_seconds,
                described,
            )
        except Exception as exc:
            if type(exc).__module__.split(".")[0] == "ray":
                raise  # Ray's own (a stopped trial, a lost object): Tune decides
            tune.report({**failure_result(task.metric, traceback.format_exc()), **described, DONE: True})
            return
        tune.report({**metrics, DONE: True}, checkpoint=tune.Checkpoint.from_directory(tmp))


def _params(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The trial's params, and what every report adds: the seconds it waited for
    them (0 but for a deferred trial, :mod:`~rayzor.search._deferred`, whose
    params are waited for here and reported too)."""
    if DEFERRED_KEY not in config:
        return config, {PARAMS_WAIT: 0.0}
    started = time.perf_counter()
    params = await_params(config[DEFERRED_KEY])
    return params, {PARAMS_JSON: json.dumps(params), PARAMS_WAIT: time.perf_counter() - started}


def _run_plan(
    task: Task,
    space: CompressionSpace | StudentSpace,
    config: dict[str, Any],
    tmp_path: Path,
    device: str,
    schedule: dict[str, Any] | None,
    entropy: str | None,
    distillation: dict[str, Any] | None,
    target: str,
    calibration_stats: dict[str, LayerStats] | None,
    accuracy_level: int,
    latency_seconds: float,
    described: dict[str, Any],
) -> dict[str, Any]:
    """The body of :func:`run_trial`: decode, compress, fine-tune, measure; the files land in ``tmp_path``.

    ``described``: what :func:`_params` adds to every report.
    """
    import ray

    trial = decode_trial(space, config)
    # A reused actor carries the last trial's RNG state: start each trial
    # from the search seed, so its result depends only on its plan.
    seed_everything(trial.plan.finetune.seed)
    on_epoch = _epoch_reporter(task, trial, tmp_path, schedule, entropy, described) if schedule else None
    metrics: dict[str, Any] = evaluate(
        task,
        trial,
        tmp_path,
        device=device,
        entropy=entropy,
        on_epoch=on_epoch,
        distillation=distillation,
        target=target,
        calibration_stats=calibration_stats,
        accuracy_level=accuracy_level,
        latency_seconds=latency_seconds,
    )
    (tmp_path / DEPLOY_NAME).unlink(missing_ok=True)  # rebuilt byte for byte from the packed file on export
    (tmp_path / "planned.safetensors").unlink(missing_ok=True)  # only the trial's own artifact travels
    # Where it ran: logged as tags of the trial's MLflow run.
    metrics.update(node_id=ray.get_runtime_context().get_node_id(), device=device, **trial.report(), **described)
    return metrics
