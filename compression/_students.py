"""Student architectures: a registry of families a search can sample, build and rebuild.

A *student* is a smaller model trained to stand in for a task's teacher
(knowledge distillation, Hinton et al. 2015, https://arxiv.org/abs/1503.02531).
Like timm's model registry, each family is registered under a short name
(:func:`register_student`) and built with :func:`create_student`. A family
is a :class:`StudentFamily` with four methods:

* ``params(teacher)``: the searchable parameters valid for this teacher, as
  Optuna distributions (sample them define-by-run with
  :func:`suggest_student_params`);
* ``validate(teacher, **params)``: refuse bad parameters (ConfigError naming
  the field, value and valid range) before anything trains;
* ``build(teacher, **params)``: the student, as a plain ``nn.Module`` of
  Conv/Linear layers that the engine can compress;
* ``arch(teacher, **params)``: ``{"factory": "pkg.mod:fn", "kwargs": {...}}``
  (JSON), so that a packed artifact's loader rebuilds the untrained student
  with ``factory(**kwargs)``.

Registered families: ``cnn`` (:class:`StageCNN` students of plain CNN
teachers such as :class:`~rayzor.tasks.DigitsCNN`), ``bert_layer_drop``
(BERT-style encoders with fewer layers, copied from the teacher's, and
optionally fewer heads and a narrower feed-forward) and ``factory`` (a user
function ``module:function``).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import optuna
import torch
from torch import nn

from rayzor.compression._registry import check_int, check_real
from rayzor._resolve import resolve
from rayzor.errors import ConfigError, RayzorError

__all__ = [
    "StudentFamily",
    "StageCNN",
    "register_student",
    "create_student",
    "list_students",
    "get_student_family",
    "suggest_student_params",
    "check_student",
    "build_layer_drop_encoder",
    "build_factory_student",
    "WIDTH_MULTS",
]

#: Width multipliers the ``cnn`` family samples per stage and hidden layer.
WIDTH_MULTS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
#: Feed-forward width ratios the ``bert_layer_drop`` family samples.
_INTERMEDIATE_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
_MAX_BLOCKS = 2

Distributions = dict[str, optuna.distributions.BaseDistribution]


class StudentFamily:
    """One family of student architectures; subclass and register with :func:`register_student`.

    Subclasses implement :meth:`params` and :meth:`resolve`; the default
    :meth:`build` calls the ``arch`` factory on the resolved kwargs, so the
    built student and the one a packed loader rebuilds have the same
    architecture by construction. Override :meth:`build` to also initialise
    the student from the teacher.
    """

    #: ``package.module:function`` that :meth:`arch` names; called with the
    #: kwargs :meth:`resolve` returns.
    factory: str = ""

    def params(self, teacher: nn.Module) -> Distributions:
        """Searchable parameters valid for ``teacher``, by name.

        Raises:
            ConfigError: The family cannot make students of ``teacher``.
        """
        raise NotImplementedError

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``params`` and return the JSON kwargs of :attr:`factory`.

        Raises:
            ConfigError: Naming the parameter, its value and the valid range.
        """
        raise NotImplementedError

    def validate(self, teacher: nn.Module, **params: Any) -> None:
        """Refuse ``params`` for ``teacher`` before any training.

        Raises:
            ConfigError: Naming the parameter, its value and the valid range.
        """
        self.resolve(teacher, params)

    def build(self, teacher: nn.Module, **params: Any) -> nn.Module:
        """The (untrained unless the family copies teacher weights) student, in eval mode."""
        kwargs = self.resolve(teacher, params)
        return _import(self.factory, "factory")(**kwargs).eval()

    def arch(self, teacher: nn.Module, *, teacher_arch: Mapping[str, Any] | None = None,
             **params: Any) -> dict[str, Any]:
        """``{"factory", "kwargs"}`` that rebuilds the untrained student (for packed files).

        Args:
            teacher: The teacher model.
            teacher_arch: The task's ``arch`` of the teacher; only families
                whose students need the teacher to be rebuilt read it
                (``factory``), the others ignore it.
            **params: The student's parameters.
        """
        arch = {"factory": self.factory, "kwargs": self.resolve(teacher, params)}
        try:
            json.dumps(arch)
        except (TypeError, ValueError):
            raise ConfigError("params", dict(params),
                              "JSON-serialisable values (packed files store the arch as JSON)") from None
        return arch


