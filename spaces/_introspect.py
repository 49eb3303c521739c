"""Model introspection: what each compressible layer is, which methods apply, and the default exclusions.

Works on any ``torch.nn.Module`` (plain PyTorch, Hugging Face ``transformers``,
torchvision, timm): the compressible layers are the ``nn.Linear``,
``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Embedding`` modules (and subclasses) of
``model.named_modules()``, in that order. Norms (BatchNorm, LayerNorm, ...)
are never compressible: their few parameters rescale activations and are
kept in fp32.

Parameters held directly by a module rather than by a child layer are not
covered: ``nn.MultiheadAttention`` packs the query/key/value projections in
its own ``in_proj_weight`` (only its ``out_proj`` is a child ``Linear``),
ViT's ``cls_token`` / ``position_embeddings`` are bare parameters, and GPT-2's
``transformers.Conv1D`` is not an ``nn.Conv1d``. Their parameters count in a
model's total but not in any layer; :func:`uncovered_params` lists them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from torch import nn

from rayzor.compression import compressible_layers, get_method, list_methods
from rayzor.compression._layers import COMPRESSIBLE_TYPES
from rayzor.errors import ConfigError

__all__ = [
    "TINY_PARAMS",
    "TINY_SHARE",
    "LayerInfo",
    "LayerReport",
    "default_exclusions",
    "inspect_layers",
    "introspect",
    "method_support",
    "uncovered_params",
]

#: A layer is "tiny" (left out by default) below this many weights ...
TINY_PARAMS = 4096
#: ... and below this share of the model's compressible weights. Compressing a
#: layer saves at most its fp32 bytes, so a layer under 1% of the compressible
#: weights can change size_bytes by under 1% while adding 2-3 dimensions to
#: the search, and per-channel scales (4 bytes per output channel) eat much of
#: what a small layer saves (digits' conv1: 144 weights, 16 channels, 64 bytes
#: of scales beside 72 bytes of 4-bit codes). The absolute bound keeps layers
#: of large models searched, where 1% can be millions of weights.
TINY_SHARE = 0.01

# Attention projections by the leaf name models give them (BERT/ViT query,
# LLaMA/OPT/transformers-5 q_proj, DistilBERT q_lin, T5 q, timm qkv/proj,
# nn.MultiheadAttention out_proj); "dense" etc. only count inside an attention block.
_ROLE_BY_LEAF = {
    **dict.fromkeys(("query", "q", "q_proj", "q_lin", "wq"), "q"),
    **dict.fromkeys(("key", "k", "k_proj", "k_lin", "wk"), "k"),
    **dict.fromkeys(("value", "v", "v_proj", "v_lin", "wv"), "v"),
    **dict.fromkeys(("qkv", "qkv_proj", "in_proj", "wqkv", "query_key_value", "c_attn"), "qkv"),
    **dict.fromkeys(("out_proj", "o_proj", "o", "out_lin", "wo", "proj", "c_proj", "dense", "out"), "out"),
}

# Stages whose methods rewrite a layer's weight in place (the module object stays).
_IN_PLACE_STAGES = ("sparsify", "quantize")

# Settings a method is asked about when its config class has required
# fields or needs one of several optional ones: mid-range pruning and 8 bits;
# for low-rank the smallest rank (a ratio that rounds to rank 1), so "applies"
# reads "some setting of this method is valid for the layer".
_PROBE_VALUES: dict[str, Any] = {"sparsity": 0.5, "bits": 8, "rank_ratio": 1e-9, "amount": 0.5, "ratio": 0.5}

#: A compressible layer: an instance of one of :data:`COMPRESSIBLE_TYPES`, whose ``weight`` is a tensor.
Layer: TypeAlias = nn.Conv1d | nn.Conv2d | nn.Linear | nn.Embedding


def layers_of(model: nn.Module) -> dict[str, Layer]:
    """:func:`compressible_layers` of ``model``, typed as the layers it keeps."""
    # compressible_layers keeps only instances of COMPRESSIBLE_TYPES (the classes of Layer) but is annotated nn.Module
    return cast("dict[str, Layer]", compressible_layers(model))


@dataclass(frozen=True)
class LayerInfo:
    """One compressible layer as introspection sees it."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    params: int


def inspect_layers(model: nn.Module) -> list[LayerInfo]:
    """Every Conv/Linear/Embedding layer of ``model``, in module order, with its shape."""
    return [
        LayerInfo(
            name=name,
            kind=type(module).__name__,
            weight_shape=tuple(module.weight.shape),
            params=module.weight.numel(),
        )
        for name, module in layers_of(model).items()
    ]


