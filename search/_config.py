"""The search configuration: one pydantic model for YAML files and CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from rayzor.compression import FinetuneConfig
from rayzor.errors import ConfigError
from rayzor.spaces import DEFAULT_TARGET, RUNTIME_DEFAULTS, SpaceConfig, check_target
from rayzor.tasks import Task

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "AshaConfig",
    "RecoveryConfig",
    "SearchConfig",
    "SpaceConfig",
    "StudentsConfig",
    "check_local",
    "load_config",
    "objective_direction",
    "quality_metric",
    "resolve_objectives",
    "validate_config",
]

#: The cost objectives and their direction. A search has exactly one other
#: objective: the task's quality metric (``accuracy`` for digits, ``cosine``
#: for minilm), maximised. ``size_bytes`` is the packed file's length,
#: ``deploy_bytes`` the deploy artifact's (``target: onnxruntime`` only).
OBJECTIVES: dict[str, str] = {"size_bytes": "minimize", "deploy_bytes": "minimize", "latency_ms": "minimize"}
#: The size objective a search minimises by default, per target.
DEFAULT_SIZE_OBJECTIVE: dict[str, str] = {"onnxruntime": "deploy_bytes", "packed": "size_bytes"}


def objective_direction(name: str) -> str:
    """``minimize`` for a cost objective, ``maximize`` for the quality metric."""
    return OBJECTIVES.get(name, "maximize")


def quality_metric(objectives: tuple[str, ...]) -> str:
    """The one objective that is the task's quality metric."""
    return next(o for o in objectives if o not in OBJECTIVES)


