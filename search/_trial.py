"""What one trial does, inside a Ray worker: compress, score, pack, measure."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from compression import compress, measure_latency, model_stats, save_packed, state_dict_bytes
from compression.tasks import Task
from spaces import CompressionSpace

__all__ = ["PACKED_NAME", "evaluate_plan", "run_trial", "trial_device"]

PACKED_NAME = "packed.safetensors"


def trial_device() -> str:
    """``cuda`` when Ray gave this trial a GPU and torch can use it, else ``cpu``."""
    import ray

    if torch.cuda.is_available() and ray.is_initialized() and ray.get_gpu_ids():
        # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU: it is device 0 here.
        return "cuda"
    return "cpu"


def evaluate_plan(task: Task, space: CompressionSpace, params: dict[str, Any], out_dir: Path,
                  device: str = "cpu", entropy: str | None = None) -> dict[str, float]:
    """Compress the task's model with the plan ``params`` decode to, and measure it.

    The packed artifact is written to ``out_dir``; ``size_bytes`` is its length.
    ``device`` is where the fine-tune runs; scoring and latency stay on CPU,
    so figures are comparable whichever node a trial lands on.
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
    compressed = compress(task.model, plan, train_loader=loader, loss_fn=task.loss_fn, device=device)
    metrics = task.score(compressed.model, "val")
    size = save_packed(compressed, out_dir / PACKED_NAME, arch=task.arch, metadata={"task": task.name}, entropy=entropy)
    dense = state_dict_bytes(task.model)
    # The model already holds every dense() weight: count there, not by
    # materialising each weight again.
    modules = dict(compressed.model.named_modules())
    weights = [modules[name].weight for name in compressed.weights if name in modules]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    metrics.update(
        size_bytes=float(size),
        compression_ratio=dense / size,
        latency_ms=measure_latency(compressed.model, task.example_input),
        weight_sparsity=zeros / max(total, 1),
        quality_drop=task.baseline["val"][task.metric] - metrics[task.metric],
    )
    # params, nonzero_params, flops, macs, bitops of one forward of the example input
    metrics.update(model_stats(compressed.model, task.example_input, compressed.weights))
    metrics["trial_seconds"] = time.perf_counter() - started
    return metrics


def run_trial(config: dict[str, Any], *, task: Task, space: CompressionSpace, entropy: str | None = None) -> None:
    """Ray Tune function trainable: one plan, one report with its packed artifact.

    ``task`` arrives through ``tune.with_parameters``: it sits in the object
    store once and every trial reads it from there.
    """
    import ray
    from ray import tune

    # Two trials share two cores here: more threads per trial only thrash.
    torch.set_num_threads(1)
    device = trial_device()
    with tempfile.TemporaryDirectory(prefix="rayzor-trial-") as tmp:
        metrics: dict[str, Any] = evaluate_plan(task, space, config, Path(tmp), device=device, entropy=entropy)
        # Where it ran: logged as tags of the trial's MLflow run.
        metrics.update(node_id=ray.get_runtime_context().get_node_id(), device=device)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
