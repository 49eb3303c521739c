"""rayzor's compression engine: per-layer pruning and quantization plans.

Typical use::

    plan = CompressionPlan({"conv1": (MagnitudePruning(0.5), UniformQuantization(4))})
    compressed = compress(model, plan)
    size_bytes = save_packed(compressed, "model.rzp", arch={"factory": "pkg.mod:build", "kwargs": {}})
    model2, info = load_packed("model.rzp")
"""

from compression._bitpack import pack_bits, unpack_bits
from compression._engine import CompressedModel, compress, compressible_layers
from compression._methods import MagnitudePruning, UniformQuantization
from compression._metrics import measure_latency, state_dict_bytes
from compression._packed import PackedFormatError, PackedInfo, load_packed, read_packed_info, save_packed
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
    # packed artifacts
    "save_packed",
    "load_packed",
    "read_packed_info",
    "PackedInfo",
    "pack_bits",
    "unpack_bits",
    # metrics
    "state_dict_bytes",
    "measure_latency",
]
