"""rayzor's compression engine: per-layer factorisation, pruning and quantization plans.

Typical use::

    plan = CompressionPlan({"conv1": (MagnitudePruning(0.5), UniformQuantization(4)),
                            "fc1": (LowRank(rank_ratio=0.25), KMeansQuantization(4))})
    compressed = compress(model, plan)
    size_bytes = save_packed(compressed, "model.rzp", arch={"factory": "pkg.mod:build", "kwargs": {}},
                             entropy="lzma")
    model2, info = load_packed("model.rzp")
"""

from compression._bitpack import pack_bits, unpack_bits
from compression._engine import CompressedModel, apply_structure, compress, compressible_layers, replace_module
from compression._methods import (
    BinaryQuantization,
    HalfPrecision,
    KMeansQuantization,
    LowRank,
    MagnitudePruning,
    TernaryQuantization,
    UniformQuantization,
)
from compression._metrics import measure_latency, model_stats, state_dict_bytes
from compression._onnx import OrtModule, export_onnx, max_abs_diff, measure_onnx_latency, quantize_onnx_int8
from compression._packed import (
    ENTROPY_CODECS,
    PackedFormatError,
    PackedInfo,
    load_packed,
    read_packed_info,
    save_packed,
)
from compression._plan import CompressionPlan, FinetuneConfig
from compression._registry import MethodConfig, get_method, list_methods, register_method
from compression._weights import CompressedWeight
from compression.errors import ConfigError, RayzorError

__all__ = [
    # errors
    "ConfigError",
    "RayzorError",
    "PackedFormatError",
    # methods
    "MethodConfig",
    "MagnitudePruning",
    "UniformQuantization",
    "KMeansQuantization",
    "BinaryQuantization",
    "TernaryQuantization",
    "HalfPrecision",
    "LowRank",
    "register_method",
    "list_methods",
    "get_method",
    # plans
    "CompressionPlan",
    "FinetuneConfig",
    # engine
    "compressible_layers",
    "compress",
    "CompressedModel",
    "CompressedWeight",
    "replace_module",
    "apply_structure",
    # ONNX export and int8 execution
    "OrtModule",
    "export_onnx",
    "max_abs_diff",
    "measure_onnx_latency",
    "quantize_onnx_int8",
    # packed artifacts
    "save_packed",
    "load_packed",
    "read_packed_info",
    "PackedInfo",
    "ENTROPY_CODECS",
    "pack_bits",
    "unpack_bits",
    # metrics
    "state_dict_bytes",
    "measure_latency",
    "model_stats",
]
