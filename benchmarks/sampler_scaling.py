"""Benchmark: how sampler suggestion time scales with a large space (Optuna only, no Ray).

A synthetic 300-dimension space, the one rayzor searches for a 150-layer model
(``CompressionSpace`` with per-layer sparsity + bits, sampled define-by-run),
and a cheap synthetic 2-objective function (an error proxy that grows with
sparsity and shrinks with bits, and the packed size), so only the sampler's
own cost is measured. Each sampler is built exactly as a search builds it
(``rayzor.search._tuner.make_sampler``) and runs ask -> suggest -> tell for up to
``--trials`` trials or ``--max-seconds``, whichever comes first.

Suggestion time = ``study.ask()`` + ``space.suggest(trial)`` (relative and
independent sampling both happen there); ``tell`` is timed apart.

Writes benchmarks/results/sampler_scaling.json and the "sampler_scaling"
section of BENCHMARKS.md.

    python benchmarks/sampler_scaling.py [--trials 1000] [--layers 150] [--gp-trials 14] [--max-seconds 240]

With ``--at-history N`` it times suggestions once a study holds N trials
(the "sampler_scaling_1000" section; ``--layers 500`` = 1,000 dimensions):

    python benchmarks/sampler_scaling.py --layers 500 --at-history 1000 --probes 20 --samplers tpe,optuna-tpe,random

``optuna-tpe`` (not a ``sampler`` name) is Optuna's own univariate TPE, the
default above 16 dimensions before rayzor's ``UnivariateTPESampler``; it is
probed ``--optuna-tpe-probes`` times (3), each taking 10-50 s at 1,000 dimensions.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import describe_machine, machine, replace_section, write_result  # noqa: E402

SAMPLERS = ("random", "nsga2", "tpe", "gp")
#: Not a ``sampler`` name: Optuna's own univariate TPE, the default above 16 dimensions before ``UnivariateTPESampler``.
OPTUNA_TPE = "optuna-tpe"


def build_sampler(name: str, seed: int, trials: int, dimensions: int) -> Any:
    """A sampler as a search builds it (``make_sampler``), or ``optuna-tpe`` with the same startup trials."""
    import optuna

    from rayzor.search._tuner import make_sampler

    if name == OPTUNA_TPE:
        return optuna.samplers.TPESampler(seed=seed, multivariate=False, n_startup_trials=min(10, max(4, trials // 4)))
    return make_sampler(name, seed, trials, dimensions)


def synthetic_objectives(params: dict[str, Any], layers: list[str], sizes: np.ndarray) -> tuple[float, float]:
    """(accuracy proxy to maximise, size in bytes to minimise): cheap, smooth, conflicting."""
    sparsity = np.array([params[f"{n}.sparsity"] for n in layers])
    bits = np.array([params[f"{n}.bits"] for n in layers], dtype=float)
    weight = sizes / sizes.sum()
    # pruning hurts quadratically, few bits hurt exponentially; big layers matter more
    error = float((weight * (sparsity**2 + 4.0 * 2.0**-bits)).sum())
    size = float((sizes * (1.0 - sparsity) * bits / 8.0).sum())
    return 1.0 - error, size


def run_sampler(
    name: str, trials: int, max_seconds: float, layers: list[str], sizes: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """One study: per-trial suggestion and tell times."""
    import optuna

    from rayzor.spaces import CompressionSpace

    space = CompressionSpace(layers)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=build_sampler(name, seed, trials, space.dimensions)
    )
    suggest_s: list[float] = []
    tell_s: list[float] = []
    started = time.perf_counter()
    for _ in range(trials):
        t0 = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        t1 = time.perf_counter()
        study.tell(trial, synthetic_objectives(trial.params, layers, sizes))
        tell_s.append(time.perf_counter() - t1)
        suggest_s.append(t1 - t0)
        if time.perf_counter() - started > max_seconds:
            break
    n = len(suggest_s)
    tenth = max(1, n // 10)
    return {
        "sampler": name,
        "trials_run": n,
        "trials_asked": trials,
        "capped_by_time": n < trials,
        "dimensions": space.dimensions,
        "mean_suggest_ms": 1e3 * statistics.fmean(suggest_s),
        "median_suggest_ms": 1e3 * statistics.median(suggest_s),
        "first_10pct_mean_suggest_ms": 1e3 * statistics.fmean(suggest_s[:tenth]),
        "last_10pct_mean_suggest_ms": 1e3 * statistics.fmean(suggest_s[-tenth:]),
        "max_suggest_ms": 1e3 * max(suggest_s),
        "mean_tell_ms": 1e3 * statistics.fmean(tell_s),
        "total_suggest_s": sum(suggest_s),
        "total_s": time.perf_counter() - started,
    }


def random_history(history: int, layers: list[str], sizes: np.ndarray, seed: int = 0) -> list[Any]:
    """``history`` finished random trials of the space (one set, shared by every sampler probed)."""
    import optuna

    from rayzor.spaces import CompressionSpace

    space = CompressionSpace(layers)
    filler = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(history):
        trial = filler.ask()
        space.suggest(trial)
        filler.tell(trial, synthetic_objectives(trial.params, layers, sizes))
    return filler.get_trials(deepcopy=False)


def probe_at_history(
    name: str, trials: list[Any], probes: int, layers: list[str], sizes: np.ndarray, seed: int = 0
) -> dict[str, Any]:
    """Suggestion times of ``name`` once the study already holds the finished ``trials``.

    The history is added with ``study.add_trials``, so filling it costs no
    sampler time; one untimed suggestion first fills the caches a real search
    builds a trial at a time (Optuna's search space; the history matrix of
    ``UnivariateTPESampler``); then ``probes`` suggestions (each told, so the
    history grows by one) are timed.
    """
    import optuna

    from rayzor.spaces import CompressionSpace

    space = CompressionSpace(layers)
    history = len(trials)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=build_sampler(name, seed, history + probes, space.dimensions)
    )
    study.add_trials(trials)
    suggest_s: list[float] = []
    for i in range(probes + 1):
        t0 = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        if i:  # the first one fills the caches
            suggest_s.append(time.perf_counter() - t0)
        else:
            warmup_s = time.perf_counter() - t0
        study.tell(trial, synthetic_objectives(trial.params, layers, sizes))
    return {
        "sampler": name,
        "history": history,
        "probes": probes,
        "dimensions": space.dimensions,
        "first_suggest_s": warmup_s,
        "median_suggest_s": statistics.median(suggest_s),
        "p95_suggest_s": float(np.percentile(suggest_s, 95)),
        "max_suggest_s": max(suggest_s),
    }


#: What each row of the at-history table is.
WHAT = {
    "tpe": "`sampler: tpe`, the default: rayzor's `UnivariateTPESampler` above 16 dimensions",
    OPTUNA_TPE: "Optuna's `TPESampler(multivariate=False)`, the default before",
    "random": "`sampler: random`",
    "nsga2": "`sampler: nsga2`",
    "gp": "`sampler: gp`",
}


def main_at_history(args: argparse.Namespace) -> None:
    """``--at-history``: suggestion time at a given history and dimension count, one row per sampler."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    rng = np.random.default_rng(0)
    layers = [f"layer{i}" for i in range(args.layers)]
    sizes = rng.integers(1_000, 500_000, size=args.layers).astype(float)
    trials = random_history(args.at_history, layers, sizes)
    rows = []
    for name in args.samplers.split(","):
        probes = args.optuna_tpe_probes if name == OPTUNA_TPE else args.probes
        row = probe_at_history(name, trials, probes, layers, sizes)
        rows.append(row)
        print(row, flush=True)
    report = {
        **machine(),
        "command": "python benchmarks/sampler_scaling.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
        "note": args.note,
        "rows": rows,
    }
    write_result(f"sampler_scaling_{report['rows'][0]['dimensions']}d", report)
    lines = [
        f"## Sampler scaling at {rows[0]['dimensions']} dimensions and {args.at_history} trials",
        "",
        f"`{report['command']}` ({describe_machine(report)}). {args.note}",
        f"Optuna only, no Ray: {args.layers} layers x (sparsity, bits) = {rows[0]['dimensions']} dimensions, the "
        f"synthetic 2-objective function above. The study first holds {args.at_history} finished random trials "
        "(added, not sampled, the same for every sampler); one untimed suggestion fills the caches a search builds "
        "a trial at a time (Optuna's search space, `UnivariateTPESampler`'s history matrix), then the probes are "
        "timed (`ask()` + `suggest()`, each told). Goal: the default sampler's 95th percentile under 0.5 s.",
        "",
        "| sampler | what | history | dimensions | probes | first (cache fill) | median | p95 | max |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sampler']} | {WHAT.get(r['sampler'], '')} | {r['history']} | {r['dimensions']} | {r['probes']} | "
            f"{r['first_suggest_s']:.1f} s | {r['median_suggest_s']:.2f} s | {r['p95_suggest_s']:.2f} s | "
            f"{r['max_suggest_s']:.2f} s |"
        )
    replace_section("sampler_scaling_1000", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--layers", type=int, default=150, help="2 dimensions per layer (sparsity, bits)")
    parser.add_argument(
        "--gp-trials", type=int, default=14, help="GP refits per suggestion (10 random startup trials): capped"
    )
    parser.add_argument("--max-seconds", type=float, default=240.0, help="per sampler; the run stops there")
    parser.add_argument(
        "--samplers", default=",".join(SAMPLERS), help=f"comma-separated: {', '.join(SAMPLERS)}, {OPTUNA_TPE}"
    )
    parser.add_argument("--note", default="", help="appended to the section, e.g. what else loaded the machine")
    parser.add_argument(
        "--at-history", type=int, default=0, help="time suggestions once the study holds this many trials"
    )
    parser.add_argument("--probes", type=int, default=10, help="timed suggestions with --at-history")
    parser.add_argument(
        "--optuna-tpe-probes", type=int, default=3, help="timed suggestions of optuna-tpe (10-50 s each at 1,000 dims)"
    )
    args = parser.parse_args()
    if args.at_history:
        main_at_history(args)
        return

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    rng = np.random.default_rng(0)
    layers = [f"layer{i}" for i in range(args.layers)]
    sizes = rng.integers(1_000, 500_000, size=args.layers).astype(float)  # weights per layer, transformer-like spread

    rows = []
    for name in args.samplers.split(","):
        trials = min(args.trials, args.gp_trials) if name == "gp" else args.trials
        row = run_sampler(name, trials, args.max_seconds, layers, sizes)
        rows.append(row)
        print(
            f"{name:>6}: {row['trials_run']} trials, mean {row['mean_suggest_ms']:.2f} ms, median "
            f"{row['median_suggest_ms']:.2f} ms, last 10% {row['last_10pct_mean_suggest_ms']:.2f} ms, "
            f"total {row['total_s']:.1f} s",
            flush=True,
        )

    report = {
        **machine(),
        "layers": args.layers,
        "dimensions": rows[0]["dimensions"],
        "trials": args.trials,
        "gp_trials": args.gp_trials,
        "max_seconds_per_sampler": args.max_seconds,
        "note": args.note,
        "samplers": rows,
    }
    write_result("sampler_scaling", report)
    lines = [
        "## Sampler scaling: suggestion time at 300 dimensions",
        "",
        f"`python benchmarks/sampler_scaling.py` ({describe_machine(report)}). Optuna only, no Ray: "
        f"{args.layers} layers x (sparsity, bits) = {report['dimensions']} dimensions sampled define-by-run "
        "by `CompressionSpace.suggest`, samplers built as a search builds them (`make_sampler`), a synthetic "
        "2-objective function. Suggestion = `ask()` + `suggest()`; `tell` apart.",
        "",
        "| sampler | trials | mean suggest | median | first 10% | last 10% | mean tell | total |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        capped = " (time cap)" if r["capped_by_time"] else (" (capped)" if r["trials_asked"] < args.trials else "")
        lines.append(
            f"| {r['sampler']} | {r['trials_run']}{capped} | {r['mean_suggest_ms']:.1f} ms | "
            f"{r['median_suggest_ms']:.1f} ms | {r['first_10pct_mean_suggest_ms']:.1f} ms | "
            f"{r['last_10pct_mean_suggest_ms']:.1f} ms | {r['mean_tell_ms']:.2f} ms | {r['total_s']:.1f} s |"
        )
    lines += [
        "",
        f"GP is capped at {args.gp_trials} trials (its first 10 are random startup trials; each later one "
        "refits the GP and optimises the acquisition over all 300 dimensions); every sampler "
        f"stops at {args.max_seconds:.0f} s. A Ray search pays the suggestion time once per trial on the "
        "driver, next to trials that take seconds.",
    ]
    if any(r["sampler"] in WHAT for r in rows):
        lines += ["", "; ".join(f"{r['sampler']}: {WHAT[r['sampler']]}" for r in rows if r["sampler"] in WHAT) + "."]
    if args.note:
        lines += ["", args.note]
    replace_section("sampler_scaling", "\n".join(lines))
    print(f"wrote {Path(__file__).resolve().parent / 'results' / 'sampler_scaling.json'}")


if __name__ == "__main__":
    main()