_STUDENTS: dict[str, StudentFamily] = {}

F = TypeVar("F")


def register_student(name: str) -> Callable[[F], F]:
    """Register a :class:`StudentFamily` subclass (instantiated without arguments) or instance.

    Example::

        @register_student("tiny")
        class TinyStudents(StudentFamily): ...

    Raises:
        ConfigError: The name is taken or empty, or the object is not a family.
    """
    if not isinstance(name, str) or not name or name in _STUDENTS:
        raise ConfigError("student", name, f"a new family name (taken: {', '.join(list_students())})")

    def decorator(family: F) -> F:
        instance = family() if isinstance(family, type) and issubclass(family, StudentFamily) else family
        if not isinstance(instance, StudentFamily):
            raise ConfigError(f"register_student({name!r})", family, "a StudentFamily subclass or instance")
        _STUDENTS[name] = instance
        return family

    return decorator


def list_students() -> list[str]:
    """Names of the registered student families."""
    return sorted(_STUDENTS)


def get_student_family(name: str) -> StudentFamily:
    """The family registered under ``name``.

    Raises:
        ConfigError: No such family; the message lists the valid names.
    """
    try:
        return _STUDENTS[name]
    except (KeyError, TypeError):
        raise ConfigError("student", name, list_students()) from None


def create_student(name: str, teacher: nn.Module, **params: Any) -> nn.Module:
    """Build a student of family ``name`` for ``teacher`` (validated first).

    Raises:
        ConfigError: Unknown family, or parameters invalid for this teacher.
    """
    return get_student_family(name).build(teacher, **params)


