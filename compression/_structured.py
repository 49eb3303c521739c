"""Structured pruning (the ``structure`` stage): remove whole output channels or attention heads.

Unlike masks, removing a channel changes shapes, so every layer coupled to
it must change too: the BatchNorm after a conv, the next layer's inputs,
every other conv feeding the same residual addition, the slices of a
concatenation. torch-pruning's DependencyGraph (Fang et al. 2023, "DepGraph:
Towards Any Structural Pruning", https://arxiv.org/abs/2301.12900) traces one
forward pass of an example input and returns that coupled *group* for a
layer's output channels; the whole group is scored and pruned at once.

What was removed is recorded per pruned layer (kept output channels plus the
exact per-module operations, see :func:`replay_structure`), so a freshly
built architecture is cut to the same skeleton without tracing again: packed
files load without an example input.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch_pruning as tp
from torch import Tensor, nn

from rayzor.compression._registry import MethodConfig, check_int, check_real, get_handler, register_method
from rayzor.errors import ConfigError

__all__ = [
    "ChannelPruning",
    "HeadPruning",
    "IMPORTANCES",
    "Importance",
    "StructureContext",
    "prune_structure",
    "replay_structure",
    "kept_channels",
]

#: Calibration batches the Taylor criterion accumulates gradients over: its
#: ranking stabilises after a few batches (Molchanov et al. 2019), and the
#: loader may be a whole training split.
TAYLOR_BATCHES = 8

_CHANNEL_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


# -- importance criteria -----------------------------------------------------------


class Importance:
    """Scores every output channel of a DepGraph group (higher = keep).

    Subclasses are small callables: ``criterion(group, layer) -> Tensor`` of
    one score per channel of the group's root, in channel order.
    ``needs_gradients`` asks the engine to accumulate loss gradients on the
    model first.
    """

    needs_gradients: ClassVar[bool] = False

    def __call__(self, group: Any, layer: str) -> Tensor:
        raise NotImplementedError


class _Magnitude(Importance):
    """Group Lp norm: every coupled weight slice of a channel counts (DepGraph's group importance;
    with p=1 on a lone conv, the L1 filter norm of Li et al. 2017, https://arxiv.org/abs/1608.08710)."""

    def __init__(self, p: int) -> None:
        # No normaliser: the ranking inside one group is all that is used.
        self._score = tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)

    def __call__(self, group: Any, layer: str) -> Tensor:
        return self._score(group)


class _Taylor(Importance):
    """First-order Taylor estimate |w * dL/dw| of the loss change when a channel goes
    (Molchanov et al. 2019, https://arxiv.org/abs/1906.10771), summed over the group."""

    needs_gradients = True

    def __init__(self) -> None:
        self._score = tp.importance.GroupTaylorImportance(group_reduction="mean", normalizer=None)

    def __call__(self, group: Any, layer: str) -> Tensor:
        return self._score(group)


class _Random(Importance):
    """Uniform random scores, the baseline every criterion should beat; seeded by the layer name
    so a plan prunes the same channels every time."""

    def __call__(self, group: Any, layer: str) -> Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(layer.encode()))
        return torch.rand(len(group[0].idxs), generator=generator)


#: Importance criteria by name: a factory of :class:`Importance` each.
IMPORTANCES: dict[str, Callable[[], Importance]] = {
    "l1": lambda: _Magnitude(1),
    "l2": lambda: _Magnitude(2),
    "taylor": _Taylor,
    "random": _Random,
}


def _check_importance(method: str, value: Any) -> None:
    if value not in IMPORTANCES:
        raise ConfigError(f"{method}.importance", value, list(IMPORTANCES))


# -- method configs ------------------------------------------------------------------


