"""A user task: a tiny Hugging Face BERT text classifier, trained on the fly, offline.

Nothing is downloaded. The model is ``transformers.BertForSequenceClassification``
with a tiny random-init config (hidden 64, 2 layers, 2 heads); the tokenizer
is a word-level vocabulary built here from the training split; the data are
the sentences of the docstrings of four standard-library modules (``logging``,
``unittest``, ``threading``, ``tarfile``), each labelled by its module: four
classes, chance 25%, the fp32 baseline about 75% on validation. The sentence
set depends only on the Python minor version, so it is the same on every
machine with that Python.

Training takes a few seconds on 2 cores; the weights are cached in
``$RAYZOR_CACHE_DIR`` (default ``~/.cache/rayzor``), like the digits task's.
Use it from a config as ``task: examples.hf_text_classifier:make_task``,
with the repository root as the working directory:

    rayzor space show examples/hf_text_classifier.yaml
    rayzor sensitivity examples/hf_text_classifier.yaml
    rayzor search examples/hf_text_classifier.yaml
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import inspect
import json
import random
import re
import sys
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rayzor.errors import ConfigError
from rayzor.tasks import Task

__all__ = ["LABELS", "TextClassifier", "WordTokenizer", "accuracy", "build_model", "docstring_sentences", "make_task"]

#: The classes: a sentence's label is the module whose docstrings it comes from.
LABELS: tuple[str, ...] = ("logging", "unittest", "threading", "tarfile")
PAD, UNK, CLS = 0, 1, 2
# Bump when the data or the training recipe changes in a way the settings do not show.
_RECIPE_VERSION = 1
_WORD = re.compile(r"[a-z]+")


class TextClassifier(nn.Module):
    """``BertForSequenceClassification`` behind a one-tensor interface.

    rayzor's task interface passes one input tensor and gives the model's
    output to ``loss_fn`` and ``evaluate``: here token ids in, logits out (the
    attention mask is the non-padding positions; HF's ``ModelOutput`` is
    unwrapped to its ``logits``).
    """

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids, attention_mask=(ids != PAD).long()).logits


def build_model(
    vocab_size: int,
    num_labels: int = len(LABELS),
    max_length: int = 32,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
) -> TextClassifier:
    """The arch factory: the untrained model (random init), so a packed file loads anywhere."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length,
        num_labels=num_labels,
        pad_token_id=PAD,
    )
    config._attn_implementation = "eager"  # one attention path for torch, ONNX and packed reloads
    return TextClassifier(BertForSequenceClassification(config)).eval()


def _sentences(text: str) -> list[str]:
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
        if 4 <= len(_WORD.findall(sentence.lower())) <= 40:
            out.append(sentence.strip())
    return out


def docstring_sentences(modules: Sequence[str] = LABELS) -> list[tuple[str, int]]:
    """``(sentence, label)`` from the docstrings of each module, its public functions, classes and their methods.

    Public means the module's ``__all__``, and a class's methods those defined
    with it: a namespace also holds what other imports attached to it, which
    would make the data depend on what the process imported before. Sentences found in more than one
    module are dropped (their label would be ambiguous); the result is sorted.
    """
    found: dict[int, set[str]] = {}
    for label, name in enumerate(modules):
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for attr in sorted(module.__all__):
            obj = getattr(module, attr)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                docs.append(inspect.getdoc(obj) or "")
                if inspect.isclass(obj):
                    # only methods defined with the class: other packages patch some in (transformers: Logger.warning_advice)
                    docs += [
                        inspect.getdoc(m) or ""
                        for _, m in sorted(vars(obj).items())
                        if inspect.isfunction(m) and m.__module__ == obj.__module__
                    ]
        found[label] = {s for doc in docs for s in _sentences(doc)}
    seen = collections.Counter(s for sentences in found.values() for s in sentences)
    return sorted((s, label) for label, sentences in found.items() for s in sentences if seen[s] == 1)