@dataclass(frozen=True)
class LayerReport(LayerInfo):
    """A compressible layer with what a space needs to know about it.

    Attributes:
        name: Module name, as in ``model.named_modules()``.
        kind: The compressible base type: ``Linear``, ``Conv1d``, ``Conv2d`` or
            ``Embedding`` (``inspect_layers`` gives the class name instead).
        weight_shape: Shape of ``weight``.
        params: Weights of the layer (``weight.numel()``; biases stay fp32).
        module_type: The module's own class, e.g. ``NonDynamicallyQuantizableLinear``.
        share: ``params`` over the model's parameter count (shared tensors once).
        flags: Structure worth knowing before choosing methods: ``depthwise``,
            ``grouped``, ``1x1`` (convs); ``attention.q`` / ``.k`` / ``.v`` /
            ``.qkv`` / ``.out`` / ``attention`` (projections inside an attention
            block, from the module path or an ancestor class named
            ``*Attention``); ``multihead_attention`` (the ``out_proj`` of an
            ``nn.MultiheadAttention``); ``shared:<layer>`` (same weight tensor
            as an earlier layer, e.g. a tied LM head).
        methods: Registered methods whose ``validate()`` accepts the layer.
        refused: The other registered methods, each with the reason.
        default_exclusion: Why the default exclusions leave the layer out, or None.
    """

    module_type: str
    share: float
    flags: tuple[str, ...]
    methods: tuple[str, ...]
    refused: Mapping[str, str] = field(hash=False)
    default_exclusion: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        out = dataclasses.asdict(self)
        out["weight_shape"] = list(self.weight_shape)
        out["flags"], out["methods"], out["refused"] = list(self.flags), list(self.methods), dict(self.refused)
        return out


def _kind(module: nn.Module) -> str:
    return next(t.__name__ for t in COMPRESSIBLE_TYPES if isinstance(module, t))


def _flags(name: str, module: nn.Module, modules: Mapping[str, nn.Module]) -> list[str]:
    flags: list[str] = []
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups > 1:
            flags.append("depthwise" if module.groups == module.in_channels else "grouped")
        if all(k == 1 for k in module.kernel_size):
            flags.append("1x1")
    parts = name.split(".")
    # parent first, root last; a model that is itself one layer has none
    ancestors = [modules[".".join(parts[:i])] for i in range(len(parts) - 1, -1, -1)] if name else []
    in_attention = any("attention" in p.lower() or "attn" in p.lower() for p in parts[:-1]) or any(
        "Attention" in type(a).__name__ for a in ancestors
    )
    if isinstance(module, nn.Linear) and in_attention:
        role = _ROLE_BY_LEAF.get(parts[-1].lower())
        flags.append(f"attention.{role}" if role else "attention")
    if ancestors and isinstance(ancestors[0], nn.MultiheadAttention):
        flags.append("multihead_attention")
    return flags


def _probe_config(cls: type) -> Any | None:
    """A representative config of method class ``cls``: its defaults, else probe values for its fields."""
    fields = dataclasses.fields(cls) if dataclasses.is_dataclass(cls) else ()
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    attempts = [
        {n: _PROBE_VALUES[n] for n in required if n in _PROBE_VALUES},
        {f.name: _PROBE_VALUES[f.name] for f in fields if f.name in _PROBE_VALUES},
    ]
    for kwargs in attempts:
        try:
            return cls(**kwargs)
        except (ConfigError, TypeError):  # a missing field or a combination the class refuses
            continue
    return None


def method_support(
    layer: str, module: nn.Module, parent: nn.Module | None = None
) -> tuple[tuple[str, ...], dict[str, str]]:
    """Which registered methods apply to ``module``, asking each method's own ``validate()``.

    Every method in :func:`compression.list_methods` is built with
    representative settings (its defaults, else mid-range values such as 50%
    sparsity or 8 bits, and rank 1 for low-rank) and its ``validate(layer,
    module)`` decides; a method the probe cannot build is reported as
    refused with the reason, so methods added later need nothing here.

    Args:
        layer: The module's name in the model.
        module: The layer.
        parent: Its parent module, if known: inside ``nn.MultiheadAttention``,
            whose forward reads ``out_proj.weight`` directly, only methods that
            rewrite the weight in place (sparsify and quantize stages) apply;
            the others replace or reshape the module (low-rank, channel
            pruning, activation quantization) and break its forward.

    Returns:
        The applicable method names (registration order) and, per refused
        method, why.
    """
    applies: list[str] = []
    refused: dict[str, str] = {}
    for name in list_methods():
        cls = get_method(name)
        config = _probe_config(cls)
        if config is None:
            refused[name] = "not checked: no representative setting of its config"
            continue
        if cls.stage not in _IN_PLACE_STAGES and isinstance(parent, nn.MultiheadAttention):
            refused[name] = (
                f"nn.MultiheadAttention reads out_proj.weight itself; a {cls.stage}-stage method "
                "replaces or reshapes the module and breaks its forward"
            )
            continue
        try:
            config.validate(layer, module)
        except ConfigError as exc:
            refused[name] = str(exc.valid) if isinstance(exc.valid, str) else str(exc)
        except Exception as exc:  # noqa: BLE001 - a method's own bug must not hide every other method
            refused[name] = f"not checked: validate() raised {type(exc).__name__}: {exc}"
        else:
            applies.append(name)
    return tuple(applies), refused


