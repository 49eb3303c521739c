"""The ``resnet18`` task: a seeded random ResNet-18 scored by fidelity to its own fp32 outputs.

transformers' ``ResNetForImageClassification`` in the torchvision ResNet-18
layout (He et al. 2016, https://arxiv.org/abs/1512.03385) with random weights
from a fixed seed: nothing is downloaded, so the task measures how faithfully
a compressed model reproduces the fp32 one. Needs ``transformers`` (the
``minilm`` extra).

A fresh ResNet maps almost every input to one class, so the BatchNorm
statistics are set from the train images and the classifier bias centres the
mean train logit; the model is then fixed. Inputs are seeded N(0, 1) images,
targets the fp32 top-1 classes; metrics: ``fidelity`` (mean cosine similarity
of compressed vs fp32 logits, primary) and ``top1_agreement``. A random net
has no margin: 8-bit weights keep fidelity near 0.99, 4-bit ones drop it
below 0.5, and recovery should distill the fp32 soft targets
(``recovery.distill_alpha: 1``) rather than train on the top-1 classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import TensorDataset

from rayzor.errors import ConfigError
from rayzor.tasks._base import Task, register_task
from rayzor.tasks._minilm import MissingExtraError

__all__ = ["ReferencedImages", "ResNetLogits", "build_resnet18", "logit_fidelity", "resnet18_task"]

_EXTRA_HINT = (
    'the resnet18 task needs transformers, which is not installed: pip install -e ".[minilm]" '
    "(or pip install transformers)"
)
#: Images per forward pass when scoring (bounds activation memory at larger image sizes).
_CHUNK = 32


class ResNetLogits(nn.Module):
    """A transformers image classifier that returns its logits tensor (not a ModelOutput).

    Args:
        net: A ``ResNetForImageClassification``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixels).logits


def build_resnet18(num_labels: int = 1000, seed: int = 0) -> ResNetLogits:
    """ResNet-18 (torchvision layout) with random weights drawn from ``seed``.

    Also the ``arch`` factory of packed files: they store every weight and
    buffer, so the seed only matters for the task's own model. The global
    torch RNG of the caller is left as it was.

    Raises:
        MissingExtraError: ``transformers`` is not installed.
    """
    try:
        from transformers import ResNetConfig, ResNetForImageClassification
    except ImportError:
        raise MissingExtraError(_EXTRA_HINT) from None
    config = ResNetConfig(
        layer_type="basic",
        depths=[2, 2, 2, 2],
        hidden_sizes=[64, 128, 256, 512],
        embedding_size=64,
        num_labels=num_labels,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNetLogits(ResNetForImageClassification(config)).eval()


class ReferencedImages(TensorDataset):
    """``(image, fp32 top-1 class)`` pairs that also hold the fp32 logits.

    Items stay pairs, so fine-tuning and calibration loaders see ordinary
    classification data; :func:`logit_fidelity` reads ``reference``.

    Args:
        images: ``(n, 3, h, w)`` inputs.
        reference: ``(n, classes)`` fp32 logits of those images.
    """

    def __init__(self, images: torch.Tensor, reference: torch.Tensor) -> None:
        super().__init__(images, reference.argmax(dim=1))
        self.reference = reference


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(images[i : i + _CHUNK]) for i in range(0, len(images), _CHUNK)]).float()


def logit_fidelity(model: nn.Module, dataset: ReferencedImages) -> dict[str, float]:
    """Mean cosine of ``model``'s logits to the fp32 logits, and top-1 agreement."""
    images, labels = dataset.tensors
    got = _logits(model, images)
    cosine = nn.functional.cosine_similarity(got, dataset.reference, dim=1).mean().item()
    return {"fidelity": cosine, "top1_agreement": (got.argmax(dim=1) == labels).float().mean().item()}


@torch.no_grad()
def _calibrate(model: ResNetLogits, images: torch.Tensor) -> None:
    """Fit the BatchNorm statistics and centre the logits on ``images`` (see the module docstring)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: every chunk counts the same
    model.train()
    for i in range(0, len(images), _CHUNK):
        model(images[i : i + _CHUNK])
    model.eval()
    for bn in norms:
        bn.momentum = 0.1  # back to the default, for a recovery fine-tune
    classifier = model.net.classifier[-1]
    classifier.bias -= _logits(model, images).mean(dim=0)


@register_task("resnet18")
def resnet18_task(
    seed: int = 0, image_size: int = 64, n_train: int = 64, n_val: int = 32, n_test: int = 32, batch_size: int = 32
) -> Task:
    """ResNet-18 (random init, seed ``seed``) scored by logit fidelity to its fp32 self.

    Args:
        seed: Seeds the weights; the images are drawn with ``seed + 1``.
        image_size: Height and width of the synthetic images (>= 32: the
            network downsamples 32 times).
        n_train: Images for calibration and the recovery fine-tune.
        n_val: Images the search scores.
        n_test: Images for an export's final report.
        batch_size: Fine-tuning and evaluation batch size.

    Raises:
        ConfigError: an option out of range.
        MissingExtraError: ``transformers`` is not installed.
    """
    if image_size < 32:
        raise ConfigError("task_options.image_size", image_size, "an integer >= 32")
    for field, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("batch_size", batch_size)):
        if value < 1:
            raise ConfigError(f"task_options.{field}", value, "an integer >= 1")
    model = build_resnet18(seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    images = {
        split: torch.randn(n, 3, image_size, image_size, generator=generator)
        for split, n in (("train", n_train), ("val", n_val), ("test", n_test))
    }
    _calibrate(model, images["train"])
    with torch.inference_mode():
        data = {split: ReferencedImages(x, _logits(model, x).clone()) for split, x in images.items()}
    kwargs: dict[str, Any] = {"num_labels": 1000}
    task = Task(
        name="resnet18",
        model=model,
        arch={"factory": "rayzor.tasks._resnet:build_resnet18", "kwargs": kwargs},
        data=data,
        evaluate=logit_fidelity,
        example_input=images["val"][:1].clone(),
        metric="fidelity",
        batch_size=batch_size,
    )
    task.baseline = {split: task.score(model, split) for split in ("val", "test")}
    return task