@dataclass(frozen=True)
class ChannelPruning(MethodConfig):
    """Remove the least important output channels of a Conv (filters) or Linear (neurons).

    The layer's DepGraph group (Fang et al. 2023,
    https://arxiv.org/abs/2301.12900) is pruned as one: its BatchNorm, the
    inputs of the layers it feeds, and every layer tied to it by a residual
    addition or a concatenation lose the same channels, so the model stays
    valid and really gets smaller and faster (filter pruning, Li et al. 2017,
    https://arxiv.org/abs/1608.08710). Channels are ranked over the whole
    group by ``importance``; ties go to the lower index. Two planned layers
    in one group are pruned once and must carry the same config.

    ``round(ratio * channels)`` channels are removed, then the kept count is
    rounded to the nearest multiple of ``round_to`` (SIMD-friendly widths);
    at least one channel (at least ``round_to``) is kept. Needs
    ``compress(..., example_input=...)``; ``"taylor"`` also needs
    ``train_loader`` and ``loss_fn`` (its calibration batches).

    Args:
        ratio: Fraction of output channels to remove, ``0 <= ratio < 1``.
        importance: ``"l1"`` / ``"l2"`` (group weight norm), ``"taylor"``
            (|w * grad|, Molchanov et al. 2019,
            https://arxiv.org/abs/1906.10771) or ``"random"``.
        round_to: Kept channels are a multiple of this, >= 1.
    """

    method: ClassVar[str] = "channel_pruning"
    stage: ClassVar[str] = "structure"

    ratio: float
    importance: str = "l1"
    round_to: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", check_real(f"{self.method}.ratio", self.ratio, 0.0, 1.0, hi_open=True))
        _check_importance(self.method, self.importance)
        object.__setattr__(self, "round_to", check_int(f"{self.method}.round_to", self.round_to, 1))

    def validate(self, layer: str, module: nn.Module) -> None:
        where = f"plan.layers[{layer!r}].{self.method}"
        if not isinstance(module, _CHANNEL_TYPES) or getattr(module, "groups", 1) != 1:
            raise ConfigError(
                where,
                type(module).__name__,
                "a Linear, Conv1d or Conv2d with groups=1 (Embedding rows are not channels)",
            )
        if not layer:
            raise ConfigError(where, layer, "a layer inside the model, not the root")

    @staticmethod
    def replay(model: nn.Module, spec: Mapping[str, Any]) -> None:
        """Cut ``model`` (a fresh architecture) as ``spec`` recorded (used by :func:`compression.apply_structure`)."""
        replay_structure(model, spec)


@dataclass(frozen=True)
class HeadPruning(MethodConfig):
    """Remove whole attention heads of a BERT-style self-attention.

    The plan names the attention's ``query`` Linear (e.g.
    ``encoder.layer.0.attention.self.query``), whose parent holds
    ``num_attention_heads`` / ``attention_head_size`` and ``query``, ``key``,
    ``value`` Linears (transformers' BertSelfAttention and its relatives).
    The query's DepGraph group couples the query, key and value outputs with
    the output projection's inputs; each head's score is the mean of its
    channels' group importance, and the ``round(ratio * heads)`` lowest
    heads go (at least one head is kept), as in Michel et al. 2019, "Are
    Sixteen Heads Really Better than One?", https://arxiv.org/abs/1905.10650.
    The head size is unchanged, so attention scaling is too.

    Args:
        ratio: Fraction of heads to remove, ``0 <= ratio < 1``.
        importance: As for :class:`ChannelPruning`.
    """

    method: ClassVar[str] = "head_pruning"
    stage: ClassVar[str] = "structure"

    ratio: float
    importance: str = "l1"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ratio", check_real(f"{self.method}.ratio", self.ratio, 0.0, 1.0, hi_open=True))
        _check_importance(self.method, self.importance)

    def validate(self, layer: str, module: nn.Module) -> None:
        if not isinstance(module, nn.Linear) or layer.rpartition(".")[2] != "query":
            raise ConfigError(
                f"plan.layers[{layer!r}].{self.method}",
                layer,
                "the 'query' Linear of a BERT-style self-attention (e.g. 'encoder.layer.0.attention.self.query')",
            )

    @staticmethod
    def replay(model: nn.Module, spec: Mapping[str, Any]) -> None:
        """Cut ``model`` (a fresh architecture) as ``spec`` recorded (used by :func:`compression.apply_structure`)."""
        replay_structure(model, spec)


