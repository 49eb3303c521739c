"""The Tune side of a search: the trainable, the Optuna sampler and searcher, the scheduler, the Tuner."""

from __future__ import annotations

import math
import warnings
from typing import Any

from rayzor.compression import LayerStats, collect_layer_stats, get_method, teacher_outputs
from rayzor.search._config import SearchConfig, objective_direction, quality_metric
from rayzor.search._ray import tune_resources
from rayzor.search._trial import latency_seconds_for, run_trial
from rayzor.spaces import CompressionSpace, StudentSpace
from rayzor.tasks import Task

__all__ = ["blind_trials", "make_sampler", "make_searcher", "make_trainable", "make_tuner", "warm_start_points"]


#: Optuna's GPSampler default, kept: the GP needs about this many points before it models anything.
GP_STARTUP_TRIALS = 10
#: Spaces up to this many dimensions get multivariate TPE; larger ones univariate (see :func:`make_sampler`).
MULTIVARIATE_MAX_DIMENSIONS = 16


def make_sampler(name: str, seed: int, trials: int, dimensions: int = 0) -> Any:
    """The Optuna sampler behind a ``sampler`` name (tpe, nsga2, random, gp).

    ``tpe`` models the dimensions jointly (Optuna's multivariate TPE) in
    small spaces and one by one above :data:`MULTIVARIATE_MAX_DIMENSIONS`
    with :class:`~rayzor.search.UnivariateTPESampler`: on a 44-dimension
    per-layer space, multivariate TPE never improved on the warm-start front
    in 64 trials, univariate TPE did on every seed (BENCHMARKS.md,
    sample_efficiency); ours is Optuna's univariate TPE vectorised over the
    dimensions, which keeps a suggestion under 0.5 s at 1,000 dimensions and
    1,000 trials where Optuna's took 17 to 46 s (sampler_scaling_1000).
    """
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = int(blind_trials(name, trials))
    if name == "tpe" and dimensions > MULTIVARIATE_MAX_DIMENSIONS:
        from rayzor.search._tpe import UnivariateTPESampler

        return UnivariateTPESampler(seed=seed, n_startup_trials=startup)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=startup)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=startup)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
    raise ValueError(name)  # unreachable: SearchConfig validated the name


