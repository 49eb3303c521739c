"""The ``rayzor`` command line: search, pareto, export, and submit/status/stop on a cluster.

Only typer, rich and ``rayzor.errors`` load at start-up: torch, Ray and MLflow
are imported inside the commands that use them, so ``rayzor --help`` answers
at once (``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from rayzor.errors import ConfigError, RayzorError

try:  # typer >= 0.26 parses with its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older typer on click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]


class _OneLineErrors(TyperGroup):
    """Click's usage errors (``--trials abc``, ``--trails``) as rayzor's one line, not a usage box."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError:  # `rayzor` alone: the help, as typer shows it
            return super().main(argv, prog_name, complete_var, standalone_mode=standalone_mode, **extra)
        except click_errors.UsageError as exc:
            if not standalone_mode:
                raise
            print(f"error: {usage_error(exc, argv)}", file=sys.stderr)
            sys.exit(2)
        except typer.Abort:
            if not standalone_mode:
                raise
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        if standalone_mode:
            sys.exit(result if isinstance(result, int) else 0)
        return result


def _given(argv: list[str], names: Sequence[str]) -> str | None:
    """The value given to an option on the command line (``--x V`` or ``--x=V``)."""
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(name + "="):
                return token[len(name) + 1 :]
    return None


def usage_error(exc: click_errors.UsageError, argv: list[str]) -> ConfigError:
    """A usage error of the parser as a :class:`ConfigError`: the flag, what was given, what is valid."""
    ctx = exc.ctx
    command = ctx.command_path if ctx is not None else "rayzor"
    if isinstance(exc, click_errors.NoSuchOption):
        guess = f"did you mean {' or '.join(exc.possibilities)}? " if exc.possibilities else ""
        return ConfigError("option", exc.option_name, f"{guess}`{command} -h` lists every option")
    param = getattr(exc, "param", None)
    if isinstance(exc, click_errors.BadParameter) and param is not None:
        option = bool(param.opts) and param.opts[0].startswith("-")
        flag = param.opts[0] if option else (param.name or "argument").upper()
        if isinstance(exc, click_errors.MissingParameter):
            return ConfigError(flag, None, f"a value is required: {param.help or param.name}")
        given = _given(argv, param.opts) if option else None
        valid = exc.message.removeprefix("Input should be ").split(",")[0]
        return ConfigError(flag, given if given is not None else exc.message, valid)
    message = exc.format_message()
    if message.startswith("No such command") and ctx is not None and "'" in message:
        name = message.split("'")[1]
        return ConfigError("command", name, ", ".join(ctx.command.list_commands(ctx)))  # type: ignore[attr-defined]
    return ConfigError(command, " ".join(argv), message)


def _version(value: bool) -> None:
    if value:
        from rayzor import __version__

        print(f"rayzor {__version__}")
        raise typer.Exit()


app = typer.Typer(
    cls=_OneLineErrors,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Search per-layer compression plans with Ray Tune + Optuna, browse them in MLflow, export a Pareto point.",
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn rayzor's own errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RayzorError as exc:
            err_console.print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _say(line: str) -> None:
    console.print(line, markup=False, soft_wrap=True)


class _SetupLines(logging.Handler):
    """rayzor's own INFO log lines (a baseline being trained) printed as set-up phases."""

    def emit(self, record: logging.LogRecord) -> None:
        _say(record.getMessage())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d} min" if minutes else f"{secs} s"


