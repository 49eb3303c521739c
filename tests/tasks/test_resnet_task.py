"""The resnet18 task: seeded random ResNet-18, scored by fidelity to its fp32 outputs."""

from __future__ import annotations

import copy
import pickle
import sys

import pytest
import torch
from torch import nn

from rayzor.compression import CompressionPlan, FinetuneConfig, compress, load_packed, save_packed
from rayzor.errors import ConfigError, MissingExtraError
from rayzor.tasks import ReferencedImages, build_resnet18, create_task, list_tasks, logit_fidelity

pytestmark = pytest.mark.slow

transformers = pytest.importorskip("transformers", reason='resnet18 needs transformers: pip install -e ".[minilm]"')


@pytest.fixture(scope="module")
def resnet():
    # Short splits: the model is full size (11.7 M parameters).
    return create_task("resnet18", n_train=64, n_val=16, n_test=8)


def _searched_convs(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ".encoder." in n]


def test_registered_and_fp32_scores_perfectly(resnet):
    assert "resnet18" in list_tasks()
    assert resnet.metric == "fidelity"
    for split in ("val", "test"):
        assert resnet.baseline[split]["fidelity"] == pytest.approx(1.0, abs=1e-6)
        assert resnet.baseline[split]["top1_agreement"] == 1.0
    assert sum(p.numel() for p in resnet.model.parameters()) == 11_689_512
    assert resnet.model(resnet.example_input).shape == (1, 1000)


def test_targets_are_fp32_top1_and_vary_per_image(resnet):
    val = resnet.data["val"]
    images, labels = val.tensors
    assert images.shape == (16, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(labels, resnet.model(images).argmax(dim=1), rtol=0, atol=0)
    # The calibration is what makes the outputs depend on the image (raw init: ~1 class for all).
    assert labels.unique().numel() >= 8


def test_same_seed_same_task_other_seed_other_weights(resnet):
    again = create_task("resnet18", n_train=64, n_val=16, n_test=8)
    torch.testing.assert_close(again.data["val"].tensors[0], resnet.data["val"].tensors[0], rtol=0, atol=0)
    torch.testing.assert_close(again.data["val"].reference, resnet.data["val"].reference, rtol=0, atol=0)
    other = create_task("resnet18", seed=1, image_size=32, n_train=8, n_val=16, n_test=8)
    assert not torch.equal(other.data["val"].reference, resnet.data["val"].reference)


def test_fidelity_is_mean_cosine_and_agreement():
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(6, 5, generator=g)
    noisy = reference + 0.5 * torch.randn(6, 5, generator=g)

    class Fixed(nn.Module):
        def forward(self, x):
            return noisy[x[:, 0, 0, 0].long()]

    images = torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 1, 1).contiguous()
    metrics = logit_fidelity(Fixed(), ReferencedImages(images, reference))
    want = nn.functional.cosine_similarity(noisy, reference, dim=1).mean().item()
    assert metrics["fidelity"] == pytest.approx(want)
    assert metrics["top1_agreement"] == pytest.approx((noisy.argmax(1) == reference.argmax(1)).float().mean().item())


def test_quantization_lowers_fidelity_by_bit_width_and_packed_rebuilds(resnet, tmp_path):
    reference = copy.deepcopy(resnet.model)
    convs = _searched_convs(resnet.model)
    scores = {}
    for bits in (8, 4):
        compressed = compress(resnet.model, CompressionPlan.from_settings({n: {"bits": bits} for n in convs}))
        scores[bits] = resnet.score(compressed.model, "val")["fidelity"]
    assert 0.95 < scores[8] < 0.9999  # 8 bits: a little
    assert scores[4] < scores[8] - 0.05  # this random network is fragile at 4 bits
    size = save_packed(compressed, tmp_path / "r.safetensors", arch=resnet.arch)
    assert size == (tmp_path / "r.safetensors").stat().st_size
    assert size < 0.2 * sum(p.numel() * 4 for p in resnet.model.parameters())
    reloaded, _ = load_packed(tmp_path / "r.safetensors")
    x = resnet.data["val"].tensors[0][:4]
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), compressed.model(x), rtol=0, atol=0)
    for a, b in zip(reference.state_dict().values(), resnet.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the fp32 model is never modified


def test_distilling_recovery_fine_tune_raises_fidelity(resnet):
    convs = _searched_convs(resnet.model)
    settings = {n: {"bits": 5} for n in convs}
    before = resnet.score(compress(resnet.model, CompressionPlan.from_settings(settings)).model, "val")
    # Soft targets (distill_alpha=1) match the fidelity metric; plain cross-entropy on top-1 over-sharpens.
    finetune = FinetuneConfig(epochs=2, lr=1e-4, batch_size=32, distill_alpha=1.0, temperature=1.0, qat=True)
    tuned = compress(
        resnet.model,
        CompressionPlan.from_settings(settings, finetune=finetune),
        train_loader=resnet.loader("train", shuffle=True),
        loss_fn=resnet.loss_fn,
    )
    after = resnet.score(tuned.model, "val")
    assert after["fidelity"] > before["fidelity"] + 0.03


def test_task_survives_pickle(resnet):
    clone = pickle.loads(pickle.dumps(resnet))
    assert clone.score(clone.model, "val")["fidelity"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(("options", "field"), [({"image_size": 16}, "image_size"), ({"n_val": 0}, "n_val")])
def test_invalid_options(options, field):
    with pytest.raises(ConfigError, match=f"task_options.{field}"):
        create_task("resnet18", **options)


def test_missing_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[minilm\]"'):
        build_resnet18()