def blind_trials(name: str, trials: int) -> float:
    """How many first trials the named sampler draws at random, blind to every result.

    TPE's and GP's start-up trials, NSGA-II's first generation (its
    population), every trial of ``random``. A suggestion among these cannot
    depend on what was told before it, so the reproducible searcher need not
    wait for older trials to end (:class:`~rayzor.search._searcher.OrderedOptunaSearch`).
    """
    if name == "random":
        return math.inf
    if name == "gp":
        return GP_STARTUP_TRIALS
    # Few start-up trials: searches here are short, and TPE learns from them.
    return min(50 if name == "nsga2" else 10, max(4, trials // 4))


def warm_start_points(space: CompressionSpace | StudentSpace, config: SearchConfig) -> list[dict[str, Any]]:
    """The first trials of a search: its enqueued warm-start params.

    With ``warm_start: uniform``, one plan per candidate bit-width, the same
    for every layer, at the lowest sparsity (the "int8 everywhere" baselines
    a user would try by hand), highest bit-width first, fp32 excluded, at most
    half of the budget. With ``warm_start: sensitivity``, the points of the
    per-layer probes (``space.warm_start``).
    """
    if config.warm_start == "sensitivity":
        return list(space.warm_start)[: max(1, config.trials // 2)]
    if config.warm_start != "uniform" or "uniform_quantization" not in space.methods:
        return []
    points: list[dict[str, Any]] = []
    candidates = sorted((b for b in space.bits if b != 32), reverse=True)  # fp32 is the known baseline
    for bits in candidates[: config.trials // 2]:
        # within each group's own ranges (a group may fix its bits or raise its lowest sparsity)
        point = space.uniform_params(bits)
        if point not in points:
            points.append(point)
    return points


def _distillation(config: SearchConfig, task: Task) -> dict[str, Any] | None:
    """What trials need to distill: the teacher's train-split logits (computed once, here) and the settings.

    They reach every trial through the object store, so no trial runs the
    teacher over the training data again.
    """
    if not (config.students.families or config.recovery.distill_alpha > 0):
        return None
    s = config.students
    return {
        "teacher_logits": teacher_outputs(task.model, task.data["train"], batch_size=256),
        "epochs": s.distill_epochs,
        "lr": s.lr,
        "temperature": s.temperature,
        "alpha": s.alpha,
    }


def calibration_stats(task: Task, space: CompressionSpace | StudentSpace) -> dict[str, LayerStats] | None:
    """The layer statistics GPTQ / AWQ read, of the uncompressed model, for every layer that may choose one.

    Computed once here; they reach every trial through the object store
    (``tune.with_parameters``), so no trial runs the calibration pass again
    (a trial whose layer changed shape, pruned or factorised, computes its own).
    """
    teacher = space.teacher_space if isinstance(space, StudentSpace) else space
    layers = [layer for u in teacher.units if any(get_method(m).calibrated for m in u.methods) for layer in u.layers]
    if not layers:
        return None
    return collect_layer_stats(task.model, layers, task.calibration_batches())


def _schedule(config: SearchConfig, baseline: dict[str, float]) -> dict[str, Any] | None:
    """What a trial needs to report per-epoch results to ``scheduler: asha``."""
    if config.scheduler != "asha":
        return None
    return {"baseline_bytes": baseline["size_bytes"], "bucket_width": config.asha.bucket_width}


def make_trainable(
    config: SearchConfig,
    task: Task,
    space: CompressionSpace | StudentSpace,
    baseline: dict[str, float],
    request: dict[str, float],
    replay: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """:func:`~rayzor.search._trial.run_trial` with its inputs in the object store and its Ray resources
    (``replay``: the logged results a resumed search reports again instead of re-running)."""
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(
            run_trial,
            task=task,
            space=space,
            entropy=config.entropy,
            schedule=_schedule(config, baseline),
            distillation=_distillation(config, task),
            target=config.target,
            calibration_stats=calibration_stats(task, space),
            accuracy_level=config.accuracy_level,
            latency_seconds=latency_seconds_for(config.resolved_objectives),
            replay=replay or None,
        ),
        tune_resources(request),
    )


def make_searcher(
    config: SearchConfig,
    space: CompressionSpace | StudentSpace,
    warm_points: list[dict[str, Any]],
    name: str,
    concurrency: int,
) -> Any:
    """The search's :class:`~rayzor.search.OrderedOptunaSearch` over ``space.suggest``, the warm-start points first.

    Its sampler is :func:`make_sampler`'s, and its start-up (``blind``) that
    sampler's :func:`blind_trials`; trials that must wait for older ones are
    deferred under the search's ``name`` (Ray must be up to publish them).
    """
    from rayzor.search._searcher import OrderedOptunaSearch  # subclasses OptunaSearch: loaded with Tune

    objectives = config.resolved_objectives
    return OrderedOptunaSearch(
        space.suggest,
        concurrency=concurrency,
        budget=config.trials,
        blind=blind_trials(config.sampler, config.trials),
        deterministic=config.deterministic,
        defer=name,
        metric=list(objectives),
        mode=["max" if objective_direction(o) == "maximize" else "min" for o in objectives],
        sampler=make_sampler(config.sampler, config.seed, config.trials, space.dimensions),
        points_to_evaluate=warm_points or None,
    )


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def make_tuner(
    config: SearchConfig,
    trainable: Any,
    space: CompressionSpace | StudentSpace,
    warm_points: list[dict[str, Any]],
    name: str,
    storage: str,
    concurrency: int,
    parent_id: str,
    restore_path: str | None,
) -> Any:
    """A new ``tune.Tuner`` (:func:`make_searcher`'s searcher), or a restored one."""
    import optuna
    from ray import tune

    from rayzor.search._callback import (
        TrackingCallback,  # subclasses tune.Callback: loaded with Tune
    )

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if restore_path is not None:
        # The Optuna study and the callbacks come back from the experiment state.
        return tune.Tuner.restore(restore_path, trainable=trainable, resume_errored=True)
    objectives = config.resolved_objectives
    searcher = make_searcher(config, space, warm_points, name, concurrency)
    scheduler = None
    if config.scheduler == "asha":
        from rayzor.search._scheduler import (
            SizeBucketASHA,  # subclasses a Tune scheduler: loaded with Tune
        )

        # One result per fine-tune epoch: epochs - 1 intermediate ones, then the final one.
        scheduler = SizeBucketASHA(
            quality_metric(objectives),
            "max",
            max_t=config.finetune_epochs,
            grace_period=config.asha.grace_period,
            reduction_factor=config.asha.reduction_factor,
            protect_front=config.asha.protect_front,
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=config.trials,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[TrackingCallback(parent_id)],
            verbose=0,
            # Retries in place (a lost node, a killed worker) keep the Optuna
            # study free of FAILED ghosts; only the last failure is told. An
            # exception of the trial's own code never reaches Tune as an error
            # (run_trial reports it), so it is not retried.
            failure_config=tune.FailureConfig(max_failures=config.max_failures),
        ),
    )
