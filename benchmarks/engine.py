"""Benchmark: every registered compression method, at two strengths, on the digits CNN and on ResNet-18;
RTN, GPTQ and AWQ at 4 and 3 bits, and W8A8 plain vs SmoothQuant, on all-MiniLM-L6-v2.

One command, three models:

* **digits**: the embedded task's trained CNN; quality = top-1 accuracy on the
  test split (validation accuracy is in the JSON too).
* **ResNet-18** (transformers' ``ResNetForImageClassification``, the
  torchvision layout, 11.7 M parameters), random init with a fixed seed
  (nothing is downloaded); quality = relative L2 error of the logits against
  the fp32 model on a fixed batch of 8 random images, and top-1 agreement
  with fp32 on it. Also the fp32 model exported to ONNX and run by
  onnxruntime in fp32 and int8 (dynamic, and static with calibration).
* **all-MiniLM-L6-v2** (the ``minilm`` task; needs the minilm extra):
  weight-only quantization of every Linear of its 6 encoder blocks (not the
  embeddings; the task's encoder has no pooler) with RTN per channel, RTN g128
  symmetric and asymmetric, GPTQ g128 (symmetric with and without act_order,
  asymmetric with act_order) and AWQ g128, at 4 and 3 bits, and W8A8 (int8
  weights plus ``ActivationQuantization(8, symmetric=True)`` on the same
  Linears' inputs) plain and with SmoothQuant at alpha 0.5 and 0.8; quality =
  validation cosine to the fp32 embeddings (``task.score(model)["cosine"]``),
  with packed size and the time each compress took. Peers measured elsewhere
  (INC, torchao, NNCF) are quoted in the section as such.

Calibration: GPTQ, AWQ and SmoothQuant need their layers' input statistics; each model's
are computed once with ``collect_layer_stats`` (timed) and passed to every
compress call as ``calibration_stats``: digits and MiniLM from their task's
``calibration_batches()``; ResNet-18 from 16 fixed random images (seed
:data:`CALIB_SEED`, two batches of 8) distinct from its evaluation batch, the
same images that calibrate activation quantization. Block-wise rows (RTN,
GPTQ, AWQ) use blocks of 128 inputs on ResNet-18 and MiniLM, of 32 on the
digits CNN (whose layers have 9..512 inputs per output). AWQ and SmoothQuant
take Linear layers only, so on the CNNs they quantize the Linear layers (digits
fc1, fc2; ResNet-18 its classifier; their rows list the convolutions as
skipped). SmoothQuant exists for W8A8, so its two rows (alpha 0.5 and 0.8) pair
it with ``ActivationQuantization(8, symmetric=True)`` on the same layers, next
to a plain W8A8 row (``UniformQuantization(8)`` + the same activation
quantizer) restricted to the same Linear layers, so the three compare side by
side; activation quantizers are calibrated on the same batches.

Each method is applied to every Conv/Linear layer where it is valid (a layer
the method refuses, e.g. low-rank where it saves nothing, or channel pruning
on the classifier whose outputs are the model's, is listed as skipped), with
no fine-tuning, so rows compare the methods themselves. A method no layer
accepts (head pruning on a CNN) gets an "n/a" row with the reason. Every
registered method (``rayzor.compression.list_methods()``) must have two rows of its
own (the method alone, or a weight method paired with an activation quantizer:
W8A8, the only way SmoothQuant is meant to run), or the script stops before
measuring anything.

Per row: packed file length (``save_packed``; digits also with the lzma
entropy stage), ratio against the fp32 safetensors state dict, quality,
params / MACs / BitOps, and the median single-thread forward latency of the
compressed model against the fp32 model, measured in alternating rounds
(fp32, compressed, fp32, compressed, ...) right beside it, so drift of a
shared machine hits both. Structured rows (channel pruning, low-rank,
Tucker-2) run the physically smaller model. Every packed file is reloaded and
must give bit-identical outputs.

The whole run uses one intra-op thread: on a shared 2-core machine MKL's
2-thread SVD was 10x slower than 1-thread (12 s vs 1.2 s for one 512 x 4608
matrix), and latency is measured single-threaded anyway.

Writes benchmarks/results/engine.json and the "engine" section of BENCHMARKS.md
(``--quick``: a smoke run, ResNet-18 at 1/4 width and 64x64, few repeats, MiniLM at 4 bits and W8A8 only, written to
benchmarks/results/engine_quick.json only; the section is printed, not written).

    python benchmarks/engine.py [--quick] [--resnet-size 224] [--rounds 3]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from _report import describe_machine, machine, replace_section, write_result
from torch import nn

#: Seeds of the ResNet-18 weights, its evaluation images and its calibration images.
RESNET_SEED, EVAL_SEED, CALIB_SEED = 0, 1, 2
#: Block size of the block-wise rows: the digits CNN's layers have 9..512 inputs per row (conv1 9, conv2 144,
#: fc1 512, fc2 64), so 32 (conv1's one short block is its whole row); ResNet-18's have 147..4608, so 128.
DIGITS_GROUP, RESNET_GROUP = 32, 128


def resnet18(width_divisor: int = 1):
    """transformers' ResNet-18 (torchvision layout), random init with :data:`RESNET_SEED` (packed-file factory).

    ``width_divisor`` > 1 divides every stage's channels (``--quick`` uses 4: the same graph at 1/16 the cost).
    """
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(RESNET_SEED)
    config = ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[c // width_divisor for c in (64, 128, 256, 512)],
        embedding_size=64 // width_divisor,
        num_labels=1000,
    )
    return ResNetForImageClassification(config).eval()


@dataclass(frozen=True)
class Row:
    """One table row: ``methods`` on every layer that accepts them, or a global magnitude plan."""

    label: str
    methods: tuple = ()
    global_sparsity: float | None = None
    linear_only: bool = False  # only nn.Linear layers (the plain W8A8 row beside SmoothQuant's, on its layers)

    @property
    def key(self) -> str:
        if self.global_sparsity is not None:
            return "magnitude_pruning (global)"
        return " + ".join(cfg.method for cfg in self.methods) or "fp32"


def _rows(group: int) -> list[Row]:
    """The rows of one model; ``group`` is the block size of the block-wise rows (RTN, GPTQ, AWQ)."""
    from rayzor.compression import (
        AWQ,
        GPTQ,
        ActivationQuantization,
        BinaryQuantization,
        ChannelPruning,
        HalfPrecision,
        HeadPruning,
        KMeansQuantization,
        LowRank,
        MagnitudePruning,
        RandomPruning,
        SmoothQuant,
        TernaryQuantization,
        Tucker2,
        UniformQuantization,
    )

    a8 = ActivationQuantization(8, symmetric=True)

    return [
        Row("fp32 (no compression)"),
        Row("magnitude pruning 50%", (MagnitudePruning(0.5),)),
        Row("magnitude pruning 80%", (MagnitudePruning(0.8),)),
        Row("global magnitude pruning 50%", global_sparsity=0.5),
        Row("global magnitude pruning 80%", global_sparsity=0.8),
        Row("random pruning 50%", (RandomPruning(0.5),)),
        Row("random pruning 80%", (RandomPruning(0.8),)),
        Row("channel pruning 25% (L1)", (ChannelPruning(0.25),)),
        Row("channel pruning 50% (L1)", (ChannelPruning(0.5),)),
        Row("head pruning 25%", (HeadPruning(0.25),)),
        Row("head pruning 50%", (HeadPruning(0.5),)),
        Row("uniform 8-bit", (UniformQuantization(8),)),
        Row("uniform 4-bit", (UniformQuantization(4),)),
        Row("uniform 3-bit asym. MSE clip", (UniformQuantization(3, symmetric=False, clipping="mse"),)),
        Row("uniform 2-bit asym. MSE clip", (UniformQuantization(2, symmetric=False, clipping="mse"),)),
        Row(f"uniform 4-bit g{group} (block-wise RTN)", (UniformQuantization(4, group_size=group),)),
        Row(f"uniform 3-bit g{group} (block-wise RTN)", (UniformQuantization(3, group_size=group),)),
        # symmetric, natural column order: the settings these rows were measured with (GPTQ's defaults since differ)
        Row(f"GPTQ 4-bit g{group}", (GPTQ(4, group_size=group, symmetric=True, act_order=False),)),
        Row(f"GPTQ 3-bit g{group}", (GPTQ(3, group_size=group, symmetric=True, act_order=False),)),
        Row(f"AWQ 4-bit g{group} asym. (Linear layers only)", (AWQ(4, group_size=group),)),
        Row(f"AWQ 3-bit g{group} asym. (Linear layers only)", (AWQ(3, group_size=group),)),
        Row("k-means 4-bit", (KMeansQuantization(4),)),
        Row("k-means 2-bit", (KMeansQuantization(2),)),
        Row("ternary (TWN, per channel)", (TernaryQuantization(),)),
        Row("ternary (TWN, per tensor)", (TernaryQuantization(granularity="per_tensor"),)),
        Row("binary (XNOR, per channel)", (BinaryQuantization(),)),
        Row("binary (per tensor)", (BinaryQuantization("per_tensor"),)),
        Row("fp16", (HalfPrecision("fp16"),)),
        Row("bf16", (HalfPrecision("bf16"),)),
        Row("low-rank SVD 50% rank", (LowRank(rank_ratio=0.5),)),
        Row("low-rank SVD 25% rank", (LowRank(rank_ratio=0.25),)),
        Row("Tucker-2 50% ranks", (Tucker2(rank_ratio=0.5),)),
        Row("Tucker-2 25% ranks", (Tucker2(rank_ratio=0.25),)),
        Row("activations 8-bit (min-max)", (ActivationQuantization(8),)),
        Row("activations 4-bit (MSE clip)", (ActivationQuantization(4, calibration="mse"),)),
        Row("W8A8: uniform 8-bit + activations 8-bit", (UniformQuantization(8), ActivationQuantization(8))),
        Row(
            "W8A8 sym. (Linear layers only): uniform 8-bit + act. 8-bit sym.",
            (UniformQuantization(8), a8),
            linear_only=True,
        ),
        Row("W8A8 SmoothQuant alpha 0.5 + act. 8-bit sym. (Linear layers only)", (SmoothQuant(8, alpha=0.5), a8)),
        Row("W8A8 SmoothQuant alpha 0.8 + act. 8-bit sym. (Linear layers only)", (SmoothQuant(8, alpha=0.8), a8)),
        Row("prune 80% + k-means 4-bit", (MagnitudePruning(0.8), KMeansQuantization(4))),
        Row("low-rank 50% + uniform 4-bit", (LowRank(rank_ratio=0.5), UniformQuantization(4))),
    ]


def _check_coverage(rows: list[Row]) -> None:
    """Stop unless every registered method has two rows of its own (two strengths).

    A row is a method's own when it is that method alone, or that weight method paired with one activation
    quantizer (W8A8: SmoothQuant only makes sense so, its smoothing is for the activation quantizer).
    """
    from rayzor.compression import list_methods

    own: dict[str, int] = {}
    for row in rows:
        weight = [cfg for cfg in row.methods if cfg.stage != "activation"]
        if len(row.methods) == 1 or (len(row.methods) == 2 and len(weight) == 1):
            key = row.methods[0].method if len(row.methods) == 1 else weight[0].method
            own[key] = own.get(key, 0) + 1
    missing = [m for m in list_methods() if own.get(m, 0) < 2]
    if missing:
        sys.exit(
            f"benchmarks/engine.py: registered method(s) {missing} lack two single-method rows "
            "(two strengths; alone or paired with an activation quantizer) in _rows(); add them so the engine "
            "table covers every method"
        )


@dataclass
class Setup:
    """What one model's rows need."""

    name: str
    model: Any
    arch: dict
    example_input: Any  # traced by structured pruning, counted by model_stats
    calibration: list  # batches calibrating activation quantization and the layer statistics of GPTQ / AWQ / SQ
    timing: dict[str, Any]  # latency inputs by batch-size label
    quality: Callable[[Any], dict[str, float]]
    check_input: Any  # the packed reload must reproduce the outputs on it exactly
    warmup: int
    repeats: int
    lzma: bool
    group: int  # block size of the block-wise rows (RTN, GPTQ, AWQ)
    facts: dict = field(default_factory=dict)
    stats: dict | None = None  # layer input statistics of the fp32 model, computed once on first use

    def layer_stats(self) -> dict:
        """``collect_layer_stats`` of every Conv/Linear layer over :attr:`calibration`, computed once and shared
        by every GPTQ / AWQ / SmoothQuant row (as a search shares them with every trial); the time it took goes in the facts."""
        if self.stats is None:
            from rayzor.compression import collect_layer_stats, compressible_layers

            layers = [
                name
                for name, module in compressible_layers(self.model).items()
                if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) and getattr(module, "groups", 1) == 1
            ]
            start = time.perf_counter()
            self.stats = collect_layer_stats(self.model, layers, self.calibration)
            self.facts["layer_stats_seconds"] = time.perf_counter() - start
        return self.stats


