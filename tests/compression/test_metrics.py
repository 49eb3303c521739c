"""Compute metrics: parameters, non-zeros, FLOPs / MACs (torch's FLOP counter) and BitOps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayzor.compression import (
    CompressionPlan,
    ConfigError,
    LowRank,
    MagnitudePruning,
    UniformQuantization,
    compress,
    measure_latency,
    model_stats,
)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).eval()


def test_counts_by_hand():
    model, x = _net(), torch.randn(3, 2, 6, 6)
    stats = model_stats(model, x)
    conv_macs = 3 * 4 * 4 * 4 * (2 * 3 * 3)  # batch * out positions * out channels * kernel volume
    fc_macs = 3 * 64 * 5
    assert stats["macs"] == conv_macs + fc_macs and stats["flops"] == 2 * stats["macs"]
    assert stats["params"] == 4 * 2 * 9 + 4 + 64 * 5 + 5 == stats["nonzero_params"]
    assert stats["bitops"] == stats["macs"] * 32 * 32


def test_bitops_follow_bits_and_density():
    model, x = _net(), torch.randn(1, 2, 6, 6)
    base = model_stats(model, x)
    plan = CompressionPlan({"0": (UniformQuantization(4),), "3": (MagnitudePruning(0.5), UniformQuantization(8))})
    out = compress(model, plan)
    stats = model_stats(out.model, x, out.weights)
    conv_macs, fc_macs = 16 * 4 * 18, 64 * 5
    assert stats["bitops"] == pytest.approx(conv_macs * 4 * 32 + fc_macs * 0.5 * 8 * 32)
    assert stats["nonzero_params"] <= base["nonzero_params"] - 160 and stats["params"] == base["params"]


def test_low_rank_reduces_params_and_macs():
    model = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(2, 64)
    out = compress(model, CompressionPlan({"0": (LowRank(rank_ratio=0.25),)}))
    before, after = model_stats(model, x), model_stats(out.model, x, out.weights)
    assert after["params"] == 16 * 64 * 2 + 64 and after["macs"] == 2 * 16 * 64 * 2
    assert after["macs"] < before["macs"] and after["params"] < before["params"]


def test_latency_threads_restored():
    threads = torch.get_num_threads()
    assert measure_latency(_net(), torch.randn(4, 2, 6, 6), warmup=1, repeats=2, threads=1) > 0
    assert torch.get_num_threads() == threads
    with pytest.raises(ConfigError, match="threads: got 0"):
        measure_latency(_net(), torch.randn(1, 2, 6, 6), threads=0)


def test_bitops_count_quantized_activations(digits):
    from rayzor.compression import ActivationQuantization, CompressionPlan, UniformQuantization, compress, model_stats

    calibration = [digits.data["train"].tensors[0][:64]]
    stats = {}
    for act in (None, 8, 4):
        methods = (UniformQuantization(8),) + ((ActivationQuantization(act),) if act else ())
        cm = compress(digits.model, CompressionPlan({"fc1": methods}), calibration_data=calibration)
        stats[act] = model_stats(cm.model, digits.example_input, cm.weights)
    # fc1: 512 x 64 MACs at 8-bit weights; its inputs drop from 32 to 8 to 4 bits
    macs = 512 * 64
    assert stats[None]["bitops"] - stats[8]["bitops"] == macs * 8 * (32 - 8)
    assert stats[8]["bitops"] - stats[4]["bitops"] == macs * 8 * (8 - 4)
    assert stats[4]["macs"] == stats[None]["macs"]