@app.command()
@_friendly
def search(
    config: Path | None = typer.Argument(
        None, help="YAML config (same fields as the flags).", show_default="the embedded digits task"
    ),
    trials: int | None = typer.Option(None, help="Number of trials.", show_default="64"),
    concurrency: int | None = typer.Option(
        None, help="Trials run at once.", show_default="what the machine or cluster holds"
    ),
    sampler: str | None = typer.Option(None, help="tpe | nsga2 | random | gp.", show_default="tpe"),
    seed: int | None = typer.Option(None, help="Seed of the sampler and fine-tuning.", show_default="0"),
    deterministic: bool | None = typer.Option(
        None,
        "--deterministic/--no-deterministic",
        help="Same seed, same trials at any concurrency; --no-deterministic: the most throughput.",
        show_default="deterministic",
    ),
    experiment: str | None = typer.Option(None, help="MLflow experiment.", show_default="rayzor"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI.", show_default="MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    ),
    address: str | None = typer.Option(
        None,
        help="Ray cluster to run on: HOST:PORT of its head (from a cluster machine; from outside, rayzor submit).",
        show_default="RAY_ADDRESS, else a local Ray",
    ),
    gpus_per_trial: float | None = typer.Option(
        None, help="GPUs per trial, fractions allowed (0.25).", show_default="0"
    ),
    storage_path: str | None = typer.Option(
        None, help="Ray Tune experiment storage (folder or s3://...).", show_default="./rayzor-results"
    ),
    name: str | None = typer.Option(
        None, help="Search name, the experiment folder under the storage path.", show_default="search-<timestamp>"
    ),
    resume: str | None = typer.Option(
        None, help="Resume a search: its folder (STORAGE/NAME) or NAME; finishes its budget.", show_default="none"
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show Ray's own notices and logs."),
) -> None:
    """Run a compression search and print its Pareto front."""
    started = time.perf_counter()
    from rayzor.search._config import load_config, quality_metric

    cfg = load_config(
        config,
        trials=trials,
        concurrency=concurrency,
        sampler=sampler,
        seed=seed,
        deterministic=deterministic,
        experiment=experiment,
        tracking_uri=tracking_uri,
        address=address,
        gpus_per_trial=gpus_per_trial,
        storage_path=storage_path,
        name=name,
    )
    from rayzor.search._ray import QUIET_RAY_ENV
    from rayzor.search._runner import SearchInterrupted, run_search

    if not verbose:
        os.environ[QUIET_RAY_ENV] = "1"
    setup = logging.getLogger("rayzor")
    handler = _SetupLines(logging.INFO)
    setup.addHandler(handler)
    setup.setLevel(logging.INFO)
    try:
        result = run_search(cfg, progress=_say, resume=resume)
    except SearchInterrupted as exc:  # Ctrl-C: a clean pause, 128 + SIGINT as shells report it
        err_console.print(f"interrupted: resume with rayzor search --resume {exc.name}", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        setup.removeHandler(handler)
    from rayzor.search._console import print_front

    failed = sum(r.status == "FAILED" for r in result.trials)
    quality = quality_metric(result.objectives)
    console.print()
    print_front(
        console,
        result.pareto,
        result.objectives,
        quality,
        f"Pareto front: {len(result.pareto)} of {len(result.trials)} trials ({failed} failed), "
        f"hypervolume {result.hypervolume:.4f}, {_clock(time.perf_counter() - started)} in all "
        f"({_clock(result.fit_seconds)} of trials)",
    )
    size_key = next((o for o in result.objectives if o.endswith("_bytes")), "size_bytes")
    _say(
        f"fp32 baseline: {quality} {result.baseline[quality]:.4f}, "
        f"{result.baseline.get(size_key, result.baseline['size_bytes']) / 1024:.1f} KiB ({size_key})"
    )
    from rayzor.search._browse import browse_hint

    for i, line in enumerate(browse_hint(result.tracking_uri, result.experiment_id, result.parent_run_id)):
        console.print(f"{'browse:' if i == 0 else '':9}{line}", markup=False, soft_wrap=True)
    _say(
        f"export:  rayzor export --experiment {cfg.experiment} "
        f"--pick '{quality}>={result.baseline[quality] - 0.01:.3f},min:{size_key}' "
        f"--format onnx --out model.onnx"
    )


@app.command()
@_friendly
def pareto(
    experiment: str = typer.Option("rayzor", help="MLflow experiment."),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI.", show_default="MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list: run_id, trial, every metric, plan."),
) -> None:
    """The Pareto-optimal trials of the latest search in an experiment."""
    from rayzor.search._config import quality_metric
    from rayzor.search._console import print_front
    from rayzor.search._export import load_search

    view = load_search(tracking_uri, experiment)
    if as_json:
        rows = [{"run_id": r.run_id, "trial": r.number, **r.metrics, "plan": r.plan_summary} for r in view.pareto]
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    print_front(
        console,
        view.pareto,
        view.objectives,
        quality_metric(view.objectives),
        f"search {view.parent.info.run_name} ({view.parent.info.run_id}): "
        f"{len(view.pareto)} Pareto-optimal of {len(view.trials)} trials, objectives {', '.join(view.objectives)}"
        + ("" if view.parent.info.status == "FINISHED" else f" (so far: its search run is {view.parent.info.status})"),
    )


@app.command()
@_friendly
def export(
    out: Path = typer.Option(..., "--out", help="Output file."),
    fmt: str = typer.Option(
        ...,
        "--format",
        help="onnx (the deploy artifact the trial measured) | onnx-fp32 (plain fp32 ops) | "
        "onnx-int8 (int8 kernels for the weights left fp32) | packed.",
    ),
    run: str | None = typer.Option(None, "--run", help="Run id of a trial (any experiment).", show_default="none"),
    pick: str | None = typer.Option(
        None,
        "--pick",
        help="Constraints and one objective over the Pareto front, e.g. 'accuracy>=0.95,min:size_bytes'.",
        show_default="none",
    ),
    experiment: str = typer.Option("rayzor", help="MLflow experiment (for --pick)."),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI.", show_default="MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    ),
    register: str | None = typer.Option(
        None,
        "--register",
        help="Also log the ONNX file as an MLflow model and register it under this name.",
        show_default="none",
    ),
    allow_unverified: bool = typer.Option(
        False, "--allow-unverified", help="Read a packed file that has no checksum (format version 1)."
    ),
) -> None:
    """Export one trial's compressed model (ONNX or packed) and check it.

    The JSON report alone goes to stdout (`> report.json` is JSON); what was picked goes to stderr.
    """
    from rayzor.search._export import (
        EXPORT_FORMATS,
        check_out,
        check_registry,
        export_model,
        load_search,
        pick_run,
        register_model,
    )
    from rayzor.search._records import trial_label
    from rayzor.search._tracking import connect

    if fmt not in EXPORT_FORMATS:
        raise ConfigError("--format", fmt, EXPORT_FORMATS)
    if register is not None and not fmt.startswith("onnx"):
        raise ConfigError("--register", register, "an export in an ONNX format (--format onnx, onnx-fp32, onnx-int8)")
    if (run is None) == (pick is None):
        raise ConfigError("--run/--pick", {"run": run, "pick": pick}, "exactly one of --run RUN_ID or --pick SPEC")
    check_out(out)
    if pick is not None:
        view = load_search(tracking_uri, experiment)
        chosen = pick_run(view, pick)
        client = view.client
        run = chosen.run_id
        err_console.print(
            f"picked {trial_label(chosen.number)} ({run}): {chosen.plan_summary}", markup=False, soft_wrap=True
        )
    else:
        client, _, _ = connect(tracking_uri, None, create=False)  # run ids are global: no experiment to look up
    if register is not None:
        check_registry(client, register)
    report = export_model(client, str(run), fmt, out, allow_unverified=allow_unverified)
    if register is not None:
        report.registered = register_model(client, report, register)
    sys.stdout.write(json.dumps(report.to_dict(), indent=2) + "\n")


@app.command()
@_friendly
def sync(
    search: str = typer.Argument(..., help="The search's name (under --storage-path) or folder."),
    storage_path: str | None = typer.Option(None, help="Where the search's folder is [default: ./rayzor-results]."),
    wait: float = typer.Option(60.0, help="Seconds to retry a tracking server that does not answer."),
) -> None:
    """Write the trial results a tracking outage left in a search's journal to its MLflow store."""
    from rayzor.search._runner import sync_search

    written, left = sync_search(search, storage_path, wait_seconds=wait)
    if left:
        err_console.print(
            f"error: {left} trial results still unwritten (tracking server unreachable); run `rayzor sync {search}` again",
            markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(f"synced {written} trial results of {search}", markup=False, soft_wrap=True)


space_app = typer.Typer(no_args_is_help=True, help="Inspect the search space a config resolves to.")
app.add_typer(space_app, name="space")


def space_rows(config: Path | None) -> dict[str, Any]:
    """The resolved space of a config: every compressible layer, what applies to it, its group and searched dims."""
    import fnmatch

    from rayzor.compression import FinetuneConfig, list_methods
    from rayzor.search._config import load_config
    from rayzor.spaces import introspect, uncovered_params
    from rayzor.tasks import create_task

    cfg = load_config(config)
    task = create_task(cfg.task, **cfg.task_options)
    space = cfg.space.build(
        task.model,
        FinetuneConfig(epochs=cfg.finetune_epochs, seed=cfg.seed),
        example_input=task.example_input,
        target=cfg.target,
        accuracy_level=cfg.accuracy_level,
    )
    dims = space.layer_dimensions()
    tied = {g.name for g in space.groups if g.tie}
    layers = []
    for r in introspect(task.model):
        if r.name in dims:
            why = None
        elif r.name in space.default_excluded:
            why = space.default_excluded[r.name]
        else:
            why = "space.exclude " + repr(next(g for g in space.exclude if fnmatch.fnmatchcase(r.name, g)))
        layers.append(
            {
                "layer": r.name,
                "kind": r.kind,
                "type": r.module_type,
                "flags": list(r.flags),
                "shape": list(r.weight_shape),
                "params": r.params,
                "share": r.share,
                "methods": list(r.methods),
                "refused": dict(r.refused),
                "group": space.group_of.get(r.name),
                "tied": space.group_of.get(r.name) in tied,
                "excluded": r.name not in dims,
                "why": why,
                "default_exclusion": r.default_exclusion,
                "dims": dims.get(r.name, 0),
            }
        )
    model_params = sum(p.numel() for p in task.model.parameters())
    return {
        "task": task.name,
        "layers": layers,
        "groups": space.describe().get("groups", []),
        "searched_layers": len(space.layers),
        "dimensions": space.dimensions,
        "default_exclusions": cfg.space.default_exclusions,
        "include": list(cfg.space.include),
        "methods": list_methods(),
        "model_params": model_params,
        "compressible_params": model_params - sum(uncovered_params(task.model).values()),
    }


def _note_cell(row: dict[str, Any]) -> str:
    if row["excluded"]:
        return row["why"]
    if row["default_exclusion"]:  # a default exclusion a group or space.include overrode
        how = f"group {row['group']}" if row["group"] else "space.include"
        return f"kept by {how} (default: {row['default_exclusion']})"
    return ""


def _refusal_lines(view: dict[str, Any]) -> list[str]:
    """One line per (method, reason): the layers a method does not apply to, and why."""
    refused: dict[tuple[str, str], list[str]] = {}
    for row in view["layers"]:
        for method, reason in row["refused"].items():
            refused.setdefault((method, reason), []).append(row["layer"])
    lines = []
    for (method, reason), layers in refused.items():
        names = ", ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        lines.append(f"  {method} not for {names}: {reason}")
    everywhere = [m for m in view["methods"] if not any(m in row["refused"] for row in view["layers"])]
    return [f"methods for every layer: {', '.join(everywhere) or 'none'}", *lines]


@space_app.command("show")
@_friendly
def space_show(
    config: Path | None = typer.Argument(None, help="YAML config.", show_default="the embedded digits task's space"),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print JSON: layers (kind, flags, shape, params, share, "
        "methods that apply, group, exclusion and why, dims), groups, dimensions.",
    ),
) -> None:
    """Resolve a config's space on its task's model: layers, methods that apply, exclusions, groups, dimension count."""
    view = space_rows(config)
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2) + "\n")
        return
    # A light box: nine columns stay readable in 80; which methods a layer
    # refuses, and why, is listed below the table (one line per reason).
    table = Table(
        title=f"space of task {view['task']!r}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    columns: tuple[tuple[str, Literal["left", "right"]], ...] = (
        ("layer", "left"),
        ("kind", "left"),
        ("shape", "left"),
        ("params", "right"),
        ("share", "right"),
        ("methods", "right"),
        ("group", "left"),
        ("dims", "right"),
        ("why excluded", "left"),
    )
    for column, justify in columns:
        table.add_column(
            column, justify=justify, no_wrap=column in ("kind", "group", "shape", "params", "share"), overflow="fold"
        )
    for row in view["layers"]:
        group = "(excluded)" if row["excluded"] else (row["group"] or "-") + (" (tied)" if row["tied"] else "")
        kind = "\n".join([row["kind"], *row["flags"]])
        methods = f"{len(row['methods'])}/{len(view['methods'])}"
        table.add_row(
            row["layer"],
            kind,
            "x".join(map(str, row["shape"])),
            f"{row['params']:,}",
            f"{row['share']:.1%}",
            methods,
            group,
            str(row["dims"]),
            _note_cell(row),
        )
    console.print(table)
    for line in _refusal_lines(view):
        console.print(line, markup=False, soft_wrap=True)
    state = "on" if view["default_exclusions"] else "off (space.default_exclusions: false)"
    console.print(
        f"default exclusions {state}; compressible layers hold {view['compressible_params']:,} of the model's "
        f"{view['model_params']:,} parameters ({view['compressible_params'] / max(view['model_params'], 1):.1%})",
        markup=False,
        soft_wrap=True,
    )
    console.print(
        f"{view['searched_layers']} of {len(view['layers'])} layers searched, {len(view['groups'])} groups, "
        f"{view['dimensions']} dimensions",
        markup=False,
        soft_wrap=True,
    )


