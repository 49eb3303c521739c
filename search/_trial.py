"""What one trial does, inside a Ray worker: compress, score, pack, measure."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from compression import compress, measure_latency, save_packed, state_dict_bytes
from compression.tasks import Task
from spaces import CompressionSpace

__all__ = ["PACKED_NAME", "evaluate_plan", "run_trial"]

PACKED_NAME = "packed.safetensors"


def evaluate_plan(task: Task, space: CompressionSpace, params: dict[str, Any], out_dir: Path) -> dict[str, float]:
    """Compress the task's model with the plan ``params`` decode to, and measure it.

    The packed artifact is written to ``out_dir``; ``size_bytes`` is its length.
    """
    started = time.perf_counter()
    plan = space.decode(params)
    loader = None
    if plan.finetune.epochs > 0:
        loader = DataLoader(
            task.data["train"],
            batch_size=plan.finetune.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(plan.finetune.seed),
        )
    compressed = compress(task.model, plan, train_loader=loader, loss_fn=task.loss_fn)
    metrics = task.score(compressed.model, "val")
    size = save_packed(compressed, out_dir / PACKED_NAME, arch=task.arch, metadata={"task": task.name})
    dense = state_dict_bytes(task.model)
    zeros = sum(int((w.dense() == 0).sum()) for w in compressed.weights.values())
    total = sum(w.dense().numel() for w in compressed.weights.values())
    metrics.update(
        size_bytes=float(size),
        compression_ratio=dense / size,
        latency_ms=measure_latency(compressed.model, task.example_input),
        weight_sparsity=zeros / max(total, 1),
        accuracy_drop=task.baseline["val"][task.metric] - metrics[task.metric],
    )
    metrics["trial_seconds"] = time.perf_counter() - started
    return metrics


def run_trial(config: dict[str, Any], *, task: Task, space: CompressionSpace) -> None:
    """Ray Tune function trainable: one plan, one report with its packed artifact.

    ``task`` arrives through ``tune.with_parameters``: it sits in the object
    store once and every trial reads it from there.
    """
    from ray import tune

    # Two trials share two cores here: more threads per trial only thrash.
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="rayzor-trial-") as tmp:
        metrics = evaluate_plan(task, space, config, Path(tmp))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
