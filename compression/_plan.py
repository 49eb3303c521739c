"""Compression plans: which methods run on which layer, plus fine-tuning; and the global magnitude plan builder."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rayzor.compression._layers import compressible_layers
from rayzor.compression._pruning import MagnitudePruning
from rayzor.compression._quantization import UniformQuantization
from rayzor.compression._registry import (
    STAGES,
    MethodConfig,
    build_dataclass,
    check_int,
    check_real,
    get_method,
    list_methods,
)
from rayzor.errors import ConfigError

__all__ = ["FinetuneConfig", "CompressionPlan", "global_magnitude_plan"]

#: Value of a setting when the layer has no method for it (see CompressionPlan.settings).
_DEFAULT_SETTINGS: dict[str, float | int] = {"sparsity": 0.0, "bits": 32}
_ABBREV = {"sparsity": "s", "bits": "b"}
#: Flat key naming a stage's method when it is not the stage's default one.
_KIND_KEYS: dict[str, str] = {"factorize": "factorize", "sparsify": "prune", "quantize": "quant"}
_KIND_KEYS["activation"] = "act_quant"
_KIND_KEYS["structure"] = "structure"
#: Prefix of a stage's field keys in the flat view, where they would clash with another stage's (``bits``).
_FIELD_PREFIX: dict[str, str] = {"activation": "act_"}
#: The method a stage gets from the bare ``sparsity`` / ``bits`` settings.
_DEFAULT_METHODS: dict[str, type[MethodConfig]] = {"sparsify": MagnitudePruning, "quantize": UniformQuantization}
_SETTING_OF: dict[type[MethodConfig], str] = {MagnitudePruning: "sparsity", UniformQuantization: "bits"}


def _fields(cls: type[MethodConfig]) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _flat(m: MethodConfig) -> dict[str, Any]:
    """One method's part of the flat settings view."""
    cls = type(m)
    if cls in _SETTING_OF:  # the stage default: its key setting plus fields off their defaults
        key = _SETTING_OF[cls]
        out = {key: getattr(m, key)}
        out.update(
            {f.name: getattr(m, f.name) for f in _fields(cls) if f.name != key and getattr(m, f.name) != f.default}
        )
        return out
    out = {_KIND_KEYS[m.stage]: m.method}
    prefix = _FIELD_PREFIX.get(m.stage, "")
    # None is left out only where it is the default: GPTQ(group_size=None) must not read back as the default 128
    out.update(
        {
            prefix + f.name: getattr(m, f.name)
            for f in _fields(cls)
            if getattr(m, f.name) is not None or f.default is not None
        }
    )
    if "bits" not in out and hasattr(m, "storage_bits"):
        out["bits"] = m.storage_bits
    return out


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning between the sparsify and quantize stages.

    Retraining the surviving weights recovers most of the accuracy lost to
    pruning (Han et al. 2015, https://arxiv.org/abs/1506.02626). With
    ``distill_alpha > 0`` the uncompressed model is the teacher of the
    recovery (knowledge distillation, Hinton et al. 2015,
    https://arxiv.org/abs/1503.02531): the loss is ``distill_alpha * T^2 *
    KL(teacher || student at temperature T) + (1 - distill_alpha) * loss_fn``,
    which assumes the model outputs class logits. With ``qat`` every layer
    with a quantize-stage method trains through that method's quantizer
    (quantization-aware training with the straight-through estimator,
    Bengio et al. 2013, https://arxiv.org/abs/1308.3432; Jacob et al. 2018,
    https://arxiv.org/abs/1712.05877): the forward pass runs the weights the
    quantize stage would produce from the current ones, the gradient updates
    the latent fp32 weights, and the final quantize stage applies the same
    quantizers to the final latent weights.

    Args:
        epochs: Passes over the training loader; 0 disables fine-tuning.
        lr: Adam learning rate, > 0.
        batch_size: Batch size the caller uses to build the loader.
        seed: Seed for ``torch.manual_seed`` before fine-tuning.
        distill_alpha: Weight of the teacher term, in ``[0, 1]``; 0 (the
            default) is plain ``loss_fn``.
        temperature: Softmax temperature of the teacher term, > 0.
        qat: Fine-tune through the quantize stage's quantizers.
    """

    epochs: int = 0
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    # The fields below have defaults so that serialised plans without them load unchanged.
    distill_alpha: float = 0.0
    temperature: float = 4.0
    qat: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "epochs", check_int("finetune.epochs", self.epochs, 0))
        object.__setattr__(self, "lr", check_real("finetune.lr", self.lr, 0.0, float("inf"), lo_open=True))
        object.__setattr__(self, "batch_size", check_int("finetune.batch_size", self.batch_size, 1))
        object.__setattr__(self, "seed", check_int("finetune.seed", self.seed, 0))
        object.__setattr__(self, "distill_alpha", check_real("finetune.distill_alpha", self.distill_alpha, 0.0, 1.0))
        object.__setattr__(
            self,
            "temperature",
            check_real("finetune.temperature", self.temperature, 0.0, float("inf"), lo_open=True, hi_open=True),
        )
        if not isinstance(self.qat, bool):
            raise ConfigError("finetune.qat", self.qat, "true or false")


@dataclass(frozen=True)
class CompressionPlan:
    """Per-layer compression methods and an optional fine-tune.

    Methods of a layer are kept sorted by stage (sparsify first, quantize
    last), so two plans with the same methods compare equal whatever order
    they were given in. Plans are hashable and survive a JSON round trip.

    Args:
        layers: Module name (as in ``model.named_modules()``) -> methods, at
            most one method per stage.
        finetune: Fine-tuning run between the two stages.
    """

    layers: Mapping[str, tuple[MethodConfig, ...]]
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    FORMAT_VERSION: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping):
            raise ConfigError("plan.layers", self.layers, "a mapping of layer name -> methods")
        if not isinstance(self.finetune, FinetuneConfig):
            raise ConfigError("plan.finetune", self.finetune, "a FinetuneConfig")
        layers: dict[str, tuple[MethodConfig, ...]] = {}
        for name, methods in self.layers.items():
            if not isinstance(name, str):
                raise ConfigError("plan.layers", name, "layer names as strings")
            if isinstance(methods, MethodConfig) or not isinstance(methods, Iterable):
                raise ConfigError(f"plan.layers[{name!r}]", methods, "a tuple of MethodConfig")
            methods = tuple(methods)
            for m in methods:
                if not isinstance(m, MethodConfig):
                    raise ConfigError(f"plan.layers[{name!r}]", m, "MethodConfig instances")
            stages = [m.stage for m in methods]
            if len(set(stages)) != len(stages):
                raise ConfigError(f"plan.layers[{name!r}]", methods, f"at most one method per stage {STAGES}")
            layers[name] = tuple(sorted(methods, key=lambda m: STAGES.index(m.stage)))
        # A private copy so later edits to the caller's dict cannot change a hashed plan.
        object.__setattr__(self, "layers", layers)

    def __hash__(self) -> int:
        return hash((tuple(sorted(self.layers.items())), self.finetune))

    def by_stage(self, stage: str) -> dict[str, MethodConfig]:
        """Layer -> its method of ``stage``, for the layers that have one, in plan order.

        Raises:
            ConfigError: ``stage`` is not one of the registry's stages.
        """
        if stage not in STAGES:
            raise ConfigError("stage", stage, STAGES)
        return {name: m for name, methods in self.layers.items() for m in methods if m.stage == stage}

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """``{"version": 1, "layers": {name: [method dicts]}, "finetune": {...}}``."""
        return {
            "version": self.FORMAT_VERSION,
            "layers": {name: [m.to_dict() for m in methods] for name, methods in self.layers.items()},
            "finetune": dataclasses.asdict(self.finetune),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompressionPlan:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: Unsupported version, unknown keys or invalid methods.
        """
        if not isinstance(d, Mapping):
            raise ConfigError("plan", d, "a mapping with 'version', 'layers' and 'finetune'")
        if d.get("version") != cls.FORMAT_VERSION:
            raise ConfigError("plan.version", d.get("version"), [cls.FORMAT_VERSION])
        for key in d:
            if key not in ("version", "layers", "finetune"):
                raise ConfigError(f"plan.{key}", d[key], "keys 'version', 'layers', 'finetune'")
        layers = d.get("layers", {})
        if not isinstance(layers, Mapping):
            raise ConfigError("plan.layers", layers, "a mapping of layer name -> list of methods")
        finetune = d.get("finetune", {})
        if not isinstance(finetune, Mapping):
            raise ConfigError("plan.finetune", finetune, "a mapping of FinetuneConfig fields")
        return cls(
            {name: tuple(MethodConfig.from_dict(m) for m in methods) for name, methods in layers.items()},
            build_dataclass(FinetuneConfig, finetune, "finetune"),
        )

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys, compact)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> CompressionPlan:
        """Inverse of :meth:`to_json`."""
        try:
            d = json.loads(s)
        except (TypeError, ValueError) as e:
            raise ConfigError("plan JSON", s, f"a JSON object ({e})") from None
        return cls.from_dict(d)

    # -- flat views ----------------------------------------------------------

    def settings(self) -> dict[str, dict[str, Any]]:
        """Flat per-layer view, e.g. ``{"conv1": {"sparsity": 0.5, "bits": 4}}``.

        Layers without pruning read ``sparsity=0.0``, without quantization
        ``bits=32``. Magnitude pruning and uniform quantization are implied by
        ``sparsity`` / ``bits`` (plus their fields that differ from the
        defaults); any other method is named under ``prune``, ``factorize``
        or ``quant`` next to its fields, e.g. ``{"quant":
        "kmeans_quantization", "bits": 4, "iterations": 20}``; methods
        without a ``bits`` field report their storage bits (binary: 1).
        Used as MLflow params.
        """
        out = {}
        for name, methods in self.layers.items():
            flat: dict[str, Any] = dict(_DEFAULT_SETTINGS)
            for m in methods:
                flat.update(_flat(m))
            out[name] = flat
        return out

    @classmethod
    def from_settings(
        cls,
        settings: Mapping[str, Mapping[str, float | int]],
        finetune: FinetuneConfig = FinetuneConfig(),
    ) -> CompressionPlan:
        """Inverse of :meth:`settings`.

        Without a ``prune`` / ``quant`` key, ``sparsity > 0`` means
        MagnitudePruning and ``bits < 32`` UniformQuantization.

        Raises:
            ConfigError: An unknown key, a key no chosen method uses, or
                invalid values; the message names the layer.
        """
        known = set(_DEFAULT_SETTINGS) | set(_KIND_KEYS.values())
        known |= {
            _FIELD_PREFIX.get(get_method(m).stage, "") + f.name for m in list_methods() for f in _fields(get_method(m))
        }
        layers = {}
        for name, flat in settings.items():
            for key in flat:
                if key not in known:
                    raise ConfigError(f"settings[{name!r}]", key, sorted(known))
            used = {k for k in _KIND_KEYS.values() if k in flat}
            methods: list[MethodConfig] = []
            for stage in STAGES:
                kind = flat.get(_KIND_KEYS[stage])
                default = _DEFAULT_METHODS.get(stage)
                if kind is None and default is None:
                    continue
                method_cls = default if kind is None else get_method(kind)
                if method_cls.stage != stage:
                    raise ConfigError(f"settings[{name!r}].{_KIND_KEYS[stage]}", kind, list_methods(stage))
                if kind is None:  # the stage default applies only off its neutral value
                    key = _SETTING_OF[method_cls]
                    if flat.get(key, _DEFAULT_SETTINGS[key]) == _DEFAULT_SETTINGS[key]:
                        continue
                prefix = _FIELD_PREFIX.get(stage, "")
                fields = {f.name: flat[prefix + f.name] for f in _fields(method_cls) if prefix + f.name in flat}
                used |= {prefix + k for k in fields}
                cfg = build_dataclass(method_cls, fields, f"settings[{name!r}].{method_cls.method}")
                storage = getattr(cfg, "storage_bits", None)
                if "bits" in flat and "bits" not in fields and storage is not None:
                    if flat["bits"] != storage:
                        raise ConfigError(f"settings[{name!r}].bits", flat["bits"], [storage])
                    used.add("bits")
                methods.append(cfg)
            used |= {k for k, v in _DEFAULT_SETTINGS.items() if flat.get(k, v) == v}
            for key in flat:
                if key not in used:
                    raise ConfigError(f"settings[{name!r}].{key}", flat[key], "a field of the layer's chosen methods")
            layers[name] = tuple(methods)
        return cls(layers, finetune)

    def validate(self, model: nn.Module) -> None:
        """Check this plan against ``model`` before any work starts.

        Every named layer must be a compressible layer of ``model`` and every
        method must accept it (:meth:`MethodConfig.validate`: e.g. a rank
        that saves parameters).

        Raises:
            ConfigError: Naming the layer, the field, the value and what is valid.
        """
        layers = compressible_layers(model)
        for name in self.layers:
            if name not in layers:
                raise ConfigError(f"plan.layers[{name!r}]", name, list(layers))
        for name, methods in self.layers.items():
            for m in methods:
                m.validate(name, layers[name])

    def summary(self) -> str:
        """Short human text, e.g. ``"conv1 s=0.50 b=4 | fc1 s=0.90 b=32"``."""
        parts = []
        for name, flat in self.settings().items():
            items = [
                f"{_ABBREV.get(k, k)}={v:.2f}" if isinstance(v, float) else f"{_ABBREV.get(k, k)}={v}"
                for k, v in flat.items()
            ]
            parts.append(" ".join([name or "<root>", *items]))
        if self.finetune.epochs:
            parts.append(f"finetune {self.finetune.epochs}ep lr={self.finetune.lr:g}")
        return " | ".join(parts) or "<empty plan>"


def global_magnitude_plan(model: nn.Module, sparsity: float, layers: Iterable[str] | None = None) -> CompressionPlan:
    """One magnitude threshold across layers, as per-layer :class:`MagnitudePruning`.

    The ``round(sparsity * total)`` weights of smallest absolute value over
    all ``layers`` together are pruned, so layers with many small weights
    lose more of them than others (global magnitude pruning, the strong
    simple baseline of Blalock et al. 2020, "What is the State of Neural
    Network Pruning?", https://arxiv.org/abs/2003.03033). Ties are broken
    by position: layer order, then flat index, lower first, which is also
    :class:`MagnitudePruning`'s rule, so each layer's mask is exactly its
    share of the global selection.

    Args:
        model: The model whose weights set the threshold.
        sparsity: Global fraction of the weights to zero, ``0 <= s < 1``.
        layers: Compressible layer names; default every compressible layer.

    Returns:
        A plan with ``MagnitudePruning(s_l)`` for every layer (``s_l`` may be 0).

    Raises:
        ConfigError: ``sparsity`` out of range, an unknown layer, or a
            threshold that would prune a whole layer (leave it out, or lower
            ``sparsity``).
    """
    sparsity = check_real("sparsity", sparsity, 0.0, 1.0, hi_open=True)
    available = compressible_layers(model)
    names = list(available) if layers is None else list(dict.fromkeys(layers))
    for name in names:
        if name not in available:
            raise ConfigError("layers", name, list(available))
    if not names:
        raise ConfigError("layers", [], "at least one compressible layer")
    magnitudes = [available[n].weight.detach().abs().flatten().cpu() for n in names]
    sizes = [m.numel() for m in magnitudes]
    k = round(sparsity * sum(sizes))
    pruned = torch.zeros(sum(sizes), dtype=torch.bool)
    pruned[torch.argsort(torch.cat(magnitudes), stable=True)[:k]] = True
    plan = {}
    for name, part, size in zip(names, pruned.split(sizes), sizes, strict=True):
        count = int(part.sum())
        if count == size:
            raise ConfigError(
                "sparsity",
                sparsity,
                f"a value whose global threshold keeps some of {name!r} (or leave {name!r} out of layers)",
            )
        plan[name] = (MagnitudePruning(count / size),)
    return CompressionPlan(plan)