def suggest_student_params(trial: optuna.Trial, family: str | StudentFamily, teacher: nn.Module,
                           prefix: str = "student.") -> dict[str, Any]:
    """Sample a family's parameters in an Optuna trial (define-by-run).

    Each parameter ``p`` is suggested as ``prefix + p`` through the public
    ``suggest_*`` API, so the study records it like any other dimension.

    Returns:
        The sampled values by parameter name (without ``prefix``), ready for
        ``build(teacher, **params)`` / ``arch(teacher, **params)``.
    """
    fam = get_student_family(family) if isinstance(family, str) else family
    out: dict[str, Any] = {}
    for name, dist in fam.params(teacher).items():
        key = prefix + name
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            out[name] = trial.suggest_categorical(key, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            out[name] = trial.suggest_int(key, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, optuna.distributions.FloatDistribution):
            out[name] = trial.suggest_float(key, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            raise ConfigError(f"{prefix}{name}", dist, "an Int, Float or Categorical Optuna distribution")
    return out


def _shape_signature(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, Mapping):
        return {k: _shape_signature(v) for k, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)):
        return [_shape_signature(v) for v in out]
    return type(out).__name__


def check_student(student: nn.Module, teacher: nn.Module, example_input: torch.Tensor) -> None:
    """Refuse a student whose output shape differs from the teacher's on ``example_input``.

    Tensors are compared by shape; mappings (e.g. a ``transformers``
    ``ModelOutput``) and tuples entry by entry. Neither model's train/eval
    mode is changed.

    Raises:
        ConfigError: Naming both shapes, or the input the student cannot take.
    """
    with torch.inference_mode():
        want = _shape_signature(teacher(example_input))
        try:
            got = _shape_signature(student(example_input))
        except Exception as exc:  # a student that cannot take the teacher's input is a config error
            raise ConfigError("student", type(student).__name__,
                              f"a model taking the teacher's input of shape {tuple(example_input.shape)} "
                              f"({type(exc).__name__}: {exc})") from exc
    if got != want:
        raise ConfigError("student output shape", got, f"the teacher's output shape {want}")


def _import(spec: str, field: str) -> Callable[..., Any]:
    try:
        obj = resolve(spec, field)
    except ConfigError:
        raise
    except RayzorError as exc:
        raise ConfigError(field, spec, f"an importable 'package.module:function' ({exc})") from None
    if not callable(obj):
        raise ConfigError(field, spec, "a callable 'package.module:function'")
    return obj


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# --------------------------------------------------------------------------- cnn


class StageCNN(nn.Module):
    """A plain CNN of conv stages and a classifier head, the ``cnn`` family's student.

    Stage ``s`` is ``blocks_per_stage[s]`` 3x3 (``kernel_size``) convs with
    ReLU, the first changing the channels to ``stage_widths[s]``; convs keep
    the spatial size (stride 1, "same" padding). One adaptive max-pool then
    brings the feature map to ``head_hw``, which is flattened into the
    ``hidden`` ReLU Linear layers and a final Linear of ``num_classes``
    outputs. With the teacher's ``head_hw`` the output shape matches the
    teacher's for every input the teacher takes; ``StageCNN(1, [16, 32],
    [1, 1], [64], 10, [4, 4])`` computes exactly :class:`DigitsCNN`'s
    function (its 2x2 max-pool of the 8x8 map is the adaptive pool to 4x4).

    Layer names are stable: ``stages.<s>.<b>`` (Conv2d), ``hidden.<i>`` and
    ``classifier`` (Linear).

    Args:
        in_channels: Input channels.
        stage_widths: Output channels of each stage.
        blocks_per_stage: Convs per stage (same length as ``stage_widths``).
        hidden: Widths of the hidden Linear layers (may be empty).
        num_classes: Outputs of the last Linear.
        head_hw: Spatial size ``(h, w)`` after the pool.
        kernel_size: Odd conv kernel size.
    """

    def __init__(self, in_channels: int, stage_widths: Sequence[int], blocks_per_stage: Sequence[int],
                 hidden: Sequence[int], num_classes: int, head_hw: Sequence[int] = (4, 4),
                 kernel_size: int = 3) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 1)
        if kernel_size % 2 != 1:
            raise ConfigError("kernel_size", kernel_size, "an odd integer >= 1 (same padding)")
        check_int("kernel_size", kernel_size, 1)
        if not stage_widths or len(blocks_per_stage) != len(stage_widths):
            raise ConfigError("blocks_per_stage", list(blocks_per_stage),
                              f"one block count per stage ({len(stage_widths)} stages, at least one)")
        if len(head_hw) != 2:
            raise ConfigError("head_hw", list(head_hw), "two positive integers (h, w)")
        stages = []
        channels = in_channels
        for s, (width, blocks) in enumerate(zip(stage_widths, blocks_per_stage)):
            check_int(f"stage_widths[{s}]", width, 1)
            check_int(f"blocks_per_stage[{s}]", blocks, 1)
            convs = []
            for _ in range(blocks):
                convs.append(nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2))
                channels = width
            stages.append(nn.Sequential(*convs))
        self.stages = nn.ModuleList(stages)
        self.head_hw = tuple(check_int("head_hw", v, 1) for v in head_hw)
        self.pool = nn.AdaptiveMaxPool2d(self.head_hw)
        features = channels * self.head_hw[0] * self.head_hw[1]
        layers = []
        for i, width in enumerate(hidden):
            check_int(f"hidden[{i}]", width, 1)
            layers.append(nn.Linear(features, width))
            features = width
        self.hidden = nn.ModuleList(layers)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            for conv in stage:
                x = torch.relu(conv(x))
        x = torch.flatten(self.pool(x), 1)
        for fc in self.hidden:
            x = torch.relu(fc(x))
        return self.classifier(x)


