"""rayzor's compression engine: per-layer structure, factorisation, pruning and quantization plans.

Typical use::

    plan = CompressionPlan({"conv1": (MagnitudePruning(0.5), UniformQuantization(4)),
                            "fc1": (LowRank(rank_ratio=0.25), KMeansQuantization(4))})
    compressed = compress(model, plan)
    size_bytes = save_packed(compressed, "model.rzp", arch={"factory": "pkg.mod:build", "kwargs": {}},
                             entropy="lzma")
    model2, info = load_packed("model.rzp")

New methods register a frozen :class:`MethodConfig` dataclass and a handler
with :func:`register_method`; the handler takes its stage's arguments
(:class:`SparsifyHandler` etc.).
"""

from rayzor.compression._actquant import ActivationQuantization, QuantizedInput
from rayzor.compression._calibration import LayerStats, collect_layer_stats
from rayzor.compression._deploy import (
    ACCURACY_LEVELS,
    DEPLOY_KINDS,
    LATENCY_SECONDS,
    check_accuracy_level,
    deploy_kind,
    export_deploy,
    measure_deploy_latency,
    runtime_refusal,
)
from rayzor.compression._distill import DistillConfig, distill, kd_loss, teacher_outputs
from rayzor.compression._engine import CompressedModel, apply_structure, compress
from rayzor.compression._gptq import AWQ, GPTQ, SmoothQuant
from rayzor.compression._layers import COMPRESSIBLE_TYPES, compressible_layers
from rayzor.compression._lottery import LotteryTicket, lottery_ticket
from rayzor.compression._lowrank import LowRank, Tucker2
from rayzor.compression._metrics import measure_latency, model_stats, state_dict_bytes
from rayzor.compression._onnx import OrtModule, export_onnx, max_abs_diff, measure_onnx_latency, quantize_onnx_int8
from rayzor.compression._packed import (
    ENTROPY_CODECS,
    PackedFormatError,
    PackedInfo,
    load_packed,
    read_packed_info,
    save_packed,
)
from rayzor.compression._plan import CompressionPlan, FinetuneConfig, global_magnitude_plan
from rayzor.compression._pruning import MagnitudePruning, RandomPruning
from rayzor.compression._quantization import (
    GROUP_SIZES,
    BinaryQuantization,
    HalfPrecision,
    KMeansQuantization,
    TernaryQuantization,
    UniformQuantization,
)
from rayzor.compression._registry import (
    HANDLER_PROTOCOLS,
    STAGES,
    ActivationHandler,
    FactorizeHandler,
    MethodConfig,
    QuantizeHandler,
    SparsifyHandler,
    StructureHandler,
    get_handler,
    get_method,
    list_methods,
    register_method,
    unregister_method,
)
from rayzor.compression._structured import IMPORTANCES, ChannelPruning, HeadPruning, Importance, prune_structure
from rayzor.compression._weights import CompressedWeight
from rayzor.compression.students import (
    Choice,
    IntRange,
    StageCNN,
    StudentFamily,
    check_student,
    create_student,
    get_student_family,
    list_students,
    register_student,
)
from rayzor.errors import ConfigError, RayzorError

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
    "GROUP_SIZES",
    "GPTQ",
    "AWQ",
    "SmoothQuant",
    "LayerStats",
    "collect_layer_stats",
    "LowRank",
    "RandomPruning",
    "ChannelPruning",
    "HeadPruning",
    "IMPORTANCES",
    "Importance",
    "Tucker2",
    "ActivationQuantization",
    "QuantizedInput",
    # the method registry and its handler protocols
    "STAGES",
    "HANDLER_PROTOCOLS",
    "StructureHandler",
    "FactorizeHandler",
    "SparsifyHandler",
    "QuantizeHandler",
    "ActivationHandler",
    "register_method",
    "unregister_method",
    "list_methods",
    "get_method",
    "get_handler",
    # plans
    "CompressionPlan",
    "global_magnitude_plan",
    "FinetuneConfig",
    # engine
    "COMPRESSIBLE_TYPES",
    "compressible_layers",
    "compress",
    "CompressedModel",
    "CompressedWeight",
    "apply_structure",
    "prune_structure",
    # ONNX export and int8 execution
    "OrtModule",
    "export_onnx",
    "max_abs_diff",
    "measure_onnx_latency",
    "quantize_onnx_int8",
    # deployment: the ONNX artifact that stores codes and scales as they are
    "DEPLOY_KINDS",
    "deploy_kind",
    "runtime_refusal",
    "export_deploy",
    "check_accuracy_level",
    "ACCURACY_LEVELS",
    "measure_deploy_latency",
    "LATENCY_SECONDS",
    # packed artifacts
    "save_packed",
    "load_packed",
    "read_packed_info",
    "PackedInfo",
    "ENTROPY_CODECS",
    # student architectures
    "StudentFamily",
    "StageCNN",
    "register_student",
    "create_student",
    "list_students",
    "get_student_family",
    "check_student",
    "Choice",
    "IntRange",
    # distillation and recovery training
    "DistillConfig",
    "distill",
    "kd_loss",
    "teacher_outputs",
    "LotteryTicket",
    "lottery_ticket",
    # metrics
    "state_dict_bytes",
    "measure_latency",
    "model_stats",
]