def kept_channels(channels: int, config: ChannelPruning) -> int:
    """Output channels ``config`` keeps of ``channels``."""
    keep = channels - round(config.ratio * channels)
    keep = math.floor(keep / config.round_to + 0.5) * config.round_to
    return max(1, min(channels, max(config.round_to, keep)))


# -- the stage -----------------------------------------------------------------------


@dataclass
class StructureContext:
    """What a structure-stage handler works on.

    Attributes:
        model: The model being pruned, in place.
        graph: Its torch-pruning DependencyGraph (kept valid across prunings).
        names: Module -> qualified name.
        outputs: Autograd nodes that produced the model's output tensors.
    """

    model: nn.Module
    graph: Any
    names: dict[nn.Module, str]
    outputs: set[Any] = field(default_factory=set)


def _forward(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, (tuple, list)):
        return model(*example_input)
    return model(example_input)


def _check_example_input(example_input: Any) -> Any:
    """Return the example input on CPU, or raise naming ``example_input``."""
    valid = "a tensor, a tuple of tensors or a dict of tensors (one batch, as the model takes it)"
    if isinstance(example_input, Tensor):
        return example_input.cpu()
    if (
        isinstance(example_input, Mapping)
        and example_input
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in example_input.items())
    ):
        return {k: v.cpu() for k, v in example_input.items()}
    if isinstance(example_input, (tuple, list)) and example_input and all(isinstance(v, Tensor) for v in example_input):
        return tuple(v.cpu() for v in example_input)
    raise ConfigError("example_input", example_input, valid)


def _attention_unit(module: nn.Module) -> bool:
    """A BERT-style self-attention: head counts plus query / key / value Linears."""
    return (
        isinstance(getattr(module, "num_attention_heads", None), int)
        and isinstance(getattr(module, "attention_head_size", None), int)
        and all(isinstance(getattr(module, p, None), nn.Linear) for p in ("query", "key", "value"))
    )


def _is_out(ctx: StructureContext, dep: Any) -> bool:
    return ctx.graph.is_out_channel_pruning_fn(dep.handler)


def _full_group(ctx: StructureContext, module: nn.Module) -> Any:
    pruner = ctx.graph.get_pruner_of_module(module)
    return ctx.graph.get_pruning_group(module, pruner.prune_out_channels, list(range(pruner.get_out_channels(module))))


def _check_group(ctx: StructureContext, layer: str, config: MethodConfig, group: Any) -> set[nn.Module]:
    """Refuse a group this method cannot prune safely; return the modules whose outputs it prunes."""
    where = f"plan.layers[{layer!r}].{config.method}"
    qkv = {getattr(m, p): n for m, n in ctx.names.items() if _attention_unit(m) for p in ("query", "key", "value")}
    members = set()
    for dep, _ in group:
        target = dep.target.module
        # DepGraph adds an output node only after an op; a Linear / LayerNorm producing the output shows by its grad_fn.
        if dep.target.type == tp.ops.OPTYPE.OUTPUT or (_is_out(ctx, dep) and dep.target.grad_fn in ctx.outputs):
            raise ConfigError(
                where,
                layer,
                "a layer whose output channels do not reach the model's output "
                "(removing them would change the output's shape)",
            )
        if isinstance(target, nn.MultiheadAttention):
            raise ConfigError(
                where,
                layer,
                f"a layer not coupled to nn.MultiheadAttention "
                f"{ctx.names.get(target)!r} (its heads fix the embedding width)",
            )
        if (
            isinstance(target, nn.modules.conv._ConvNd)
            and 1 < target.groups
            and not (target.groups == target.in_channels == target.out_channels)
        ):
            raise ConfigError(
                where,
                layer,
                f"a layer not coupled to grouped convolution {ctx.names.get(target)!r} (groups={target.groups})",
            )
        if isinstance(target, nn.Module) and _is_out(ctx, dep):
            members.add(target)
            if isinstance(config, ChannelPruning) and target in qkv:
                raise ConfigError(
                    where,
                    layer,
                    f"a layer whose outputs are not attention heads (use HeadPruning on {qkv[target] + '.query'!r})",
                )
    return members