@app.command("sensitivity")
@_friendly
def sensitivity_cmd(
    config: Path | None = typer.Argument(None, help="YAML config.", show_default="the embedded digits task"),
    experiment: str | None = typer.Option(None, help="MLflow experiment.", show_default="the config's, else rayzor"),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI.", show_default="MLFLOW_TRACKING_URI, else sqlite:///mlflow.db"
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster to probe on, HOST:PORT.", show_default="RAY_ADDRESS, else a local Ray"
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON: the probes, the warm-start points and the MLflow run."
    ),
) -> None:
    """Per-layer metric drop with only that layer (or tied group) compressed, and the warm-start plans it gives.

    The probes run in parallel as Ray tasks; one MLflow run (rayzor.role=sensitivity) gets the table
    (sensitivity.json, .csv) and heatmap.png. A search with `warm_start: sensitivity` enqueues those plans
    as its first trials.
    """
    from rayzor.search._config import load_config
    from rayzor.search._sensitivity import drop_matrix, level_label, run_sensitivity

    cfg = load_config(config, experiment=experiment, tracking_uri=tracking_uri, address=address)
    result = run_sensitivity(cfg, progress=lambda line: None if as_json else console.print(line, markup=False))
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "task": result.task,
                    "metric": result.metric,
                    "baseline": result.baseline,
                    "probes": [r.to_dict() for r in result.rows],
                    "warm_start": result.points,
                    "run_id": result.run_id,
                    "experiment_id": result.experiment_id,
                },
                indent=2,
            )
            + "\n"
        )
        return
    units, levels, matrix = drop_matrix(result.rows)
    table = Table(
        title=f"{result.metric} drop, one unit compressed (no fine-tune), task {result.task!r}", title_justify="left"
    )
    table.add_column("layer / tied group")
    for level in levels:
        table.add_column(level_label(*level), justify="right")
    for unit, drops in zip(units, matrix):
        table.add_row(unit, *("" if d is None else f"{d:+.3f}" for d in drops))
    console.print(table)
    console.print(
        f"{len(result.points)} warm-start plans (warm_start: sensitivity enqueues them); "
        f"MLflow run {result.run_id} in {result.tracking_uri}",
        markup=False,
        soft_wrap=True,
    )