class WordTokenizer:
    """Lower-cased words of the training split seen at least ``min_count`` times; the rest is ``[UNK]``.

    An id sequence is ``[CLS] w1 w2 ...``, truncated and padded with ``[PAD]`` (0) to ``max_length``.
    """

    def __init__(self, texts: Sequence[str], min_count: int = 2) -> None:
        counts = collections.Counter(w for t in texts for w in _WORD.findall(t.lower()))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        self.vocab = {w: i + 3 for i, w in enumerate(kept)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + 3

    def encode(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        ids = torch.full((len(texts), max_length), PAD, dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = [CLS, *(self.vocab.get(w, UNK) for w in _WORD.findall(text.lower()))][:max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        return ids


def accuracy(model: nn.Module, dataset: TensorDataset) -> dict[str, float]:
    """Top-1 accuracy (module-level, so the task pickles by reference into Ray)."""
    ids, labels = dataset.tensors
    logits = torch.cat([model(ids[i : i + 256]) for i in range(0, len(ids), 256)])
    return {"accuracy": (logits.argmax(dim=1) == labels).float().mean().item()}


def _train(model: nn.Module, train: TensorDataset, *, epochs: int, lr: float, seed: int) -> None:
    torch.manual_seed(seed)  # dropout
    threads = torch.get_num_threads()
    # 64-wide matrices: intra-op threads cost more than they give (and fight other processes).
    torch.set_num_threads(1)
    loader = torch.utils.data.DataLoader(
        train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    try:
        for _ in range(epochs):
            for ids, labels in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(ids), labels).backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()


def make_task(
    seed: int = 0, epochs: int = 8, lr: float = 2e-3, max_length: int = 32, hidden: int = 64, cache: bool = True
) -> Task:
    """Docstring-sentence classification with a tiny BERT: a seeded 60/20/20 split.

    Args:
        seed: Seeds the split, the initialisation and the training.
        epochs: Training epochs of the baseline (about 0.5 s each on one core).
        lr: AdamW learning rate.
        max_length: Tokens per sentence, ``[CLS]`` included (truncated / padded).
        hidden: BERT hidden size (2 layers, 2 heads, FFN 2 x hidden).
        cache: Reuse (and write) the trained weights in the rayzor cache folder.
    """
    if epochs < 1:
        raise ConfigError("task_options.epochs", epochs, "an integer >= 1")
    if max_length < 8 or hidden < 2 or hidden % 2:
        raise ConfigError(
            "task_options.max_length/hidden", (max_length, hidden), "max_length >= 8 and an even hidden >= 2"
        )
    from safetensors.torch import load_file

    from rayzor.tasks import cache_dir, save_cached  # the folder (and env var) of the embedded tasks' cache

    items = docstring_sentences()
    random.Random(seed).shuffle(items)
    n_train, n_val = int(0.6 * len(items)), int(0.2 * len(items))
    splits = {"train": items[:n_train], "val": items[n_train : n_train + n_val], "test": items[n_train + n_val :]}
    tokenizer = WordTokenizer([text for text, _ in splits["train"]])
    data = {
        name: TensorDataset(tokenizer.encode([t for t, _ in rows], max_length), torch.tensor([y for _, y in rows]))
        for name, rows in splits.items()
    }
    kwargs = {"vocab_size": tokenizer.vocab_size, "num_labels": len(LABELS), "max_length": max_length, "hidden": hidden}

    # The key covers the data too: docstrings change between Python versions.
    settings = {
        "seed": seed,
        "epochs": epochs,
        "lr": lr,
        **kwargs,
        "recipe": _RECIPE_VERSION,
        "python": list(sys.version_info[:2]),
        "data": hashlib.sha256(json.dumps(items).encode()).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    weights = cache_dir() / f"hf-text-{key}.safetensors"
    torch.manual_seed(seed)
    model = build_model(**kwargs)
    if cache and weights.exists():
        model.load_state_dict(load_file(weights))
        model.eval()
    else:
        _train(model, data["train"], epochs=epochs, lr=lr, seed=seed)
        if cache:
            save_cached(model.state_dict(), weights, settings)

    task = Task(
        name="hf_text",
        model=model,
        arch={"factory": "examples.hf_text_classifier:build_model", "kwargs": kwargs},
        data=data,
        evaluate=accuracy,
        example_input=data["val"].tensors[0][:1].clone(),
        batch_size=32,
    )
    task.baseline = {split: task.score(model, split) for split in ("val", "test")}
    return task