def _head_unit(ctx: StructureContext, layer: str, config: HeadPruning) -> tuple[str, nn.Module]:
    name = layer.rpartition(".")[0]
    unit = ctx.model.get_submodule(name)
    if not _attention_unit(unit) or unit.query is not ctx.model.get_submodule(layer):
        raise ConfigError(
            f"plan.layers[{layer!r}].{config.method}",
            type(unit).__name__,
            "the query of a self-attention with num_attention_heads, attention_head_size and "
            "query / key / value Linears (transformers' BertSelfAttention)",
        )
    if unit.query.out_features != unit.num_attention_heads * unit.attention_head_size:
        raise ConfigError(
            f"plan.layers[{layer!r}].{config.method}",
            unit.query.out_features,
            f"num_attention_heads * attention_head_size = "
            f"{unit.num_attention_heads * unit.attention_head_size} query outputs",
        )
    return name, unit


def prune_structure(
    model: nn.Module,
    methods: Mapping[str, MethodConfig],
    example_input: Any,
    train_loader: Iterable[tuple[Tensor, Tensor]] | None = None,
    loss_fn: Callable[[Any, Tensor], Tensor] | None = None,
) -> dict[str, dict]:
    """Run the structure-stage ``methods`` (layer -> config, in plan order) on ``model`` in place.

    Every layer's group is traced and checked before anything is pruned.

    Returns:
        ``"<layer>@<method>"`` -> ``{"method", "step", "layer", ...}`` for
        :attr:`compression.CompressedModel.structure`; ``step`` is the replay order.

    Raises:
        ConfigError: No usable ``example_input``; Taylor importance without
            ``train_loader`` / ``loss_fn``; a group the method cannot prune
            (it reaches the model's output, holds attention heads for
            ChannelPruning, a grouped conv or nn.MultiheadAttention, or
            DepGraph mis-traced it so the pruned model no longer runs); two
            planned layers of one group with different configs.
    """
    if not methods:
        return {}
    example_input = _check_example_input(example_input)
    if any(_needs_gradients(cfg) for cfg in methods.values()):
        if train_loader is None:
            raise ConfigError("train_loader", None, "(input, target) calibration batches for importance='taylor'")
        if loss_fn is None:
            raise ConfigError("loss_fn", None, "a callable loss_fn(output, target) for importance='taylor'")
    traced: list[Any] = []

    def forward(module: nn.Module, inputs: Any) -> Any:
        traced.append(_forward(module, inputs))
        return traced[-1]

    with torch.enable_grad():  # DepGraph traces autograd
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=example_input, forward_fn=forward, verbose=False
        )
    outputs = {t.grad_fn for t in _tensors(traced[-1])}
    shapes = [tuple(t.shape) for t in _tensors(traced[-1])]
    traced.clear()
    ctx = StructureContext(model, graph, {m: n for n, m in model.named_modules()}, outputs - {None})

    # Check every group first: nothing is pruned if one layer is refused.
    steps: list[tuple[str, MethodConfig]] = []
    owner: dict[nn.Module, tuple[str, MethodConfig]] = {}
    for layer, cfg in methods.items():
        module = model.get_submodule(layer)
        if isinstance(cfg, HeadPruning):
            _head_unit(ctx, layer, cfg)
        group = _full_group(ctx, module)
        members = _check_group(ctx, layer, cfg, group)
        if isinstance(cfg, HeadPruning):
            unit = model.get_submodule(layer.rpartition(".")[0])
            if not {unit.key, unit.value} <= members:
                raise ConfigError(
                    f"plan.layers[{layer!r}].{cfg.method}",
                    layer,
                    "a query whose key and value outputs are traced as coupled to it",
                )
        if module in owner:
            first, first_cfg = owner[module]
            if first_cfg != cfg:
                raise ConfigError(
                    f"plan.layers[{layer!r}]",
                    cfg,
                    f"{first_cfg!r}, the method of {first!r}, which shares its output channels",
                )
            continue  # the group is pruned once, by the first layer that names it
        owner.update({m: (layer, cfg) for m in members})
        steps.append((layer, cfg))

    if any(_needs_gradients(cfg) for _, cfg in steps):
        _accumulate_gradients(model, train_loader, loss_fn)  # type: ignore[arg-type]
    structure = {}
    try:
        for step, (layer, cfg) in enumerate(steps):
            spec = get_handler(cfg)(ctx, layer, cfg)
            _check_still_runs(model, layer, cfg, example_input, shapes)
            structure[f"{layer}@{cfg.method}"] = {"method": cfg.method, "step": step, "layer": layer, **spec}
    finally:
        for p in model.parameters():
            p.grad = None
    return structure