SAMPLERS = ("tpe", "nsga2", "random", "gp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AshaConfig(_Strict):
    """ASHA settings of ``scheduler: asha``."""

    grace_period: int = Field(1, ge=1, description="fine-tune epochs every trial runs before it can be stopped")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA's eta: the top 1/eta of each rung goes on")
    bucket_width: float = Field(0.5, gt=0, description="width of a size bucket, in octaves of compression ratio")
    protect_front: bool = Field(
        True, description="never stop a trial whose (quality, size) is on the partial front of the results at its epoch"
    )


class StudentsConfig(_Strict):
    """Student architectures searched jointly with compression (knowledge distillation)."""

    families: tuple[str, ...] = Field(
        (),
        description="student families to choose among (see compression.list_students); "
        "empty: compress the task's model only",
    )
    include_teacher: bool = Field(True, description="compressing the task's own model is a choice too")
    distill_epochs: int = Field(10, ge=1, description="knowledge-distillation epochs that train a sampled student")
    lr: float = Field(3e-3, gt=0, description="Adam learning rate of the distillation")
    temperature: float = Field(4.0, gt=0, description="softmax temperature of the KD loss (Hinton et al. 2015)")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the teacher term of the KD loss")


class RecoveryConfig(_Strict):
    """How the recovery fine-tune after pruning trains (its length is finetune_epochs)."""

    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    distill_alpha: float = Field(
        0.0, ge=0, le=1, description="weight of the uncompressed teacher's soft targets (0: plain task loss)"
    )
    temperature: float = Field(4.0, gt=0, description="softmax temperature of the teacher term")
    qat: bool = Field(
        False,
        description="fine-tune through the quantizers (straight-through estimator), so the "
        "final quantization grid is the one trained",
    )


class SearchConfig(_Strict):
    """Everything a search needs; a YAML file takes the same fields as the flags."""

    task: str = Field("digits", description="registered task name or 'package.module:function'")
    task_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the task factory")
    target: Literal["onnxruntime", "packed"] = Field(
        "onnxruntime",
        description="where the models will run. onnxruntime: the space offers only what onnxruntime executes "
        "natively (block-wise 2/4/8-bit MatMul weights, 2/4/8-bit embeddings, int8 convolutions, fp16, structured "
        "methods); each trial builds its ONNX deploy artifact and logs deploy_bytes and latency_ms measured on it. "
        "packed: every method and bit-width, in rayzor's packed format (archival, research)",
    )
    accuracy_level: Literal[0, 4] = Field(
        0,
        description="MatMulNBits compute under target onnxruntime: 0 = fp32 activations (the artifact computes what "
        "the torch model does); 4 = activations quantized to int8 on the fly (faster kernels: per-channel int8 Linear "
        "weights run on integer GEMMs, the layout the 8-bit warm start takes; the trial's quality is then scored on "
        "the deploy artifact itself)",
    )
    trials: int = Field(64, ge=1, description="number of trials")
    # Left unset, the runner derives it from what the cluster has (see
    # cluster.derive_concurrency); the default here is the 2-core local value.
    concurrency: int = Field(2, ge=1, description="trials run at once; default: derived from the cluster's resources")
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int = Field(0, ge=0)
    deterministic: bool = Field(
        True,
        description="same seed, same trials at any concurrency: trial k's params depend only on the results of "
        "trials 1..k-concurrency, told to the sampler in trial order (a trial may wait for an older one to end); "
        "false: results are told as they arrive, nothing waits",
    )
    experiment: str = Field("rayzor", min_length=1, description="MLflow experiment name")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: MLflow's own rules")
    objectives: tuple[str, ...] | None = Field(
        None,
        description="the task's metric (maximised) plus size_bytes, deploy_bytes and/or latency_ms; "
        "default: [<task metric>, deploy_bytes] under target onnxruntime, [<task metric>, size_bytes] under packed",
    )
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    finetune_epochs: int = Field(1, ge=0, description="recovery fine-tune epochs after pruning (masks kept)")
    warm_start: Literal["uniform", "sensitivity", "none"] = Field(
        "uniform",
        description="uniform: the first trials are one bit-width for every layer (the hand-tried baselines; below 8 bits "
        "with GPTQ, else AWQ, where the space offers it); "
        "sensitivity: per-layer probes (Ray tasks; table and heatmap under sensitivity/ in the search's MLflow run) pick "
        "each layer's most aggressive level within 0.5/1/2 points of drop; used only as warm start: those plans are the "
        "first trials (tag rayzor.warm_start), the search ranges are not narrowed",
    )
    recovery: RecoveryConfig = Field(default_factory=RecoveryConfig)
    students: StudentsConfig = Field(default_factory=StudentsConfig)
    scheduler: Literal["none", "asha"] = Field(
        "none",
        description="asha: stop trials early between fine-tune epochs, comparing each trial's quality only with trials "
        "in the same compression-ratio bucket (see search/_scheduler.py); needs finetune_epochs >= 2",
    )
    asha: AshaConfig = Field(default_factory=AshaConfig)
    entropy: Literal["lzma", "zstd"] | None = Field(
        None,
        description="lossless entropy stage of the packed files (Deep Compression's third step); size_bytes includes it",
    )
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs per trial; fractions such as 0.25 share a GPU")
    resources_per_trial: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources per trial, e.g. {worker: 1} or {'accelerator_type:A100': 0.01}",
    )
    max_failures: int = Field(2, ge=0, description="retries of a trial whose worker or node fails (Tune FailureConfig)")
    address: str | None = Field(None, description="Ray cluster address; default: RAY_ADDRESS, else a local Ray")
    storage_path: str | None = Field(
        None, description="Ray Tune storage path (folder or pyarrow URI such as s3://...); default ./rayzor-results"
    )
    name: str | None = Field(None, description="search name; default search-<timestamp>-<random>")
    tracking_wait: float = Field(
        60.0,
        ge=0,
        description="seconds the end of a search waits for an unreachable tracking server; what is still "
        "unwritten then stays in the journal for `rayzor sync` or --resume",
    )

    @field_validator("resources_per_trial")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        if any(k.upper() in ("CPU", "GPU") or amount <= 0 for k, amount in v.items()):
            raise ValueError("positive amounts of custom resources (CPU and GPU go in cpus_per_trial / gpus_per_trial)")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is not None and (len(set(v)) != len(v) or sum(o not in OBJECTIVES for o in v) != 1 or len(v) < 2):
            raise ValueError(
                "the task's metric (e.g. accuracy) plus size_bytes, deploy_bytes and/or latency_ms, each once"
            )
        return v

    @model_validator(mode="before")
    @classmethod
    def _runtime_defaults(cls, data: Any) -> Any:
        """Under a runtime target, the space settings left out start from what that runtime executes."""
        if not isinstance(data, dict) or data.get("target", DEFAULT_TARGET) == "packed":
            return data
        space = data.get("space", {})
        if isinstance(space, dict):
            data = {**data, "space": {**{k: v for k, v in RUNTIME_DEFAULTS.items() if k not in space}, **space}}
        return data

    @model_validator(mode="after")
    def _combinations(self) -> SearchConfig:
        _check_combinations(self)
        return self

    def finetune(self) -> FinetuneConfig:
        """The recovery fine-tune every trial's plan carries."""
        r = self.recovery
        return FinetuneConfig(
            epochs=self.finetune_epochs,
            lr=r.lr,
            seed=self.seed,
            distill_alpha=r.distill_alpha,
            temperature=r.temperature,
            qat=r.qat,
        )

    @property
    def directions(self) -> list[str]:
        """``minimize``/``maximize`` per objective (empty before :func:`resolve_objectives`)."""
        return [objective_direction(o) for o in self.objectives or ()]

    @property
    def resolved_objectives(self) -> tuple[str, ...]:
        """The objectives of a config :func:`resolve_objectives` completed.

        Raises:
            RuntimeError: the objectives were never resolved against the task.
        """
        if self.objectives is None:
            raise RuntimeError("objectives not resolved: resolve_objectives(config, task) completes the config")
        return self.objectives


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for prev, part in zip((None, *loc), loc):
        if isinstance(part, int):
            if prev == "groups":  # space.groups[1].sparsity: which group
                parts[-1] += f"[{part}]"
            continue
        parts.append(str(part))
    return ".".join(parts) or "config"