def _logits(model, x):
    with torch.inference_mode():
        out = model(x)
    return getattr(out, "logits", out)


def _digits(args) -> Setup:
    from rayzor.tasks import create_task

    task = create_task("digits")
    x_val = task.data["val"].tensors[0]
    calibration = [x for x, _ in task.calibration_batches()]  # the first 4 training batches of 64 images

    def quality(model):
        return {
            "test_accuracy": task.score(model, "test")["accuracy"],
            "val_accuracy": task.score(model, "val")["accuracy"],
        }

    return Setup(
        "digits",
        task.model,
        task.arch,
        x_val[:1],
        calibration,
        {"1": x_val[:1], "256": x_val[:256]},
        quality,
        x_val,
        warmup=2 if args.quick else 5,
        repeats=3 if args.quick else 30,
        lzma=True,
        group=DIGITS_GROUP,
        facts={
            "task": "digits",
            "quality": f"top-1 accuracy on the test split ({len(task.data['test'])} images)",
            "calibration": f"task.calibration_batches(): {sum(len(x) for x in calibration)} training images",
        },
    )


def _resnet(args) -> Setup:
    width_divisor = 4 if args.quick else 1
    model = resnet18(width_divisor)
    size = args.resnet_size
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(EVAL_SEED))
    calib = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(CALIB_SEED)).split(8)
    reference = _logits(model, images)
    top1 = reference.argmax(1)

    def quality(compressed):
        y = _logits(compressed, images)
        return {
            "rel_l2_error": float((y - reference).norm() / reference.norm()),
            "top1_agreement": float((y.argmax(1) == top1).float().mean()),
        }

    # The reload check runs 2 of the 8 images: exactness needs no more, and each forward costs ~50 ms here.
    arch = {"factory": "engine:resnet18", "kwargs": {"width_divisor": width_divisor}}
    return Setup(
        "resnet18",
        model,
        arch,
        images[:1],
        list(calib),
        {"1": images[:1]},
        quality,
        images[:2],
        warmup=1,
        repeats=2 if args.quick else 4,
        lzma=False,
        group=RESNET_GROUP,
        facts={
            "width_divisor": width_divisor,
            "input": [1, 3, size, size],
            "eval_batch": [8, 3, size, size],
            "fp32_top1_distinct_classes": len(set(top1.tolist())),
            "quality": "relative L2 error of the logits vs fp32, and top-1 agreement, on 8 random images",
        },
    )


