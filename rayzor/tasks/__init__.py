"""Tasks: a model, its data split and how to score it.

``create_task("digits")`` gives the embedded default, ``create_task("minilm")``
the real all-MiniLM-L6-v2 (``minilm`` extra), ``create_task(
"resnet18")`` a seeded random ResNet-18 scored by fidelity to its fp32 outputs; ``create_task(
"mypkg.mymodule:make_task")`` loads a user's task, a function returning a
:class:`Task`.
"""

from rayzor.tasks._base import (
    CALIBRATION_BATCHES,
    Task,
    TaskLoadError,
    create_task,
    list_tasks,
    register_task,
    resolve_callable,
)
from rayzor.tasks._cache import cache_dir, save_cached
from rayzor.tasks._digits import DigitsCNN, digits_task
from rayzor.tasks._minilm import (
    MissingExtraError,
    SentenceEncoder,
    build_encoder,
    embedding_fidelity,
    minilm_task,
    reference_texts,
)
from rayzor.tasks._resnet import ReferencedImages, ResNetLogits, build_resnet18, logit_fidelity, resnet18_task

__all__ = [
    "CALIBRATION_BATCHES",
    "DigitsCNN",
    "MissingExtraError",
    "ReferencedImages",
    "ResNetLogits",
    "SentenceEncoder",
    "Task",
    "TaskLoadError",
    "build_encoder",
    "build_resnet18",
    "cache_dir",
    "create_task",
    "digits_task",
    "embedding_fidelity",
    "list_tasks",
    "logit_fidelity",
    "minilm_task",
    "reference_texts",
    "register_task",
    "resnet18_task",
    "resolve_callable",
    "save_cached",
]