def _unique_weights(layers: Mapping[str, nn.Module]) -> dict[str, str]:
    """Per layer whose weight tensor an earlier layer already has (tied weights): that layer."""
    first: dict[int, str] = {}
    shared: dict[str, str] = {}
    for name, module in layers.items():
        owner = first.setdefault(id(module.weight), name)
        if owner != name:
            shared[name] = owner
    return shared


def default_exclusions(model: nn.Module) -> dict[str, str]:
    """The layers rayzor leaves out of a search by default, each with the reason.

    - The first and the last compressible layer (in module order), unless it is
      an Embedding: the layers that see the raw input and produce the output
      are the most sensitive to quantization, and keeping them in full
      precision is standard practice (DoReFa-Net, Zhou et al. 2016,
      https://arxiv.org/abs/1606.06160; TTQ, Zhu et al. 2017,
      https://arxiv.org/abs/1612.01064). An embedding table is a lookup, not an
      input projection, and usually the largest tensor of a language model, so
      it stays searched.
    - Tiny layers: fewer than :data:`TINY_PARAMS` weights and under
      :data:`TINY_SHARE` of the compressible weights (see there why).

    The defaults never leave a model with nothing to search: where they would
    exclude every layer, none is returned.

    Returns:
        ``{layer: reason}`` in model order.
    """
    layers = layers_of(model)
    shared = _unique_weights(layers)
    total = sum(m.weight.numel() for n, m in layers.items() if n not in shared)
    names = list(layers)
    reasons: dict[str, list[str]] = {}
    for name, why in ((names[:1], "first layer"), (names[-1:], "last layer")):
        for n in name:
            if not isinstance(layers[n], nn.Embedding):
                reasons.setdefault(n, []).append(why)
    for n, module in layers.items():
        size = module.weight.numel()
        if n not in shared and size < TINY_PARAMS and size < TINY_SHARE * total:
            reasons.setdefault(n, []).append(f"tiny ({size} weights, {size / total:.2%})")
    if len(reasons) == len(names):
        return {}
    return {n: ", ".join(reasons[n]) for n in names if n in reasons}


def uncovered_params(model: nn.Module) -> dict[str, int]:
    """Parameters of ``model`` that no compressible layer's ``weight`` holds, by name.

    Biases, norms, bare parameters (ViT's ``cls_token``), and
    ``nn.MultiheadAttention.in_proj_weight``: everything a plan leaves in fp32
    whatever it says.
    """
    covered = {id(m.weight) for m in compressible_layers(model).values()}
    return {name: p.numel() for name, p in model.named_parameters() if id(p) not in covered}


def introspect(model: nn.Module) -> list[LayerReport]:
    """Every compressible layer of ``model`` with its structure, applicable methods and default exclusion.

    Example::

        for r in introspect(model):
            print(r.name, r.kind, r.flags, r.params, f"{r.share:.1%}", r.methods, r.default_exclusion)

    Returns:
        One :class:`LayerReport` per layer, in module order.
    """
    modules = dict(model.named_modules())
    layers = layers_of(model)
    shared = _unique_weights(layers)
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once
    defaults = default_exclusions(model)
    reports = []
    for name, module in layers.items():
        parent = modules[name.rpartition(".")[0]] if name else None
        applies, refused = method_support(name, module, parent)
        flags = _flags(name, module, modules) + ([f"shared:{shared[name]}"] if name in shared else [])
        reports.append(
            LayerReport(
                name=name,
                kind=_kind(module),
                weight_shape=tuple(module.weight.shape),
                params=module.weight.numel(),
                module_type=type(module).__name__,
                share=module.weight.numel() / total if total else 0.0,
                flags=tuple(flags),
                methods=applies,
                refused=refused,
                default_exclusion=defaults.get(name),
            )
        )
    return reports