_LAYER_FIELD = re.compile(r"plan\.layers\[(['\"])(.+?)\1\]")


def _plan(setup: Setup, row: Row) -> tuple[dict | None, dict[str, str], str | None]:
    """(layers -> methods, skipped layer -> reason, n/a reason) for ``row`` on ``setup.model``."""
    from rayzor.compression import CompressionPlan, ConfigError, compressible_layers, global_magnitude_plan

    if row.global_sparsity is not None:
        try:
            return dict(global_magnitude_plan(setup.model, row.global_sparsity).layers), {}, None
        except ConfigError as e:
            return None, {}, str(e)
    chosen, skipped = {}, {}
    for name, module in compressible_layers(setup.model).items():
        if not row.methods:
            break
        if row.linear_only and not isinstance(module, nn.Linear):
            skipped[name] = "this row takes Linear layers only (the layers SmoothQuant's rows quantize)"
            continue
        try:
            CompressionPlan({name: row.methods}).validate(setup.model)
            chosen[name] = row.methods
        except ConfigError as e:
            skipped[name] = str(e)
    if row.methods and not chosen:
        first = next(iter(skipped.values()))
        return None, skipped, f"no layer accepts it; it needs {first.split('; valid: ', 1)[-1]}"
    return chosen, skipped, None