def _tensors(output: Any) -> list[Tensor]:
    return [t for t in tp.utils.flatten_as_list(output) if isinstance(t, Tensor)]


def _check_still_runs(
    model: nn.Module, layer: str, config: MethodConfig, example_input: Any, shapes: list[tuple[int, ...]]
) -> None:
    """Refuse a layer whose group DepGraph mis-traced: the pruned model must run and keep its output shapes.

    Tracing is heuristic (e.g. torch-pruning 1.6 maps a conv's channels
    through ``flatten()`` only while no Linear in the model sees 3-D inputs),
    so a wrong group shows up here instead of as a broken trial later.
    """
    try:
        with torch.no_grad():
            got: Any = [tuple(t.shape) for t in _tensors(_forward(model, example_input))]
    except RuntimeError as e:
        got = f"the pruned model fails: {str(e).splitlines()[0]}"
    if got != shapes:
        detail = got if isinstance(got, str) else f"output shapes {got} instead of {shapes}"
        raise ConfigError(
            f"plan.layers[{layer!r}].{config.method}",
            layer,
            f"a layer whose dependencies torch-pruning traces correctly ({detail})",
        )


def _needs_gradients(config: MethodConfig) -> bool:
    return IMPORTANCES[config.importance]().needs_gradients  # type: ignore[attr-defined]


def _accumulate_gradients(
    model: nn.Module, loader: Iterable[tuple[Tensor, Tensor]], loss_fn: Callable[[Any, Tensor], Tensor]
) -> None:
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for i, (inputs, targets) in enumerate(loader):
            if i == TAYLOR_BATCHES:
                break
            loss_fn(_forward(model, inputs), targets).backward()
    for p in model.parameters():  # a weight outside the loss's graph scores 0, not a crash
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _scores(group: Any, layer: str, importance: str) -> Tensor:
    scores = IMPORTANCES[importance]()(group, layer)
    if scores is None:  # no weighted layer in the group: nothing to rank by, keep the first ones
        scores = -torch.arange(len(group[0].idxs), dtype=torch.float32)
    return scores.detach().float().cpu()


def _prune_group(ctx: StructureContext, module: nn.Module, channels: int, pruned: list[int]) -> dict[str, Any]:
    """Prune ``pruned`` output channels of ``module`` with its whole group; return what a replay needs."""
    pruner = ctx.graph.get_pruner_of_module(module)
    gone = set(pruned)
    keep = [i for i in range(channels) if i not in gone]
    spec: dict[str, Any] = {"channels": channels, "keep": keep, "ops": []}
    if not pruned:
        return spec
    group = ctx.graph.get_pruning_group(module, pruner.prune_out_channels, pruned)
    params = getattr(ctx.graph, "_param_to_name", {})
    for dep, idxs in group:
        target = dep.target
        plain = sorted(int(i) for i in idxs)
        same = plain == pruned
        if target.type == tp.ops.OPTYPE.PARAMETER:
            spec["ops"].append([params[target.module], "param", None if same else plain, target.pruning_dim])
        elif target.module in ctx.names:  # real modules; DepGraph's op nodes (add, cat, reshape) hold no tensors
            kind = "out" if _is_out(ctx, dep) else "in"
            spec["ops"].append([ctx.names[target.module], kind, None if same else plain, target.pruning_dim])
    group.prune()
    return spec