def _describe_cnn(teacher: nn.Module) -> dict[str, Any]:
    """Stages (Conv2d, in order), hidden Linears and head of a plain CNN teacher."""
    modules = list(teacher.named_modules())
    convs = [(i, n, m) for i, (n, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    linears = [(i, n, m) for i, (n, m) in enumerate(modules) if isinstance(m, nn.Linear)]
    valid = "a plain CNN: Conv2d layers (chained, groups=1) registered before chained Linear layers, like DigitsCNN"
    if not convs or not linears or convs[-1][0] > linears[0][0]:
        raise ConfigError("teacher", type(teacher).__name__, valid)
    for (_, _, a), (_, _, b) in zip(convs, convs[1:]):
        if a.out_channels != b.in_channels:
            raise ConfigError("teacher", type(teacher).__name__, valid)
    for (_, _, a), (_, _, b) in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise ConfigError("teacher", type(teacher).__name__, valid)
    if any(m.groups != 1 for _, _, m in convs):
        raise ConfigError("teacher", type(teacher).__name__, valid)
    last = convs[-1][2].out_channels
    area, rest = divmod(linears[0][2].in_features, last)
    if rest:
        raise ConfigError("teacher", type(teacher).__name__,
                          f"{valid} (the first Linear's inputs, {linears[0][2].in_features}, "
                          f"must be a multiple of the last conv's {last} channels)")
    side = math.isqrt(area)
    # The flattened grid is assumed square (h = w) when it can be; otherwise one column.
    head_hw = [side, side] if side * side == area else [area, 1]
    return {
        "in_channels": convs[0][2].in_channels,
        "stages": [(n, m.out_channels) for _, n, m in convs],
        "hidden": [(n, m.out_features) for _, n, m in linears[:-1]],
        "num_classes": linears[-1][2].out_features,
        "head_hw": head_hw,
    }


@register_student("cnn")
class CNNStudents(StudentFamily):
    """:class:`StageCNN` students of plain CNN teachers (convs, then Linears).

    Each teacher conv is one stage. Parameters, named after the teacher's
    layers: ``width_mult.<conv>`` and ``width_mult.<hidden linear>`` (one of
    :data:`WIDTH_MULTS`; any number in (0, 1] is accepted when given
    directly; width ``max(1, round(mult * teacher width))``) and
    ``blocks.<conv>`` (convs in that stage, 1..2). For DigitsCNN:
    ``width_mult.conv1``, ``width_mult.conv2``, ``width_mult.fc1``,
    ``blocks.conv1``, ``blocks.conv2``. Unset parameters keep the teacher's
    width and one block. Students start from a fresh random init (PyTorch's
    defaults, from the global RNG); shrinking widths and adding blocks
    change shapes, so teacher weights are not copied.
    """

    factory = "rayzor.compression._students:StageCNN"

    def params(self, teacher: nn.Module) -> Distributions:
        desc = _describe_cnn(teacher)
        out: Distributions = {}
        for name, _ in desc["stages"]:
            out[f"width_mult.{name}"] = optuna.distributions.CategoricalDistribution(WIDTH_MULTS)
            out[f"blocks.{name}"] = optuna.distributions.IntDistribution(1, _MAX_BLOCKS)
        for name, _ in desc["hidden"]:
            out[f"width_mult.{name}"] = optuna.distributions.CategoricalDistribution(WIDTH_MULTS)
        return out

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        desc = _describe_cnn(teacher)
        known = [f"width_mult.{n}" for n, _ in desc["stages"] + desc["hidden"]]
        known += [f"blocks.{n}" for n, _ in desc["stages"]]
        for key in params:
            if key not in known:
                raise ConfigError(key, params[key],
                                  f"parameters of student family 'cnn' for this teacher: {', '.join(known)}")

        def width(name: str, full: int) -> int:
            mult = check_real(f"width_mult.{name}", params.get(f"width_mult.{name}", 1.0), 0.0, 1.0, lo_open=True)
            return max(1, round(mult * full))

        return {
            "in_channels": desc["in_channels"],
            "stage_widths": [width(n, w) for n, w in desc["stages"]],
            "blocks_per_stage": [check_int(f"blocks.{n}", params.get(f"blocks.{n}", 1), 1, _MAX_BLOCKS)
                                 for n, _ in desc["stages"]],
            "hidden": [width(n, w) for n, w in desc["hidden"]],
            "num_classes": desc["num_classes"],
            "head_hw": desc["head_hw"],
        }


# --------------------------------------------------------------- bert_layer_drop


def _split_encoder(teacher: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """``(hf_model, wrapper)``: the transformers encoder and the module wrapping it, if any."""

    def is_encoder(m: Any) -> bool:
        layers = getattr(getattr(m, "encoder", None), "layer", None)
        return isinstance(m, nn.Module) and hasattr(m, "config") and isinstance(layers, nn.ModuleList)

    if is_encoder(teacher):
        return teacher, None
    if is_encoder(getattr(teacher, "encoder", None)):
        wrapper = type(teacher)
        if "<locals>" in wrapper.__qualname__:
            raise ConfigError("teacher", wrapper.__qualname__,
                              "a wrapper class defined at module level (packed files import it)")
        return teacher.encoder, teacher
    raise ConfigError("teacher", type(teacher).__name__,
                      "a transformers encoder with .config and an .encoder.layer ModuleList (BertModel, ...), "
                      "or a module holding one as .encoder whose constructor takes it alone (SentenceEncoder)")


def _prunable_heads(layer: nn.Module) -> bool:
    att = getattr(getattr(layer, "attention", None), "self", None)
    out = getattr(getattr(layer, "attention", None), "output", None)
    return (att is not None and all(isinstance(getattr(att, p, None), nn.Linear) for p in ("query", "key", "value"))
            and isinstance(getattr(out, "dense", None), nn.Linear) and hasattr(att, "attention_head_size"))


def _keep_heads(layer: nn.Module, heads: int) -> None:
    """Shrink one BERT layer's self-attention to its first ``heads`` heads (head size unchanged)."""
    att, out = layer.attention.self, layer.attention.output
    width = heads * att.attention_head_size
    for proj in ("query", "key", "value"):
        old = getattr(att, proj)
        setattr(att, proj, nn.Linear(old.in_features, width, bias=old.bias is not None))
    out.dense = nn.Linear(width, out.dense.out_features, bias=out.dense.bias is not None)
    # The forward reshapes to (-1, head_size): these attributes only keep the module self-describing.
    att.num_attention_heads = heads
    att.all_head_size = width


def build_layer_drop_encoder(model_class: str, config: Mapping[str, Any], heads: int | None = None,
                             init_kwargs: Mapping[str, Any] | None = None, attn_implementation: str | None = None,
                             wrapper: str | None = None) -> nn.Module:
    """Rebuild the untrained ``bert_layer_drop`` student (the family's ``arch`` factory).

    Args:
        model_class: ``package.module:Class`` of the transformers model.
        config: Its config as a dict (fewer layers, maybe a smaller
            ``intermediate_size``).
        heads: Attention heads kept per layer (``None``: all).
        init_kwargs: Extra constructor arguments (``add_pooling_layer``).
        attn_implementation: ``eager`` / ``sdpa``, as the teacher's.
        wrapper: ``package.module:Class`` taking the encoder alone
            (``SentenceEncoder``), or ``None``.
    """
    cls = _import(model_class, "model_class")
    cfg = cls.config_class.from_dict(dict(config))
    if attn_implementation is not None:
        cfg._attn_implementation = attn_implementation
    model = cls(cfg, **dict(init_kwargs or {}))
    if heads is not None:
        for layer in model.encoder.layer:
            _keep_heads(layer, heads)
    if wrapper is not None:
        model = _import(wrapper, "wrapper")(model)
    return model.eval()


@register_student("bert_layer_drop")
class BertLayerDropStudents(StudentFamily):
    """BERT-style encoders with fewer layers, initialised from the teacher's (DistilBERT).

    The student keeps a subset of the teacher's ``encoder.layer`` modules and
    starts from copies of their weights, plus the embeddings (and pooler,
    wrapper extras) unchanged: Sanh et al. 2019, "DistilBERT, a distilled
    version of BERT", https://arxiv.org/abs/1910.01108. Works for
    ``transformers`` encoders with ``.config`` and ``.encoder.layer``
    (BertModel, RobertaModel, ...) and for a module wrapping one as
    ``.encoder`` whose constructor takes the encoder alone (the minilm task's
    ``SentenceEncoder``).

    Parameters:

    * ``layers`` (searched, 1..L): keep that many layers spread evenly,
      ``round(i * (L - 1) / (layers - 1))``, which for 6 of 12 gives
      DistilBERT's ``[0, 2, 4, 7, 9, 11]``; default ``L // 2``. Or
    * ``keep``: the layer indices themselves (distinct, increasing, in
      0..L-1); not searched (Optuna distributions hold scalars).
    * ``intermediate_ratio`` (searched, 0.25..1): feed-forward width as a
      fraction of the teacher's; the student copies the *leading* slice of
      each kept layer's feed-forward (the first units of the up-projection
      and the matching input columns of the down-projection), with no
      importance ranking, so it is an approximation that fine-tuning must
      recover.
    * ``heads`` (searched, 1..H, BERT attention modules only): attention
      heads kept per layer, the *first* ``heads`` with their head size
      unchanged; the kept heads' query/key/value rows and output-projection
      columns are copied exactly, the others are dropped (the structure of
      head pruning, Michel et al. 2019, https://arxiv.org/abs/1905.10650,
      without its importance scores).
    """

    factory = "rayzor.compression._students:build_layer_drop_encoder"

    def params(self, teacher: nn.Module) -> Distributions:
        hf, _ = _split_encoder(teacher)
        n_layers = len(hf.encoder.layer)
        out: Distributions = {}
        if n_layers > 1:
            out["layers"] = optuna.distributions.IntDistribution(1, n_layers)
        if hasattr(hf.config, "intermediate_size"):
            out["intermediate_ratio"] = optuna.distributions.CategoricalDistribution(_INTERMEDIATE_RATIOS)
        n_heads = getattr(hf.config, "num_attention_heads", 1)
        if n_heads > 1 and all(_prunable_heads(layer) for layer in hf.encoder.layer):
            out["heads"] = optuna.distributions.IntDistribution(1, n_heads)
        return out

    @staticmethod
    def keep_list(teacher: nn.Module, params: Mapping[str, Any]) -> list[int]:
        """The teacher layer indices the student keeps, in order."""
        n_layers = len(_split_encoder(teacher)[0].encoder.layer)
        if "keep" in params and "layers" in params:
            raise ConfigError("keep", params["keep"], f"either keep or layers, not both (layers={params['layers']!r})")
        if "keep" not in params:
            k = check_int("layers", params.get("layers", max(1, n_layers // 2)), 1, n_layers)
            if k == 1:
                return [0]
            return [math.floor(i * (n_layers - 1) / (k - 1) + 0.5) for i in range(k)]
        keep = params["keep"]
        valid = f"a non-empty list of distinct, increasing layer indices in 0..{n_layers - 1}"
        if isinstance(keep, (str, bytes)) or not isinstance(keep, Sequence) or not keep:
            raise ConfigError("keep", keep, valid)
        for i in keep:
            if not isinstance(i, numbers.Integral) or isinstance(i, bool) or not 0 <= i < n_layers:
                raise ConfigError("keep", list(keep), f"{valid} ({i!r} is out of range)")
        if len(set(keep)) != len(keep):
            raise ConfigError("keep", list(keep), f"{valid} (repeats an index)")
        if list(keep) != sorted(keep):
            raise ConfigError("keep", list(keep), f"{valid} (not increasing)")
        return [int(i) for i in keep]

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        hf, wrapper = _split_encoder(teacher)
        for key in params:
            if key not in ("layers", "keep", "intermediate_ratio", "heads"):
                raise ConfigError(key, params[key], "parameters of student family 'bert_layer_drop': "
                                                    "layers or keep, intermediate_ratio, heads")
        keep = self.keep_list(teacher, params)
        config = hf.config.to_dict()
        config.pop("_name_or_path", None)  # a path on this machine, meaningless where the file is loaded
        config["num_hidden_layers"] = len(keep)
        if "intermediate_ratio" in params:
            if "intermediate_size" not in config:
                raise ConfigError("intermediate_ratio", params["intermediate_ratio"],
                                  f"not set: {type(hf.config).__name__} has no intermediate_size")
            ratio = check_real("intermediate_ratio", params["intermediate_ratio"], 0.0, 1.0, lo_open=True)
            config["intermediate_size"] = max(1, round(ratio * config["intermediate_size"]))
        heads = None
        if params.get("heads") is not None:
            n_heads = getattr(hf.config, "num_attention_heads", 1)
            heads = check_int("heads", params["heads"], 1, n_heads)
            if not all(_prunable_heads(layer) for layer in hf.encoder.layer):
                raise ConfigError("heads", heads, f"not set: {type(hf).__name__} layers lack BERT's "
                                                  "attention.self.{query,key,value} / attention.output.dense")
            heads = None if heads == n_heads else heads
        init_kwargs = {}
        if "add_pooling_layer" in inspect.signature(type(hf).__init__).parameters:
            init_kwargs["add_pooling_layer"] = getattr(hf, "pooler", None) is not None
        return {
            "model_class": _qualified_name(type(hf)),
            "config": config,
            "heads": heads,
            "init_kwargs": init_kwargs,
            "attn_implementation": getattr(hf.config, "_attn_implementation", None),
            "wrapper": None if wrapper is None else _qualified_name(type(wrapper)),
        }

    def build(self, teacher: nn.Module, **params: Any) -> nn.Module:
        """The student, every tensor copied from the teacher (see the class doc for which slice)."""
        keep = self.keep_list(teacher, params)
        kwargs = self.resolve(teacher, params)
        try:
            student = build_layer_drop_encoder(**kwargs)
        except TypeError as exc:  # a wrapper whose constructor wants more than the encoder
            raise ConfigError("teacher", kwargs["wrapper"],
                              f"a wrapper constructible from the encoder alone ({exc})") from exc
        prefix = "encoder.encoder.layer." if kwargs["wrapper"] else "encoder.layer."
        pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.(.*)$")
        source = teacher.state_dict()
        with torch.no_grad():
            for key, tensor in student.state_dict().items():
                match = pattern.match(key)
                src_key = f"{prefix}{keep[int(match[1])]}.{match[2]}" if match else key
                src = source[src_key]
                # Leading slice in every dimension the student narrowed (heads, feed-forward).
                tensor.copy_(src[tuple(slice(0, n) for n in tensor.shape)])
        return student


# ----------------------------------------------------------------------- factory


def build_factory_student(factory: str, teacher_arch: Mapping[str, Any], params: Mapping[str, Any]) -> nn.Module:
    """Rebuild a ``factory`` student: the untrained teacher from its arch, then ``factory(teacher, **params)``.

    The packed loader then loads the student's own weights, so the random
    weights of the rebuilt teacher never matter.
    """
    teacher = _import(str(teacher_arch.get("factory")), "teacher_arch.factory")(**dict(teacher_arch.get("kwargs", {})))
    return _import(factory, "factory")(teacher, **dict(params))


@register_student("factory")
class FactoryStudents(StudentFamily):
    """A user function ``factory="package.module:function"`` called as ``function(teacher, **params)``.

    It must return an ``nn.Module``. Its parameters are the user's and are
    not searched (``params`` is empty); register a :class:`StudentFamily`
    for searchable ones. ``arch`` needs ``teacher_arch`` (the task's
    ``arch``): a packed loader rebuilds the untrained teacher with it and
    calls the function on that (:func:`build_factory_student`).
    """

    factory = "rayzor.compression._students:build_factory_student"

    def params(self, teacher: nn.Module) -> Distributions:
        return {}

    def _function(self, params: Mapping[str, Any]) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
        rest = dict(params)
        spec = rest.pop("factory", None)
        fn = _import(spec, "factory")
        try:
            inspect.signature(fn).bind(None, **rest)
        except TypeError:
            raise ConfigError("params", rest, f"keyword arguments of {spec}{inspect.signature(fn)} "
                                              "after the teacher") from None
        except ValueError:  # no signature (builtins): let the call decide
            pass
        return fn, rest

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        self._function(params)
        rest = {k: v for k, v in params.items() if k != "factory"}
        return {"factory": params["factory"], "params": rest}

    def build(self, teacher: nn.Module, **params: Any) -> nn.Module:
        fn, rest = self._function(params)
        try:
            student = fn(teacher, **rest)
        except RayzorError:
            raise
        except Exception as exc:
            raise ConfigError("factory", params["factory"],
                              f"a function that builds the student ({type(exc).__name__}: {exc})") from exc
        if not isinstance(student, nn.Module):
            raise ConfigError("factory", params["factory"],
                              f"a function returning an nn.Module (got {type(student).__name__})")
        return student

    def arch(self, teacher: nn.Module, *, teacher_arch: Mapping[str, Any] | None = None,
             **params: Any) -> dict[str, Any]:
        if not isinstance(teacher_arch, Mapping) or not isinstance(teacher_arch.get("factory"), str):
            raise ConfigError("teacher_arch", teacher_arch,
                              "the task's arch {'factory': 'pkg.mod:fn', 'kwargs': {...}} "
                              "(a packed loader rebuilds the teacher to rebuild the student)")
        arch = super().arch(teacher, **params)
        arch["kwargs"]["teacher_arch"] = {"factory": teacher_arch["factory"],
                                          "kwargs": copy.deepcopy(dict(teacher_arch.get("kwargs", {})))}
        try:
            json.dumps(arch)
        except (TypeError, ValueError):
            raise ConfigError("teacher_arch", teacher_arch, "JSON-serialisable kwargs") from None
        return arch