def _compress(setup: Setup, chosen: dict, skipped: dict):
    """compress() on ``chosen``, dropping each layer that compress refuses (structured groups) with its reason."""
    from rayzor.compression import CompressionPlan, ConfigError, compress

    while True:
        try:
            plan = CompressionPlan(chosen)
            calibrated = any(cfg.calibrated for cfg in plan.by_stage("quantize").values())
            return compress(
                setup.model,
                plan,
                example_input=setup.example_input,
                calibration_data=setup.calibration,
                calibration_stats=setup.layer_stats() if calibrated else None,
            )
        except ConfigError as e:
            match = _LAYER_FIELD.match(e.field)
            if not match or match.group(2) not in chosen:
                raise
            skipped[match.group(2)] = str(e)
            del chosen[match.group(2)]
            if not chosen:
                return None


def _paired(fp32: Callable[[], float], other: Callable[[], float], rounds: int) -> tuple[float, float]:
    """(other ms, fp32 ms): medians over ``rounds`` alternating measurements, fp32 first in each round."""
    base, comp = [], []
    for _ in range(rounds):
        base.append(fp32())
        comp.append(other())
    return statistics.median(comp), statistics.median(base)


def _latency(setup: Setup, model, rounds: int) -> dict[str, dict[str, float]]:
    from rayzor.compression import measure_latency

    out = {}
    for batch, x in setup.timing.items():

        def timer(m, x=x):
            return lambda: measure_latency(m, x, warmup=setup.warmup, repeats=setup.repeats, threads=1)

        comp, base = _paired(timer(setup.model), timer(model), rounds)
        out[batch] = {"ms": comp, "fp32_ms": base, "vs_fp32": comp / base}
    return out