def _valid_for(model: type[BaseModel], loc: tuple[Any, ...], error: ErrorDetails) -> str:
    if error["type"] == "extra_forbidden":
        target: Any = model
        for part in loc[:-1]:
            fields = getattr(target, "model_fields", {})
            field = fields.get(part) if isinstance(part, str) else None
            target = field.annotation if field is not None else target
            # tuple[GroupSpec, ...]: the keys are the item model's
            target = next((a for a in get_args(target) if isinstance(a, type) and issubclass(a, BaseModel)), target)
        if isinstance(target, type) and issubclass(target, BaseModel):
            return "known keys " + ", ".join(target.model_fields)
    return error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")


def validate_config(data: dict[str, Any]) -> SearchConfig:
    """Validate a dict into a :class:`SearchConfig`, raising one-line ConfigErrors."""
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, ConfigError):  # a combination check: already one line
            raise cause from None
        loc = tuple(error["loc"])
        raise ConfigError(_field_name(loc), error.get("input"), _valid_for(SearchConfig, loc, error)) from None


def resolve_objectives(config: SearchConfig, task: Task) -> SearchConfig:
    """The config completed against its task: default objectives filled in, the quality metric checked.

    Raises:
        ConfigError: objectives whose quality metric is not the task's.
    """
    if config.objectives is None:
        return config.model_copy(update={"objectives": (task.metric, DEFAULT_SIZE_OBJECTIVE[config.target])})
    if quality_metric(config.objectives) != task.metric:
        raise ConfigError(
            "objectives",
            list(config.objectives),
            f"task {task.name!r}'s metric {task.metric!r} plus size_bytes, deploy_bytes and/or latency_ms",
        )
    return config


