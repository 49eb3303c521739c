"""Benchmark: every compression method of the engine, at two strengths, on the digits CNN.

Each method is applied to every layer where it is valid (low-rank only where
it saves parameters), with no fine-tuning, so the rows compare the methods
themselves. Per row: packed size (plain and with the lzma entropy stage),
compression ratio against the fp32 safetensors state dict, validation
accuracy, parameters / MACs / BitOps, and the median forward latency of the
compressed model against fp32 (single thread, batch sizes 1 and 256). Every
row's packed file is reloaded and must give identical outputs.

Writes benchmarks/results/engine.json and the "engine" section of BENCHMARKS.md.

    python benchmarks/engine.py [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _report import describe_machine, machine, replace_section, write_result


def _rows():
    from compression import (
        BinaryQuantization,
        HalfPrecision,
        KMeansQuantization,
        LowRank,
        MagnitudePruning,
        TernaryQuantization,
        UniformQuantization,
    )

    return [
        ("fp32 (no compression)", ()),
        ("magnitude pruning 50%", (MagnitudePruning(0.5),)),
        ("magnitude pruning 80%", (MagnitudePruning(0.8),)),
        ("uniform 8-bit", (UniformQuantization(8),)),
        ("uniform 4-bit", (UniformQuantization(4),)),
        ("uniform 3-bit asym. MSE clip", (UniformQuantization(3, symmetric=False, clipping="mse"),)),
        ("uniform 2-bit asym. MSE clip", (UniformQuantization(2, symmetric=False, clipping="mse"),)),
        ("k-means 4-bit", (KMeansQuantization(4),)),
        ("k-means 2-bit", (KMeansQuantization(2),)),
        ("ternary (TWN, per channel)", (TernaryQuantization(),)),
        ("ternary (TWN, per tensor)", (TernaryQuantization(granularity="per_tensor"),)),
        ("binary (XNOR, per channel)", (BinaryQuantization(),)),
        ("binary (per tensor)", (BinaryQuantization("per_tensor"),)),
        ("fp16", (HalfPrecision("fp16"),)),
        ("bf16", (HalfPrecision("bf16"),)),
        ("low-rank SVD 50% rank", (LowRank(rank_ratio=0.5),)),
        ("low-rank SVD 25% rank", (LowRank(rank_ratio=0.25),)),
        ("prune 80% + k-means 4-bit", (MagnitudePruning(0.8), KMeansQuantization(4))),
        ("low-rank 50% + uniform 4-bit", (LowRank(rank_ratio=0.5), UniformQuantization(4))),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed forwards per latency figure")
    args = parser.parse_args()

    import torch

    from compression import (
        CompressionPlan,
        ConfigError,
        compress,
        compressible_layers,
        load_packed,
        measure_latency,
        model_stats,
        save_packed,
        state_dict_bytes,
    )
    from compression.tasks import create_task

    task = create_task("digits")
    dense_bytes = state_dict_bytes(task.model)
    x_val = task.data["val"].tensors[0]
    batches = {1: x_val[:1], 256: x_val[:256]}
    layers = list(compressible_layers(task.model))
    scratch = Path(tempfile.mkdtemp(prefix="rayzor-engine-"))

    def latency(model):
        return {b: measure_latency(model, x, warmup=5, repeats=args.repeats, threads=1) for b, x in batches.items()}

    latency(task.model)  # discarded: the first timings of a process run slow (allocator, CPU clocks)
    base_latency = latency(task.model)
    rows = []
    for label, methods in _rows():
        # Each method on every layer that accepts it (low-rank refuses layers where it saves nothing).
        chosen = {}
        for name in layers:
            try:
                CompressionPlan({name: methods}).validate(task.model)
                chosen[name] = methods
            except ConfigError:
                pass
        plan = CompressionPlan(chosen)
        out = compress(task.model, plan)
        size = save_packed(out, scratch / "m.rzp", arch=task.arch)
        size_lzma = save_packed(out, scratch / "m_lzma.rzp", arch=task.arch, entropy="lzma")
        loaded, _ = load_packed(scratch / "m_lzma.rzp")
        with torch.inference_mode():
            assert torch.equal(loaded(x_val), out.model(x_val)), label
        stats = model_stats(out.model, batches[1], out.weights)
        lat = latency(out.model)
        rows.append({
            "method": label, "plan": plan.to_dict()["layers"], "layers": sorted(chosen),
            "size_bytes": size, "size_bytes_lzma": size_lzma,
            "ratio": dense_bytes / size, "ratio_lzma": dense_bytes / size_lzma,
            "val_accuracy": task.score(out.model, "val")["accuracy"],
            **stats,
            "latency_ms": {str(b): v for b, v in lat.items()},
            "latency_vs_fp32": {str(b): lat[b] / base_latency[b] for b in batches},
        })
        print(f"{label:32s} {size:7d} B  {dense_bytes / size:5.1f}x  lzma {dense_bytes / size_lzma:5.1f}x  "
              f"acc {rows[-1]['val_accuracy']:.4f}  lat b1 {lat[1]:.3f} ms  b256 {lat[256]:.2f} ms", flush=True)

    report = {
        "command": "python benchmarks/engine.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "task": "digits", "fp32_state_dict_bytes": dense_bytes,
        "fp32_latency_ms": {str(b): v for b, v in base_latency.items()},
        "latency": {"threads": 1, "warmup": 5, "repeats": args.repeats, "statistic": "median"},
        "rows": rows,
    }
    write_result("engine", report)
    _write_section(report)


def _write_section(report: dict) -> None:
    base = report["fp32_latency_ms"]
    lines = [
        "## engine: every method on the digits CNN",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}).",
        "Each method on every Conv/Linear layer where it is valid (low-rank: where it saves parameters), no "
        "fine-tuning; sizes are packed-file lengths (plain, and with the lzma entropy stage), ratio = fp32 "
        f"safetensors state dict ({report['fp32_state_dict_bytes']} bytes) / size. Latency: median of "
        f"{report['latency']['repeats']} forwards, 1 thread, fp32 = {base['1']:.3f} ms (batch 1) and "
        f"{base['256']:.2f} ms (batch 256). MACs for batch 1; BitOps = MACs x weight bits x 32 x density.",
        "",
        "Latency ratios within about +-0.3 of 1.0 are noise on this shared 2-core machine.",
        "",
        "| method | size (B) | ratio | ratio + lzma | val acc | params | MACs | GBitOps | latency b1 vs fp32 | "
        "latency b256 vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['method']} | {r['size_bytes']} | {r['ratio']:.1f}x | {r['ratio_lzma']:.1f}x | "
            f"{r['val_accuracy']:.4f} | {r['params']:.0f} | {r['macs']:.0f} | {r['bitops'] / 1e9:.3f} | "
            f"{r['latency_vs_fp32']['1']:.2f} | {r['latency_vs_fp32']['256']:.2f} |")
    lines += [
        "",
        "Quantized, k-means, binary/ternary and half-precision models still run fp32 kernels (weights are "
        "materialised), so their latency stays at fp32's: their gain is size (and BitOps on hardware with "
        "low-bit kernels). Unstructured pruning likewise saves bytes, not time. Low-rank factorisation is the "
        "one method here that changes the computation, so its latency can move.",
    ]
    replace_section("engine", "\n".join(lines))


if __name__ == "__main__":
    main()