_DASHBOARD_HELP = "Ray dashboard of the cluster, http://HEAD:8265."


def _dashboard(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("--address", address, "http://HEAD:8265, the Ray dashboard (or set RAY_ADDRESS)")
    return address


@app.command()
@_friendly
def submit(
    config: Path = typer.Argument(..., help="YAML config of the search, inside the working dir."),
    address: str | None = typer.Option(None, help=_DASHBOARD_HELP, show_default="RAY_ADDRESS"),
    working_dir: Path | None = typer.Option(
        None, help="Folder shipped with the job (config + task code).", show_default="the config's folder"
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow server every node reaches, e.g. http://mlflow:5000.", show_default="the config's"
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Stream the job's logs until it ends."),
) -> None:
    """Submit a search to a Ray cluster as a Ray Job, then stream its logs."""
    from rayzor.cluster import submit_search

    args = ["--tracking-uri", tracking_uri] if tracking_uri else []
    job_id, status = submit_search(
        config,
        _dashboard(address),
        working_dir=working_dir,
        search_args=args,
        wait=wait,
        out=lambda line: console.print(line, markup=False, soft_wrap=True),
    )
    console.print(
        f"job {job_id}: {status}   (rayzor status {job_id} / rayzor stop {job_id})", markup=False, soft_wrap=True
    )


@app.command()
@_friendly
def status(
    job: str = typer.Argument(..., help="Job id printed by `rayzor submit`."),
    address: str | None = typer.Option(None, help=_DASHBOARD_HELP, show_default="RAY_ADDRESS"),
) -> None:
    """Status of a submitted search."""
    from rayzor.cluster import job_status

    console.print(json.dumps(job_status(job, _dashboard(address)), indent=2), markup=False, soft_wrap=True)


@app.command()
@_friendly
def stop(
    job: str = typer.Argument(..., help="Job id printed by `rayzor submit`."),
    address: str | None = typer.Option(None, help=_DASHBOARD_HELP, show_default="RAY_ADDRESS"),
) -> None:
    """Stop a submitted search (its finished trials stay in MLflow)."""
    from rayzor.cluster import stop_job

    console.print(f"job {job}: {stop_job(job, _dashboard(address))}", markup=False, soft_wrap=True)


@app.callback()
def _setup(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print rayzor's version and exit."
    ),
) -> None:
    # MLflow's INFO lines (schema migration, download bars) drown rayzor's own.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # A task given as `mypkg.mymodule:make_task` is found from the working
    # directory, as with `python -m`; Ray's local workers start there too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        # The command is done. Interpreter shutdown's last garbage collection walks every
        # object torch, Ray and MLflow left behind: 2.1-2.7 s after a digits search here,
        # spent after the summary was printed (BENCHMARKS.md, cli_exit). Frozen objects are
        # skipped by it; the atexit handlers (Ray's, MLflow's, logging's) still run.
        gc.freeze()


if __name__ == "__main__":
    main()