def _run_rows(setup: Setup, rows: list[Row], args, scratch: Path) -> dict:
    from rayzor.compression import compressible_layers, load_packed, model_stats, save_packed, state_dict_bytes

    dense_bytes = state_dict_bytes(setup.model)
    total_layers = len(compressible_layers(setup.model))
    _latency(setup, setup.model, 1)  # discarded: a process's first timings run slow (allocator, CPU clocks)
    results = []
    for row in rows:
        start = time.perf_counter()
        chosen, skipped, reason = _plan(setup, row)
        if not reason and any(cfg.calibrated for cfg in row.methods):
            setup.layer_stats()  # once per model, outside the row's compress time
        compress_start = time.perf_counter()
        out = None if reason else _compress(setup, chosen, skipped)
        compress_seconds = time.perf_counter() - compress_start
        if out is None:
            reason = reason or f"every layer refused it; last: {next(reversed(skipped.values()))}"
            results.append({"method": row.label, "key": row.key, "applicable": False, "reason": reason})
            print(f"[{setup.name}] {row.label:42s} n/a: {reason}", flush=True)
            continue
        path = scratch / f"{setup.name}.rzp"
        size = save_packed(out, path, arch=setup.arch)
        result = {
            "method": row.label,
            "key": row.key,
            "applicable": True,
            "plan": out.plan.to_dict()["layers"],
            "layers": f"{len(chosen)}/{total_layers}",
            "skipped": skipped,
            "size_bytes": size,
            "ratio": dense_bytes / size,
            "compress_seconds": compress_seconds,
        }
        if setup.lzma:
            size_lzma = save_packed(out, scratch / f"{setup.name}_lzma.rzp", arch=setup.arch, entropy="lzma")
            result.update(size_bytes_lzma=size_lzma, ratio_lzma=dense_bytes / size_lzma)
            path = scratch / f"{setup.name}_lzma.rzp"
        loaded, _ = load_packed(path)
        if not torch.equal(_logits(loaded, setup.check_input), _logits(out.model, setup.check_input)):
            raise SystemExit(f"[{setup.name}] {row.label}: the reloaded packed file gives different outputs")
        quality = setup.quality(out.model)
        result.update(quality)
        result.update(model_stats(out.model, setup.example_input, out.weights))
        result["latency"] = _latency(setup, out.model, args.rounds)
        results.append(result)
        quality = " ".join(f"{k} {v:.4f}" for k, v in quality.items())
        lat = " ".join(f"b{b} {v['vs_fp32']:.2f}x" for b, v in result["latency"].items())
        print(
            f"[{setup.name}] {row.label:42s} {size:9d} B {dense_bytes / size:5.1f}x  {quality}  latency {lat}"
            f"  ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    fp32 = {b: statistics.median(r["latency"][b]["fp32_ms"] for r in results if r["applicable"]) for b in setup.timing}
    return {
        **setup.facts,
        "fp32_state_dict_bytes": dense_bytes,
        "compressible_layers": total_layers,
        "fp32_latency_ms": fp32,
        "latency": {
            "threads": 1,
            "warmup": setup.warmup,
            "repeats": setup.repeats,
            "rounds": args.rounds,
            "statistic": "median",
        },
        "rows": results,
    }


#: Peers on the same model, measured elsewhere (not by this script): tool and version, scheme, validation cosine.
MINILM_PEERS = (
    ("Intel Neural Compressor 3.10", "RTN int4, asymmetric, g128", 0.958),
    ("torchao 0.18", "intx 4-bit weight-only, g128", 0.944),
    ("NNCF 3.4", "int4 asymmetric g128 with AWQ", 0.967),
    ("NNCF 3.4", "data-aware mixed int4 (80% of the weights int4)", 0.971),
)
#: The issue's target: MiniLM int4 g128 with GPTQ or AWQ at validation cosine >= this.
MINILM_TARGET = 0.975


def _minilm_rows(bits: tuple[int, ...]) -> list[tuple[str, tuple]]:
    """(label, methods per layer) of the MiniLM rows: W8A8 plain and with SmoothQuant (alpha 0.5, 0.8), then
    weight-only RTN (per channel; g128 sym. and asym.), GPTQ and AWQ g128, per width."""
    from rayzor.compression import AWQ, GPTQ, ActivationQuantization, SmoothQuant, UniformQuantization

    a8 = ActivationQuantization(8, symmetric=True)
    rows: list[tuple[str, tuple]] = [
        ("fp32 (no compression)", ()),
        ("W8A8: RTN 8-bit per channel sym. + act. 8-bit sym.", (UniformQuantization(8), a8)),
        ("W8A8: SmoothQuant alpha 0.5 + act. 8-bit sym.", (SmoothQuant(8, alpha=0.5), a8)),
        ("W8A8: SmoothQuant alpha 0.8 + act. 8-bit sym.", (SmoothQuant(8, alpha=0.8), a8)),
    ]
    for b in bits:
        rows += [
            (f"RTN {b}-bit per channel sym.", (UniformQuantization(b),)),
            (f"RTN {b}-bit g128 sym.", (UniformQuantization(b, group_size=128),)),
            (f"RTN {b}-bit g128 asym.", (UniformQuantization(b, symmetric=False, group_size=128),)),
            (f"GPTQ {b}-bit g128 sym.", (GPTQ(b, symmetric=True, act_order=False),)),
            (f"GPTQ {b}-bit g128 sym. act_order", (GPTQ(b, symmetric=True, act_order=True),)),
            (f"GPTQ {b}-bit g128 asym. act_order", (GPTQ(b, symmetric=False, act_order=True),)),
            (f"AWQ {b}-bit g128 asym.", (AWQ(b),)),
        ]
    return rows


def _minilm(args, scratch: Path) -> dict:
    """Weight-only int4 / int3 of every encoder Linear of all-MiniLM-L6-v2, RTN vs GPTQ vs AWQ, and W8A8 plain vs
    SmoothQuant on the same Linears (minilm extra)."""
    from rayzor.compression import (
        CompressionPlan,
        collect_layer_stats,
        compress,
        compressible_layers,
        load_packed,
        save_packed,
    )
    from rayzor.tasks import create_task

    start = time.perf_counter()
    task = create_task("minilm")  # defaults: 256 train / 128 val / 128 test texts, 32 tokens
    setup_seconds = time.perf_counter() - start
    layers = [name for name, m in compressible_layers(task.model).items() if isinstance(m, nn.Linear)]
    linear_bytes = 4 * sum(task.model.get_submodule(name).weight.numel() for name in layers)
    calibration = task.calibration_batches()
    start = time.perf_counter()
    stats = collect_layer_stats(task.model, layers, calibration)
    stats_seconds = time.perf_counter() - start
    print(f"[minilm] layer statistics of {len(layers)} Linear layers: {stats_seconds:.1f} s", flush=True)
    check = task.data["val"].tensors[0][:8]
    results, fp32_size = [], None
    for label, methods in _minilm_rows((4,) if args.quick else (4, 3)):
        row_start = time.perf_counter()
        plan = CompressionPlan({name: methods for name in layers} if methods else {})
        out = compress(task.model, plan, calibration_data=calibration, calibration_stats=stats)
        quantize_seconds = time.perf_counter() - row_start
        if out.stats_computed:
            raise SystemExit(f"[minilm] {label}: compress recomputed statistics of {list(out.stats_computed)}")
        path = scratch / "minilm.rzp"
        size = save_packed(out, path, arch=task.arch)
        fp32_size = fp32_size or size
        loaded, _ = load_packed(path)
        with torch.inference_mode():
            if not torch.equal(loaded(check), out.model(check)):
                raise SystemExit(f"[minilm] {label}: the reloaded packed file gives different outputs")
        val, test = task.score(out.model, "val"), task.score(out.model, "test")
        results.append(
            {
                "method": label,
                "key": " + ".join(cfg.method for cfg in methods) or "fp32",
                "config": [cfg.to_dict() for cfg in methods] or None,
                "bits": next((cfg.bits for cfg in methods if cfg.stage != "activation"), None),
                "activation_bits": next((cfg.bits for cfg in methods if cfg.stage == "activation"), None),
                "size_bytes": size,
                "linear_bytes": size - (fp32_size - linear_bytes),
                "val_cosine": val["cosine"],
                "val_recall_at_10": val["recall_at_10"],
                "test_cosine": test["cosine"],
                "quantize_seconds": quantize_seconds,
            }
        )
        print(
            f"[minilm] {label:42s} {size / 1e6:6.1f} MB  val cosine {val['cosine']:.4f}  "
            f"test cosine {test['cosine']:.4f}  quantize {quantize_seconds:.1f} s "
            f"({time.perf_counter() - row_start:.1f} s)",
            flush=True,
        )
    return {
        "task": "minilm",
        "task_options": "defaults: n_train 256, n_val 128, n_test 128, max_length 32",
        "task_seconds": setup_seconds,
        "layers": layers,
        "linear_weight_bytes_fp32": linear_bytes,
        "calibration": f"task.calibration_batches(): {len(calibration)} batches of {len(calibration[0][0])} texts",
        "layer_stats_seconds": stats_seconds,
        "target": MINILM_TARGET,
        "peers": [{"tool": t, "scheme": sch, "val_cosine": c} for t, sch, c in MINILM_PEERS],
        "rows": results,
    }


class _LogitsOnly(nn.Module):
    """A transformers classifier returning its logits tensor alone, for the ONNX export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _onnx_rows(setup: Setup, args, scratch: Path, dense_bytes: int) -> list[dict]:
    """fp32 ONNX and int8 ONNX (dynamic; static QDQ with calibration) of the fp32 model, run by onnxruntime."""
    from rayzor.compression import OrtModule, export_onnx, measure_latency, measure_onnx_latency, quantize_onnx_int8

    fp32_onnx = export_onnx(_LogitsOnly(setup.model).eval(), setup.example_input, scratch / "resnet18.onnx")
    variants = [
        ("ONNX fp32 (onnxruntime)", fp32_onnx),
        ("ONNX int8 dynamic (ConvInteger)", quantize_onnx_int8(fp32_onnx, scratch / "resnet18_dyn.onnx")),
        (
            "ONNX int8 static QDQ (calibrated)",
            quantize_onnx_int8(fp32_onnx, scratch / "resnet18_qdq.onnx", calibration_data=setup.calibration),
        ),
    ]
    rows = []
    for label, path in variants:
        start = time.perf_counter()
        size = path.stat().st_size
        row = {
            "method": label,
            "key": "onnx",
            "applicable": True,
            "size_bytes": size,
            "ratio": dense_bytes / size,
            **setup.quality(OrtModule(path, threads=1)),
            "latency": {},
        }
        for batch, x in setup.timing.items():
            comp, base = _paired(
                lambda x=x: measure_latency(setup.model, x, warmup=setup.warmup, repeats=setup.repeats, threads=1),
                lambda x=x, path=path: measure_onnx_latency(
                    path, x, threads=1, warmup=setup.warmup, repeats=setup.repeats
                ),
                args.rounds,
            )
            row["latency"][batch] = {"ms": comp, "fp32_ms": base, "vs_fp32": comp / base}
        rows.append(row)
        print(
            f"[{setup.name}] {label:42s} {size:9d} B {dense_bytes / size:5.1f}x  "
            f"rel_l2_error {row['rel_l2_error']:.4f}  latency b1 {row['latency']['1']['vs_fp32']:.2f}x  "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: ResNet-18 at 1/4 width and 64x64, few repeats, one round, MiniLM 4-bit rows only; "
        "writes engine_quick.json only",
    )
    parser.add_argument(
        "--resnet-size", type=int, default=None, help="ResNet-18 input height/width (default 224; 64 with --quick)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="alternating fp32/compressed latency rounds per row (default 3; 1 with --quick)",
    )
    args = parser.parse_args()
    args.resnet_size = args.resnet_size or (64 if args.quick else 224)
    args.rounds = args.rounds or (1 if args.quick else 3)

    torch.set_num_threads(1)  # see the module docstring: shared-machine MKL slowdown; latency is 1-thread anyway
    for group in (DIGITS_GROUP, RESNET_GROUP):
        _check_coverage(_rows(group))
    scratch = Path(tempfile.mkdtemp(prefix="rayzor-engine-"))
    started = time.perf_counter()
    models = {}
    for build in (_digits, _resnet):
        setup = build(args)
        models[setup.name] = _run_rows(setup, _rows(setup.group), args, scratch)
        if setup.name == "resnet18":
            models[setup.name]["onnx_rows"] = _onnx_rows(
                setup, args, scratch, models[setup.name]["fp32_state_dict_bytes"]
            )
    models["minilm"] = _minilm(args, scratch)
    report = {
        "command": "python benchmarks/engine.py" + "".join(f" {a}" for a in sys.argv[1:]),
        **machine(),
        "quick": args.quick,
        "torch_threads": 1,
        "wall_seconds": time.perf_counter() - started,
        "models": models,
    }
    section = _section(report)
    if args.quick:
        write_result("engine_quick", report)
        print(section)
    else:
        write_result("engine", report)
        replace_section("engine", section)
    print(f"done in {report['wall_seconds']:.0f} s", flush=True)


def _na(row: dict, columns: int) -> str:
    return f"| {row['method']} | n/a: {row['reason']} |" + " |" * (columns - 2)


def _section(report: dict) -> str:
    digits, resnet, minilm = (report["models"][k] for k in ("digits", "resnet18", "minilm"))
    d_lat, r_lat = digits["fp32_latency_ms"], resnet["fp32_latency_ms"]
    size = resnet["input"][2]
    lines = [
        "## engine: every method on the digits CNN and ResNet-18; RTN, GPTQ, AWQ and W8A8 (plain, SmoothQuant) on MiniLM",
        "",
        f"Command: `{report['command']}` ({describe_machine(report)}); whole run {report['wall_seconds']:.0f} s, "
        "1 torch thread.",
        "",
        "Every registered method (`rayzor.compression.list_methods()`) at two strengths, each applied to every "
        "Conv/Linear layer that accepts it (the *layers* column; e.g. low-rank only where it saves parameters, "
        "channel pruning not on the classifier whose outputs are the model's), no fine-tuning. Size = packed "
        "file length (`save_packed`; every file is reloaded and must reproduce the outputs exactly), ratio = fp32 "
        "safetensors state dict / size. Latency = median single-thread forward of the compressed model over "
        "the median of the fp32 model, measured in alternating rounds right beside it "
        f"({digits['latency']['rounds']} rounds x {digits['latency']['repeats']} forwards for digits, "
        f"x {resnet['latency']['repeats']} for ResNet-18). Structured rows (channel pruning, low-rank, "
        "Tucker-2) run the physically smaller model; quantized, k-means, binary/ternary, half-precision and "
        "pruned models still run fp32 kernels on materialised weights, so their latency stays at fp32's "
        "(ratios within about +-0.1 of 1.0 are noise) and their gain is size (and BitOps on hardware with "
        "low-bit kernels); the int8 kernels are onnxruntime's (ResNet ONNX table). Block-wise rows (RTN, GPTQ, "
        f"AWQ) use blocks of {DIGITS_GROUP} inputs on digits (its layers have 9 to 512 inputs per output; conv1's "
        f"9 make one short block) and {RESNET_GROUP} on ResNet-18; GPTQ and AWQ compute their layer input "
        "statistics once per model (`collect_layer_stats`; digits: the task's `calibration_batches()`, "
        f"{digits['layer_stats_seconds']:.1f} s; ResNet-18: the 16 calibration images below, "
        f"{resnet['layer_stats_seconds']:.1f} s) and each row's compress reuses them. AWQ accepts Linear layers "
        "only (its per-input scales cannot vary within a convolution's input channel), so on these CNNs it "
        "quantizes the Linear layers (digits fc1, fc2; ResNet-18 its classifier) and leaves every conv fp32: "
        "its rows are not comparable with the others. SmoothQuant (Linear layers only, too) is a W8A8 method: its two "
        "rows (alpha 0.5 and 0.8) pair it with `ActivationQuantization(8, symmetric=True)` on the same layers "
        "(digits fc1, fc2; ResNet-18 only its classifier), beside a plain W8A8 row (uniform 8-bit + the same "
        "activation quantizer) restricted to those Linear layers; the all-layer W8A8 row above them uses "
        "asymmetric activation codes.",
        "",
        f"### digits CNN (test accuracy; fp32 state dict {digits['fp32_state_dict_bytes']} B, fp32 latency "
        f"{d_lat['1']:.3f} ms at batch 1, {d_lat['256']:.2f} ms at batch 256)",
        "",
        "| method | layers | size (B) | ratio | ratio + lzma | test acc | params | MACs | GBitOps | "
        "latency b1 vs fp32 | latency b256 vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in digits["rows"]:
        if not r["applicable"]:
            lines.append(_na(r, 11))
            continue
        lines.append(
            f"| {r['method']} | {r['layers']} | {r['size_bytes']} | {r['ratio']:.1f}x | {r['ratio_lzma']:.1f}x | "
            f"{r['test_accuracy']:.4f} | {r['params']:.0f} | {r['macs']:.0f} | {r['bitops'] / 1e9:.3f} | "
            f"{r['latency']['1']['vs_fp32']:.2f} | {r['latency']['256']['vs_fp32']:.2f} |"
        )
    lines += [
        "",
        f"### ResNet-18 (transformers, random init seed {RESNET_SEED}; input 1x3x{size}x{size}; fp32 state dict "
        f"{resnet['fp32_state_dict_bytes']} B, fp32 latency {r_lat['1']:.1f} ms)",
        "",
        f"Output error = relative L2 error of the logits against fp32 on a fixed batch of 8 random "
        f"{size}x{size} images (seed {EVAL_SEED}); agreement = share of them whose top-1 class matches fp32's "
        f"(the fp32 model's top-1 takes {resnet['fp32_top1_distinct_classes']} distinct value(s) over the 8, "
        "so with few distinct classes agreement is nearly all-or-nothing). "
        "Random weights: these measure fidelity to the fp32 model, not accuracy. Activation quantization, and "
        f"GPTQ's and AWQ's layer statistics, are calibrated on 16 other random images (seed {CALIB_SEED}, two "
        "batches of 8, distinct from the evaluation batch).",
        "",
        "| method | layers | size (B) | ratio | output rel. L2 error | top-1 agreement | params (M) | GMACs | "
        "latency b1 vs fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in resnet["rows"]:
        if not r["applicable"]:
            lines.append(_na(r, 9))
            continue
        lines.append(
            f"| {r['method']} | {r['layers']} | {r['size_bytes']} | {r['ratio']:.1f}x | {r['rel_l2_error']:.4f} | "
            f"{r['top1_agreement']:.3f} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e9:.3f} | "
            f"{r['latency']['1']['vs_fp32']:.2f} |"
        )
    lines += [
        "",
        "ResNet-18 exported to ONNX (`export_onnx`) and run by onnxruntime (1 thread); int8 by "
        "`quantize_onnx_int8` (dynamic: int8 weights, activations quantized per call; static: QDQ with "
        "activation ranges calibrated on the same 16 images). Size = .onnx file length; latency against the "
        "torch fp32 model, alternating rounds as above.",
        "",
        "| model | size (B) | ratio | output rel. L2 error | top-1 agreement | latency (ms) | "
        "latency b1 vs torch fp32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in resnet["onnx_rows"]:
        lat = r["latency"]["1"]
        lines.append(
            f"| {r['method']} | {r['size_bytes']} | {r['ratio']:.1f}x | {r['rel_l2_error']:.4f} | "
            f"{r['top1_agreement']:.3f} | {lat['ms']:.1f} | {lat['vs_fp32']:.2f} |"
        )
    return "\n".join(lines + _minilm_section(minilm))


def _minilm_section(minilm: dict) -> list[str]:
    rows = minilm["rows"]
    fp32 = rows[0]
    calibrated = [r for r in rows if r["bits"] == 4 and r["key"] in ("gptq", "awq")]
    best = max(calibrated, key=lambda r: r["val_cosine"])
    reached = [r["method"] for r in calibrated if r["val_cosine"] >= minilm["target"]]
    lines = [
        "",
        f"### all-MiniLM-L6-v2: W8A8 and weight-only int4 / int3 of the {len(minilm['layers'])} encoder Linear layers",
        "",
        "Task `minilm` (task defaults: 256 train / 128 validation / 128 test texts of 32 tokens): cosine = mean "
        "cosine of the sentence embeddings to the fp32 model's (`task.score(model)['cosine']`), recall@10 = "
        "share of each validation text's 10 fp32 nearest neighbours kept. Quantized: every Linear of the 6 "
        "encoder blocks (query, key, value, attention output, FFN in, FFN out); the word / position / type "
        "embeddings and LayerNorms stay fp32 (the task's encoder has no pooler: it mean-pools). Size = packed "
        "file (`save_packed`, reloaded and checked bit-exact), of which the fp32 embeddings, biases and "
        f"LayerNorms ({(fp32['size_bytes'] - fp32['linear_bytes']) / 1e6:.1f} MB) are in every row; *Linear weights* = "
        "size minus the fp32 file's other tensors (the quantized matrices with their scales, zero points, "
        f"AWQ's and SmoothQuant's input scales and the activation quantizers' ranges; fp32 {minilm['linear_weight_bytes_fp32'] / 1e6:.1f} MB). Calibration: "
        f"{minilm['calibration']}; their layer statistics (`collect_layer_stats`) took "
        f"{minilm['layer_stats_seconds']:.1f} s, once, and every row reuses them (`calibration_stats=`). "
        "Quantize time = the `compress` call, informative only (1 thread, shared 2-core machine). "
        "Symmetric codes (RTN and GPTQ) use 2^bits - 1 levels (-7..7 at 4 bits), asymmetric ones 2^bits. "
        "W8A8 rows (*act. bits* 8): int8 symmetric per-output-channel weights and, on the input of each of the "
        "same Linears, `ActivationQuantization(8, symmetric=True)` (per tensor, min-max, calibrated on the same "
        "batches), fake-quantized; plain (RTN) vs SmoothQuant (Xiao et al. 2022: per-input scales "
        "`s = max|X|^alpha / max|W|^(1-alpha)` from the layer statistics' input peaks, the weight stored as "
        "`Q(W s)`, the activation quantizer sees `x / s`) at alpha 0.5 (the paper's default) and 0.8.",
        "",
        "| method | bits | act. bits | val cosine | recall@10 | test cosine | size (MB) | Linear weights (MB) | quantize (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['bits'] or 32} | {r.get('activation_bits') or '-'} | {r['val_cosine']:.4f} | {r['val_recall_at_10']:.3f} | "
            f"{r['test_cosine']:.4f} | {r['size_bytes'] / 1e6:.1f} | {r['linear_bytes'] / 1e6:.2f} | "
            f"{r['quantize_seconds']:.1f} |"
        )
    verdict = (
        f"reached by {', '.join(reached)}"
        if reached
        else f"not reached; the best is {best['method']}, {best['val_cosine']:.4f}"
    )
    lines += [
        "",
        f"Target (int4 g128 with GPTQ or AWQ, validation cosine >= {minilm['target']}): {verdict.rstrip('.')}.",
        "",
        "Peers on the same model, int4, measured elsewhere (not by this script; same kind of fidelity-to-fp32 "
        "cosine, not necessarily the same texts):",
        "",
        "| tool | scheme | cosine |",
        "|---|---|---:|",
    ]
    lines += [f"| {p['tool']} | {p['scheme']} | {p['val_cosine']:.3f} |" for p in minilm["peers"]]
    return lines


if __name__ == "__main__":
    main()
