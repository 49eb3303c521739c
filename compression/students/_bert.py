"""The ``bert_layer_drop`` student family: BERT-style encoders with fewer layers, copied from the teacher's."""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rayzor.compression._registry import check_int, check_real
from rayzor.compression.students._base import (
    Choice,
    IntRange,
    Params,
    StudentFamily,
    _import,
    _qualified_name,
    register_student,
)
from rayzor.errors import ConfigError

__all__ = ["BertLayerDropStudents", "build_layer_drop_encoder"]

#: Feed-forward width ratios the ``bert_layer_drop`` family samples.
_INTERMEDIATE_RATIOS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


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
            raise ConfigError(
                "teacher", wrapper.__qualname__, "a wrapper class defined at module level (packed files import it)"
            )
        return teacher.encoder, teacher
    raise ConfigError(
        "teacher",
        type(teacher).__name__,
        "a transformers encoder with .config and an .encoder.layer ModuleList (BertModel, ...), "
        "or a module holding one as .encoder whose constructor takes it alone (SentenceEncoder)",
    )


def _prunable_heads(layer: nn.Module) -> bool:
    att = getattr(getattr(layer, "attention", None), "self", None)
    out = getattr(getattr(layer, "attention", None), "output", None)
    return (
        att is not None
        and all(isinstance(getattr(att, p, None), nn.Linear) for p in ("query", "key", "value"))
        and isinstance(getattr(out, "dense", None), nn.Linear)
        and hasattr(att, "attention_head_size")
    )


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


def build_layer_drop_encoder(
    model_class: str,
    config: Mapping[str, Any],
    heads: int | None = None,
    init_kwargs: Mapping[str, Any] | None = None,
    attn_implementation: str | None = None,
    wrapper: str | None = None,
) -> nn.Module:
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
      0..L-1); not searched (a searched value is a scalar).
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

    factory = "rayzor.compression.students._bert:build_layer_drop_encoder"

    def params(self, teacher: nn.Module) -> Params:
        hf, _ = _split_encoder(teacher)
        n_layers = len(hf.encoder.layer)
        out: Params = {}
        if n_layers > 1:
            out["layers"] = IntRange(1, n_layers)
        if hasattr(hf.config, "intermediate_size"):
            out["intermediate_ratio"] = Choice(_INTERMEDIATE_RATIOS)
        n_heads = getattr(hf.config, "num_attention_heads", 1)
        if n_heads > 1 and all(_prunable_heads(layer) for layer in hf.encoder.layer):
            out["heads"] = IntRange(1, n_heads)
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
                raise ConfigError(
                    key,
                    params[key],
                    "parameters of student family 'bert_layer_drop': layers or keep, intermediate_ratio, heads",
                )
        keep = self.keep_list(teacher, params)
        config = hf.config.to_dict()
        config.pop("_name_or_path", None)  # a path on this machine, meaningless where the file is loaded
        config["num_hidden_layers"] = len(keep)
        if "intermediate_ratio" in params:
            if "intermediate_size" not in config:
                raise ConfigError(
                    "intermediate_ratio",
                    params["intermediate_ratio"],
                    f"not set: {type(hf.config).__name__} has no intermediate_size",
                )
            ratio = check_real("intermediate_ratio", params["intermediate_ratio"], 0.0, 1.0, lo_open=True)
            config["intermediate_size"] = max(1, round(ratio * config["intermediate_size"]))
        heads = None
        if params.get("heads") is not None:
            n_heads = getattr(hf.config, "num_attention_heads", 1)
            heads = check_int("heads", params["heads"], 1, n_heads)
            if not all(_prunable_heads(layer) for layer in hf.encoder.layer):
                raise ConfigError(
                    "heads",
                    heads,
                    f"not set: {type(hf).__name__} layers lack BERT's "
                    "attention.self.{query,key,value} / attention.output.dense",
                )
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
            raise ConfigError(
                "teacher", kwargs["wrapper"], f"a wrapper constructible from the encoder alone ({exc})"
            ) from exc
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
