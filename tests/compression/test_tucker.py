"""Tucker-2 factorisation of conv kernels (Kim et al. 2016)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rayzor.compression import CompressionPlan, ConfigError, Tucker2, compress, get_handler


def _hosvd_reconstruction(w: torch.Tensor, r_out: int, r_in: int) -> torch.Tensor:
    """Truncated HOSVD on the two channel modes, written out independently of the library."""
    w = w.detach().double()
    u0 = torch.linalg.svd(w.reshape(w.shape[0], -1))[0][:, :r_out]
    u1 = torch.linalg.svd(w.transpose(0, 1).reshape(w.shape[1], -1))[0][:, :r_in]
    core = torch.tensordot(torch.tensordot(w, u0, dims=([0], [0])), u1, dims=([0], [0]))  # (*k, r_out, r_in)
    core = core.permute(-2, -1, *range(w.dim() - 2))  # (r_out, r_in, *k)
    return torch.tensordot(torch.tensordot(core, u0, dims=([0], [1])), u1, dims=([0], [1])).permute(
        -2, -1, *range(w.dim() - 2)
    )


def _composed_kernel(seq: nn.Sequential) -> torch.Tensor:
    first, core, last = (m.weight.detach().double() for m in seq)
    return torch.einsum("oa,ab...,bi->oi...", last.flatten(1), core, first.flatten(1))


@pytest.mark.parametrize(
    "make",
    [
        lambda: nn.Conv2d(8, 12, 3, stride=2, padding=1),
        lambda: nn.Conv2d(6, 10, (3, 5), padding=(1, 2), dilation=(2, 1), bias=False),
        lambda: nn.Conv1d(8, 12, 5, padding=2),
    ],
    ids=["conv2d", "conv2d-dilated", "conv1d"],
)
def test_reconstruction_is_the_truncated_hosvd(make):
    torch.manual_seed(0)
    conv = make()
    out = compress(nn.Sequential(conv), CompressionPlan({"0": (Tucker2(rank_ratio=0.5),)}))
    seq = out.model[0]
    r_out, r_in = out.structure["0"]["rank_out"], out.structure["0"]["rank_in"]
    assert (r_out, r_in) == (round(0.5 * conv.out_channels), round(0.5 * conv.in_channels))
    assert [m.weight.shape[:2] for m in seq] == [(r_in, conv.in_channels), (r_out, r_in), (conv.out_channels, r_out)]
    expected = _hosvd_reconstruction(conv.weight, r_out, r_in)
    torch.testing.assert_close(_composed_kernel(seq), expected, rtol=1e-5, atol=1e-6)
    # the three convs compute the reconstructed conv: same stride, padding, dilation, bias
    x = torch.randn(2, conv.in_channels, *([11] * (conv.weight.dim() - 2)))
    fn = nn.functional.conv2d if isinstance(conv, nn.Conv2d) else nn.functional.conv1d
    with torch.no_grad():
        ref = fn(x, expected.float(), conv.bias, conv.stride, conv.padding, conv.dilation)
        torch.testing.assert_close(out.model(x), ref, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in seq.parameters()) < sum(p.numel() for p in conv.parameters())


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
def test_full_ranks_reproduce_the_layer(padding_mode):
    torch.manual_seed(1)
    conv = nn.Conv2d(5, 7, 3, padding=1, padding_mode=padding_mode)
    new, spec = get_handler(Tucker2(rank_ratio=1.0))(conv, Tucker2(rank_ratio=1.0))  # validate would refuse: no saving
    assert spec == {"rank_out": 7, "rank_in": 5}
    x = torch.randn(3, 5, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(new(x), conv(x), rtol=1e-5, atol=1e-5)
    assert Tucker2.rebuild(conv, spec)[1].padding_mode == padding_mode


def test_energy_picks_smallest_rank_per_mode():
    torch.manual_seed(2)
    conv = nn.Conv2d(12, 16, 3)
    out = compress(nn.Sequential(conv), CompressionPlan({"0": (Tucker2(energy=0.6),)}))
    w = conv.weight.detach().double()
    for mode, key in ((0, "rank_out"), (1, "rank_in")):
        s2 = torch.linalg.svdvals(w.movedim(mode, 0).reshape(w.shape[mode], -1)) ** 2
        share = torch.cumsum(s2, 0) / s2.sum()
        r = out.structure["0"][key]
        assert share[r - 1] >= 0.6 and (r == 1 or share[r - 2] < 0.6)


def test_rank_that_saves_nothing_names_the_largest_useful_one():
    module = nn.Sequential(nn.Conv2d(8, 16, 3))
    match = r"plan.layers\['0'\].tucker2.rank_ratio: got 0.9.*at most rank_ratio=0.84"
    with pytest.raises(ConfigError, match=match) as exc:
        CompressionPlan({"0": (Tucker2(rank_ratio=0.9),)}).validate(module)
    assert "ranks out=13, in=7" in str(exc.value)
    CompressionPlan({"0": (Tucker2(rank_ratio=0.84),)}).validate(module)  # the named one is accepted
    with pytest.raises(ConfigError):
        CompressionPlan({"0": (Tucker2(rank_ratio=0.85),)}).validate(module)
    with pytest.raises(ConfigError, match="no ranks save parameters"):
        compress(nn.Sequential(nn.Conv2d(2, 2, 1)), CompressionPlan({"0": (Tucker2(rank_ratio=0.5),)}))


@pytest.mark.parametrize(
    ("module", "match"),
    [
        (nn.Conv2d(4, 8, 3, groups=2), r"tucker2.groups: got 2; valid: 1: Tucker-2 needs a full"),
        (nn.Linear(16, 16), "got 'Linear'.*low_rank factorises Linear"),
    ],
)
def test_unsupported_layers_refused(module, match):
    with pytest.raises(ConfigError, match=match):
        compress(nn.Sequential(module), CompressionPlan({"0": (Tucker2(rank_ratio=0.25),)}))


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({}, "exactly one"),
        ({"rank_ratio": 0.5, "energy": 0.5}, "exactly one"),
        ({"rank_ratio": 0.0}, "(0.0, 1.0]"),
        ({"energy": 1.5}, "(0.0, 1.0]"),
    ],
)
def test_bad_arguments(kwargs, text):
    with pytest.raises(ConfigError, match="tucker2") as exc:
        Tucker2(**kwargs)
    assert text in str(exc.value)