@register_method(ChannelPruning)
def _prune_channels(ctx: StructureContext, layer: str, config: ChannelPruning) -> dict[str, Any]:
    module = ctx.model.get_submodule(layer)
    channels = ctx.graph.get_pruner_of_module(module).get_out_channels(module)
    scores = _scores(_full_group(ctx, module), layer, config.importance)
    removed = channels - kept_channels(channels, config)
    pruned = sorted(torch.argsort(scores, stable=True)[:removed].tolist())
    return _prune_group(ctx, module, channels, pruned)


@register_method(HeadPruning)
def _prune_heads(ctx: StructureContext, layer: str, config: HeadPruning) -> dict[str, Any]:
    name, unit = _head_unit(ctx, layer, config)
    heads, size = unit.num_attention_heads, unit.attention_head_size
    scores = _scores(_full_group(ctx, unit.query), layer, config.importance)
    removed = min(heads - 1, round(config.ratio * heads))
    gone = sorted(torch.argsort(scores.view(heads, size).mean(1), stable=True)[:removed].tolist())
    pruned = [h * size + i for h in gone for i in range(size)]
    spec = _prune_group(ctx, unit.query, heads * size, pruned)
    # The forward reshapes to (-1, head_size): only the bookkeeping attributes need the new count.
    attrs = {"num_attention_heads": heads - removed, "all_head_size": (heads - removed) * size}
    for key, value in attrs.items():
        setattr(unit, key, value)
    spec["heads"] = [h for h in range(heads) if h not in gone]
    spec["attrs"] = {name: attrs}
    return spec


# -- replay ------------------------------------------------------------------------


def _replay_pruner(target: Any) -> Any:
    pruner = tp.pruner.function.PrunerBox.get(tp.ops.module2type(target))
    if pruner is None:
        raise ValueError(f"torch-pruning has no pruner for {type(target).__name__}")
    return pruner


def replay_structure(model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Apply one recorded structure-stage step to ``model`` in place, deterministically.

    ``spec["ops"]`` lists ``[name, kind, indices, dim]`` per touched module
    (``kind`` ``"out"`` / ``"in"`` channels, or ``"param"`` for a bare
    parameter), ``indices`` None meaning the complement of ``spec["keep"]``
    in ``range(spec["channels"])``; ``spec["attrs"]`` sets module attributes
    (attention head counts). No tracing, so no example input is needed.

    Raises:
        ValueError: The spec does not fit ``model`` (unknown module, index
            out of range).
    """
    channels, keep = int(spec["channels"]), {int(i) for i in spec["keep"]}
    root = [i for i in range(channels) if i not in keep]
    for name, kind, idxs, dim in spec["ops"]:
        idxs = root if idxs is None else [int(i) for i in idxs]
        if kind == "param":
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            param = getattr(parent, attr)
            pruner = _replay_pruner(param)
            pruner.pruning_dim = int(dim)
            if any(not 0 <= i < param.shape[int(dim)] for i in idxs):
                raise ValueError(f"{name}: indices outside 0..{param.shape[int(dim)] - 1}")
            setattr(parent, attr, pruner.prune_out_channels(param, idxs))
            continue
        if kind not in ("out", "in"):
            raise ValueError(f"{name}: unknown operation {kind!r}")
        module = model.get_submodule(name)
        pruner = _replay_pruner(module)
        pruner.pruning_dim = int(dim)
        count = pruner.get_out_channels(module) if kind == "out" else pruner.get_in_channels(module)
        if count is not None and any(not 0 <= i < count for i in idxs):
            raise ValueError(f"{name}: {kind} channel indices outside 0..{count - 1}")
        (pruner.prune_out_channels if kind == "out" else pruner.prune_in_channels)(module, sorted(idxs))
    for name, attrs in spec.get("attrs", {}).items():
        unit = model.get_submodule(name)
        for key, value in attrs.items():
            if not hasattr(unit, key):
                raise ValueError(f"{name} has no attribute {key!r}")
            setattr(unit, key, value)
