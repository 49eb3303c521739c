"""Per-layer sensitivity: the metric drop when only one layer (or tied group) is compressed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from optuna.distributions import CategoricalDistribution, FloatDistribution

from rayzor.compression import CompressionPlan, FinetuneConfig, compress
from rayzor.errors import RayzorError
from rayzor.spaces._space import CompressionSpace

if TYPE_CHECKING:
    from rayzor.tasks import Task

__all__ = ["SensitivityRow", "sensitivity", "sensitivity_points"]

#: Sparsity levels probed by default (clipped to each unit's range).
DEFAULT_SPARSITIES: tuple[float, ...] = (0.25, 0.5, 0.75, 0.9)
#: Tolerated drops of the warm-start plans built from a sensitivity table, tightest first.
DEFAULT_TOLERANCES: tuple[float, ...] = (0.005, 0.01, 0.02)


@dataclass(frozen=True)
class SensitivityRow:
    """One probe: ``unit`` (a layer or a tied group) alone at ``dimension = value``."""

    unit: str
    dimension: str
    value: float
    metric: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _levels(space: CompressionSpace, sparsities: Sequence[float]) -> dict[str, list[tuple[str, float]]]:
    """Per unit, the levels probed: of its searched sparsity, and of its searched bits under uniform quantization."""
    out: dict[str, list[tuple[str, float]]] = {}
    for u in space.units:
        probes: list[tuple[str, float]] = []
        for d in u.dims:
            if d.fixed:
                continue
            dist = d.distribution
            if d.name == "sparsity" and isinstance(dist, FloatDistribution):
                low, high = dist.low, dist.high
                probes += [("sparsity", s) for s in sparsities if low < s <= high]
            elif (
                d.name == "bits"
                and isinstance(dist, CategoricalDistribution)
                and d.active({"quant": "uniform_quantization"})
            ):
                bits = cast("Sequence[int]", dist.choices)  # a bits dimension chooses among bit-widths
                probes += [("bits", b) for b in sorted(bits, reverse=True) if b != 32]
        out[u.prefix] = probes
    return out


def _probe(task: Task, layers: Sequence[str], dimension: str, value: float) -> float:
    """The task's metric with only ``layers`` compressed, at one level, no fine-tuning."""
    flat = {"sparsity": float(value)} if dimension == "sparsity" else {"bits": int(value)}
    plan = CompressionPlan.from_settings({layer: flat for layer in layers}, finetune=FinetuneConfig(epochs=0))
    return task.score(compress(task.model, plan).model, "val")[task.metric]


def sensitivity(
    task: Task, space: CompressionSpace, *, sparsities: Sequence[float] = DEFAULT_SPARSITIES, parallel: bool = False
) -> list[SensitivityRow]:
    """Validation-metric drop of each searched unit compressed alone, at each level.

    Every probe compresses one unit (a layer, or all layers of a tied group)
    with magnitude pruning at one sparsity, or uniform quantization at one
    bit-width, and leaves the rest in fp32; no fine-tuning, so the drop is an
    upper bound of what a trial sees. Cost: one compress + one validation
    pass per probe (units x levels).

    Args:
        task: The task (its fp32 model is never modified).
        space: Its units and their ranges say what is probed.
        sparsities: Sparsity levels, each kept where it lies in a unit's range.
        parallel: Run each probe as a Ray task (``num_cpus=1``; the task is put
            in the object store once) on the Ray the caller started or joined;
            else one after the other in this process. Same rows either way.

    Raises:
        RayzorError: ``parallel`` without a running Ray (no silent fallback:
            a cluster user would otherwise wait on one core of the driver).
    """
    base = task.baseline["val"][task.metric] if task.baseline else task.score(task.model, "val")[task.metric]
    units = {u.prefix: u for u in space.units}
    probes = [
        (prefix, dimension, value)
        for prefix, levels in _levels(space, sparsities).items()
        for dimension, value in levels
    ]
    if parallel:
        import ray

        if not ray.is_initialized():
            raise RayzorError(
                "sensitivity(parallel=True) needs a running Ray: call ray.init() (or join a cluster) "
                "first, or pass parallel=False to probe in this process"
            )
        remote = ray.remote(num_cpus=1)(_probe)
        task_ref = ray.put(task)  # each probe gets it resolved from the object store
        metrics = ray.get([remote.remote(task_ref, units[p].layers, d, v) for p, d, v in probes])
    else:
        metrics = [_probe(task, units[p].layers, d, v) for p, d, v in probes]
    return [SensitivityRow(p, d, v, float(m), base - float(m)) for (p, d, v), m in zip(probes, metrics)]


def sensitivity_points(
    space: CompressionSpace, rows: Sequence[SensitivityRow], tolerances: Sequence[float] = DEFAULT_TOLERANCES
) -> list[dict[str, Any]]:
    """Warm-start params: per tolerance, each unit at its most aggressive level within it.

    Per unit, the highest probed sparsity and the fewest probed bits whose
    drop alone is at most the tolerance (else the unit's mildest setting).
    Drops add up across units, so these are starting points for the
    sampler, not guarantees. Duplicates are dropped.
    """
    by_unit: dict[str, list[SensitivityRow]] = {}
    for row in rows:
        by_unit.setdefault(row.unit, []).append(row)
    points: list[dict[str, Any]] = []
    for tol in tolerances:
        params = space.uniform_params(32)  # every unit at its mildest: lowest sparsity, widest bits
        for u in space.units:
            probes = by_unit.get(u.prefix, [])
            ok_sparsity = [r.value for r in probes if r.dimension == "sparsity" and r.drop <= tol]
            ok_bits = [r.value for r in probes if r.dimension == "bits" and r.drop <= tol]
            if f"{u.prefix}.sparsity" in params:
                params[f"{u.prefix}.sparsity"] = max(ok_sparsity, default=u.sparsity[0])
            if (
                f"{u.prefix}.bits" in params
                and params.get(f"{u.prefix}.quant", "uniform_quantization") == "uniform_quantization"
            ):
                # fewest bits within tolerance; else the widest (fp32 when the unit may keep it)
                params[f"{u.prefix}.bits"] = int(min(ok_bits, default=max(u.bits)))
        if params not in points:
            points.append(params)
    return points
