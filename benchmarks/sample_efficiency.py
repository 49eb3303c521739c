"""Benchmark: how many trials does the default sampler save over random search on a 44-dimension space?

The space: per-layer (sparsity, bits) for the 22 Linear layers of a residual
MLP trained on scikit-learn's digits (ten bottleneck blocks of widths 16 to
192, so layers differ in size and in sensitivity): 44 dimensions, target
``packed`` (every bit-width), objectives accuracy + size_bytes. It is a proxy
for ResNet-18 / MiniLM per layer (42 / 170+ dimensions) that still compresses,
packs and scores a real model in every trial, at about 0.1 s a trial instead of
5 s (ResNet-18 on this machine), so 3 seeds x 256 random trials fit.

Trials run through the engine directly, no Ray: each trial is
:func:`rayzor.search.evaluate_plan` (the code a Tune trial runs), suggestions
come from Optuna's ask/tell with the sampler a search builds
(``make_sampler``) and the warm-start points a search enqueues
(``warm_start_points``). Evaluated one at a time, as a search at concurrency 1.

Configurations (``--variants``):

* ``default``: ``sampler: tpe`` + ``warm_start: uniform``, what ``rayzor search`` runs
  (``make_sampler``: rayzor's ``UnivariateTPESampler`` above 16 dimensions,
  ``min(10, max(4, trials // 4))`` startup trials);
* ``tpe-optuna``: the same with Optuna's own univariate TPE (the default before
  ``UnivariateTPESampler``, the same algorithm unvectorised);
* ``tpe-multivariate``: the same with multivariate TPE (the default before this benchmark);
* ``tpe-early``: multivariate TPE modelling from the trial after the warm start
  (startup trials = the warm-start points);
* ``tpe-cold``: the default sampler without the warm start;
* ``tpe-optuna-cold``: Optuna's univariate TPE without the warm start;
* ``random``: random search, no warm start (the user's baseline);
* ``random-warm``: random search after the same uniform warm-start plans.

Reports the hypervolume (search unit box) against trials, median of the
seeds, and how many random trials match the default's hypervolume at 64.

Writes benchmarks/results/sample_efficiency.json, sample_efficiency.png and the
"sample_efficiency" section of BENCHMARKS.md.

    python benchmarks/sample_efficiency.py [--seeds 0 1 2] [--budget 64] [--random-budget 256]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, describe_machine, machine, replace_section, write_result  # noqa: E402

#: Bottleneck widths of the residual blocks: layers of 2 K to 25 K weights.
WIDTHS = (16, 192, 32, 128, 24, 160, 48, 96, 64, 112)
OBJECTIVES = ("accuracy", "size_bytes")
VARIANTS = (
    "default",
    "tpe-optuna",
    "tpe-multivariate",
    "tpe-early",
    "tpe-cold",
    "tpe-optuna-cold",
    "random",
    "random-warm",
)


class ResidualMLP(nn.Module):
    """64 inputs -> 96 wide, ten residual bottleneck blocks (96 -> w -> 96), -> 10 classes: 22 Linear layers."""

    def __init__(self, width: int = 96, widths: tuple[int, ...] = WIDTHS, num_classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(64, width)
        self.down = nn.ModuleList(nn.Linear(width, w) for w in widths)
        self.up = nn.ModuleList(nn.Linear(w, width) for w in widths)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(torch.flatten(x, 1)))
        for down, up in zip(self.down, self.up):
            h = h + up(torch.relu(down(h)))
        return self.out(torch.relu(h))


def make_task() -> Any:
    """The digits split of the default task, with a :class:`ResidualMLP` trained on it (seeded, ~10 s)."""
    from rayzor.tasks import Task, create_task
    from rayzor.tasks._digits import _train, accuracy

    digits = create_task("digits")
    torch.manual_seed(0)  # the initial weights: the same model every run
    model = ResidualMLP()
    _train(model, digits.data["train"], epochs=40, lr=2e-3, seed=0)
    task = Task(
        name="digits-resmlp",
        model=model,
        arch={"factory": "sample_efficiency:ResidualMLP", "kwargs": {}},
        data=digits.data,
        evaluate=accuracy,
        example_input=digits.example_input,
        batch_size=64,
    )
    task.baseline = {split: task.score(model, split) for split in ("val", "test")}
    return task


def run_variant(variant: str, seed: int, trials: int, task: Any, space: Any, config: Any, scratch: Path) -> list[dict]:
    """One search of ``trials`` trials, in order: the metrics of each."""
    import optuna

    from rayzor.search import evaluate_plan, warm_start_points
    from rayzor.search._tuner import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warm = warm_start_points(space, config.model_copy(update={"trials": trials}))
    sampler = make_sampler("random" if variant.startswith("random") else "tpe", seed, trials, space.dimensions)
    if variant in ("tpe-optuna", "tpe-optuna-cold"):
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=False, n_startup_trials=min(10, max(4, trials // 4))
        )
    elif variant == "tpe-multivariate":
        sampler = make_sampler("tpe", seed, trials)  # 0 dimensions: the multivariate branch
    elif variant == "tpe-early":
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=len(warm))
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    if variant not in ("tpe-cold", "tpe-optuna-cold", "random"):
        for point in warm:
            study.enqueue_trial(point)
    rows = []
    for _ in range(trials):
        started = time.perf_counter()
        trial = study.ask()
        space.suggest(trial)
        suggest_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory(dir=scratch) as out:
            m = evaluate_plan(task, space, trial.params, Path(out), target="packed")
        study.tell(trial, [m[o] for o in OBJECTIVES])
        rows.append({**{o: m[o] for o in OBJECTIVES}, "trial_seconds": m["trial_seconds"], "suggest_s": suggest_s})
    return rows


def hv_curve(rows: list[dict], baseline: dict[str, float], at: list[int]) -> dict[int, float]:
    from rayzor.search import search_hypervolume

    return {n: search_hypervolume(rows[:n], OBJECTIVES, baseline) for n in at if n <= len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=64)
    parser.add_argument("--random-budget", type=int, default=256)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--note", default="", help="a sentence on the machine's load, for the report")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the runs of the variants not run now from the last results/sample_efficiency.json",
    )
    args = parser.parse_args()

    from rayzor.compression import state_dict_bytes
    from rayzor.search import load_config

    torch.set_num_threads(1)
    task = make_task()
    config = load_config(None, target="packed", finetune_epochs=0, space={"default_exclusions": False})
    space = config.space.build(task.model, config.finetune(), example_input=task.example_input, target="packed")
    baseline = {**task.baseline["val"], "size_bytes": float(state_dict_bytes(task.model))}
    print(f"{space.dimensions} dimensions, fp32 accuracy {baseline['accuracy']:.4f}", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="rayzor-efficiency-"))
    at = sorted({n for n in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256) if n <= args.random_budget})
    runs: dict[str, list[dict]] = {}
    if args.merge:
        import json

        kept = json.loads((RESULTS / "sample_efficiency.json").read_text())["runs"]
        for variant in VARIANTS:
            if variant in kept and variant not in args.variants:
                # JSON keys are strings: the curve's trial counts back to ints
                runs[variant] = [{**r, "curve": {int(n): v for n, v in r["curve"].items()}} for r in kept[variant]]
    for variant in args.variants:
        trials = args.random_budget if variant.startswith("random") else args.budget
        for seed in args.seeds:
            rows = run_variant(variant, seed, trials, task, space, config, scratch)
            curve = hv_curve(rows, baseline, at)
            runs.setdefault(variant, []).append({"seed": seed, "curve": curve, "rows": rows})
            print(f"{variant:>12} seed {seed}: HV@{trials} {curve[max(curve)]:.4f}", flush=True)
    runs = {v: runs[v] for v in VARIANTS if v in runs}
    median = {v: {n: statistics.median(r["curve"][n] for r in rs) for n in rs[0]["curve"]} for v, rs in runs.items()}
    report: dict[str, Any] = {
        "command": "python benchmarks/sample_efficiency.py" + "".join(f" {shlex.quote(a)}" for a in sys.argv[1:]),
        **machine(),
        "dimensions": space.dimensions,
        "layers": len(space.layers),
        "baseline": baseline,
        "seeds": args.seeds,
        "budget": args.budget,
        "random_budget": args.random_budget,
        "note": args.note,
        "median_curve": median,
        "runs": {
            v: [{"seed": r["seed"], "curve": r["curve"], "rows": r["rows"]} for r in rs] for v, rs in runs.items()
        },
        "mean_trial_seconds": statistics.mean(
            x["trial_seconds"] for rs in runs.values() for r in rs for x in r["rows"]
        ),
    }
    if "default" in median and "random" in runs:
        target = median["default"][args.budget]
        report["default_hv_at_budget"] = target
        report["random_trials_to_match"] = _to_match(runs["random"], target, baseline)
        report["random_hv_at_random_budget"] = median["random"][args.random_budget]
    write_result("sample_efficiency", report)
    _plot(report, RESULTS / "sample_efficiency.png")
    _write_section(report)


def _to_match(random_runs: list[dict], target: float, baseline: dict[str, float]) -> dict[str, Any]:
    """Per seed and for the median curve: the fewest random trials whose hypervolume reaches ``target``."""
    from rayzor.search import search_hypervolume

    per_seed = []
    for r in random_runs:
        rows = r["rows"]
        n = next(
            (k for k in range(1, len(rows) + 1) if search_hypervolume(rows[:k], OBJECTIVES, baseline) >= target), None
        )
        per_seed.append(n)
    found = [n for n in per_seed if n is not None]
    return {
        "per_seed": per_seed,
        "median": statistics.median(found) if len(found) == len(per_seed) else None,
        "max_trials": len(random_runs[0]["rows"]),
    }


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "default": "#d9480f",
        "tpe-optuna": "#2b8a3e",
        "tpe-multivariate": "#a61e4d",
        "tpe-early": "#5f3dc4",
        "tpe-cold": "#f59f00",
        "tpe-optuna-cold": "#94d82d",
        "random": "#1c7ed6",
        "random-warm": "#4dabf7",
    }
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for variant, runs in report["runs"].items():
        for r in runs:
            xs = sorted(int(n) for n in r["curve"])
            ax.plot(xs, [r["curve"][n] for n in xs], color=colors[variant], alpha=0.25, lw=0.8)
        med = report["median_curve"][variant]
        xs = sorted(int(n) for n in med)
        ax.plot(xs, [med[n] for n in xs], color=colors[variant], lw=2, marker="o", ms=3, label=f"{variant} (median)")
    if "default_hv_at_budget" in report:
        ax.axhline(report["default_hv_at_budget"], color=colors["default"], ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("trials (log2)")
    ax.set_ylabel("hypervolume (search unit box)")
    ax.set_title(
        f"{report['dimensions']}-dimension space (digits residual MLP, per layer): hypervolume vs trials, "
        f"seeds {report['seeds']}",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _write_section(report: dict) -> None:
    at = [n for n in (8, 16, 32, 64, 128, 256) if n in report["median_curve"].get("random", {})]
    lines = [
        "## sample_efficiency: hypervolume vs trials on a 44-dimension space",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}). {report['note']}",
        f"Space: per-layer sparsity x bits of the {report['layers']} Linear layers of a residual MLP trained on "
        f"digits ({report['dimensions']} dimensions, target packed, fp32 val accuracy "
        f"{report['baseline']['accuracy']:.4f}), objectives accuracy + size_bytes, no fine-tune. Each trial is "
        f"`evaluate_plan` (the engine a Tune trial runs: compress, pack, score) called directly, without Ray, one "
        f"at a time; mean {report['mean_trial_seconds']:.2f} s a trial. Suggestions: Optuna ask/tell with the "
        "sampler and warm-start points a search builds. Hypervolume in the search's unit box (higher is better), "
        f"median of seeds {report['seeds']}.",
        "",
        "| configuration | " + " | ".join(f"HV@{n}" for n in at) + " |",
        "|---|" + "---:|" * len(at),
    ]
    for variant, med in report["median_curve"].items():
        lines.append(f"| {variant} | " + " | ".join(f"{med[n]:.4f}" if n in med else "" for n in at) + " |")
    if "random_trials_to_match" in report:
        m = report["random_trials_to_match"]
        per_seed = ", ".join(str(n) if n is not None else f">{m['max_trials']}" for n in m["per_seed"])
        med = m["median"] if m["median"] is not None else f"more than {m['max_trials']}"
        lines += [
            "",
            f"Default sampler's hypervolume at {report['budget']} trials (median): "
            f"**{report['default_hv_at_budget']:.4f}**; random search at {report['random_budget']}: "
            f"{report['random_hv_at_random_budget']:.4f}. Random trials needed to reach it: **{med}** "
            f"(per seed: {per_seed}).",
        ]
    for ours_v, theirs_v, what in (("default", "tpe-optuna", "with"), ("tpe-cold", "tpe-optuna-cold", "without")):
        if ours_v not in report["median_curve"] or theirs_v not in report["median_curve"]:
            continue
        b = report["budget"]
        ours, theirs = report["median_curve"][ours_v][b], report["median_curve"][theirs_v][b]
        per_seed = ", ".join(
            f"{r['curve'][b]:.4f} vs {o['curve'][b]:.4f}"
            for r, o in zip(report["runs"][ours_v], report["runs"][theirs_v])
        )
        lines += [
            "",
            f"`{ours_v}` (rayzor's `UnivariateTPESampler`) against `{theirs_v}` (Optuna's univariate TPE, the same "
            f"algorithm, the default before it), {what} the warm start, at {b} trials: {ours:.4f} vs {theirs:.4f} "
            f"(median; per seed: {per_seed}).",
        ]
    lines += ["", "![hypervolume vs trials](benchmarks/results/sample_efficiency.png)"]
    replace_section("sample_efficiency", "\n".join(lines))


if __name__ == "__main__":
    main()