def _check_combinations(config: SearchConfig) -> None:
    """Refuse settings that are valid alone but not together.

    Raises:
        ConfigError: e.g. ``scheduler: asha`` with fewer than 2 fine-tune epochs,
            or a student setting without a student family.
    """
    # Off their defaults, not merely given: a dumped config (resume state) repeats every default.
    defaults = StudentsConfig()
    student_fields = sorted(
        k
        for k in StudentsConfig.model_fields
        if k != "families" and getattr(config.students, k) != getattr(defaults, k)
    )
    if student_fields and not config.students.families:
        raise ConfigError(
            "students.families",
            [],
            f"at least one student family (see compression.list_students()) when students.{student_fields[0]} is set",
        )
    check_target(config.target, config.space)
    if config.target == "packed" and "deploy_bytes" in (config.objectives or ()):
        raise ConfigError(
            "objectives",
            list(config.objectives or ()),
            "objectives without deploy_bytes under target packed (no deploy artifact is built); "
            "size_bytes is the packed file's length",
        )
    if config.target == "packed" and config.accuracy_level != 0:
        raise ConfigError(
            "accuracy_level", config.accuracy_level, "0 under target packed (it sets onnxruntime's MatMulNBits kernels)"
        )
    if config.scheduler == "asha" and config.finetune_epochs < config.asha.grace_period + 1:
        raise ConfigError(
            "finetune_epochs",
            config.finetune_epochs,
            f"an integer >= {config.asha.grace_period + 1} with scheduler: asha (ASHA stops trials "
            "between fine-tune epochs, after asha.grace_period of them)",
        )


def load_config(path: str | Path | None = None, **overrides: Any) -> SearchConfig:
    """Read a YAML config (optional) and apply overrides that are not None.

    Args:
        path: YAML file with :class:`SearchConfig` fields; None = all defaults.
        **overrides: Field values from the command line; None means "not given".

    Raises:
        ConfigError: unreadable file, unknown key, or an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("CONFIG", str(path), "an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("CONFIG", str(path), f"valid YAML ({_yaml_problem(exc)})") from None
        if loaded is None:  # an empty file is a mistake, not a request for the defaults
            raise ConfigError(
                "CONFIG",
                str(path),
                "a YAML mapping of SearchConfig fields; the file is empty (leave CONFIG out to search the digits default)",
            )
        if not isinstance(loaded, dict):
            raise ConfigError("CONFIG", str(path), "a YAML mapping of SearchConfig fields")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line L, column C: problem`` of a YAML parse error (1-based, as editors count)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _local_cpus() -> int:
    """CPUs this process may use (its affinity mask, as Ray counts them in a container)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity mask
        return os.cpu_count() or 1


def check_local(config: SearchConfig, *, local: bool) -> None:
    """Refuse what this machine cannot provide, before MLflow or Ray is touched.

    Args:
        config: The search.
        local: The search will start its own Ray on this machine (no
            ``--address``, no ``RAY_ADDRESS``, no Ray already running), so
            this machine's CPUs and GPUs are all there is.

    Raises:
        ConfigError: a local ``storage_path`` that is a file (or lies under
            one); on a local Ray, GPUs per trial with no GPU, more CPUs per
            trial than the machine has, or a concurrency above what fits at once.
    """
    storage = config.storage_path
    if storage and "://" not in storage:
        path = Path(storage).expanduser().resolve()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError("storage_path", storage, f"a folder, or a path to create one ({existing} is a file)")
    if not local:
        return  # a cluster's resources are checked once Ray is joined (trial_request)
    if config.gpus_per_trial > 0:
        import torch

        if torch.cuda.device_count() == 0:
            raise ConfigError(
                "gpus_per_trial",
                config.gpus_per_trial,
                "0 on this machine (no GPU found); to use a cluster's GPUs, join it with --address",
            )
    cpus = _local_cpus()
    if config.cpus_per_trial > cpus:
        raise ConfigError("cpus_per_trial", config.cpus_per_trial, f"at most {cpus}, this machine's CPUs")
    fits = int(cpus // config.cpus_per_trial)
    if "concurrency" in config.model_fields_set and config.concurrency > fits:
        raise ConfigError(
            "concurrency",
            config.concurrency,
            f"at most {fits} on this machine ({cpus} CPUs, {config.cpus_per_trial:g} per trial); "
            "leave it out to derive it, or join a cluster with --address",
        )
