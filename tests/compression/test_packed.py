from __future__ import annotations

import json
import os

import numpy as np
import pytest
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from rayzor.compression import (
    CompressionPlan,
    ConfigError,
    FinetuneConfig,
    KMeansQuantization,
    LowRank,
    MagnitudePruning,
    PackedFormatError,
    RayzorError,
    UniformQuantization,
    compress,
    load_packed,
    measure_latency,
    read_packed_info,
    save_packed,
    state_dict_bytes,
)
from tests.compression.tiny_models import FACTORY, tiny_net

ARCH = {"factory": FACTORY, "kwargs": {"width": 8, "num_classes": 10}}
LAYERS = ["conv1", "conv2", "fc1", "fc2"]


def _uniform(*methods):
    return CompressionPlan({n: tuple(methods) for n in LAYERS})


PLANS = {
    "dense_fp32": CompressionPlan({}),
    "sparse_fp32": _uniform(MagnitudePruning(0.6)),
    "dense_4bit": _uniform(UniformQuantization(4)),
    "sparse_3bit": _uniform(MagnitudePruning(0.5), UniformQuantization(3)),
    "16bit": _uniform(UniformQuantization(16)),
    "mixed": CompressionPlan(
        {
            "conv1": (UniformQuantization(8),),
            "conv2": (MagnitudePruning(0.95), UniformQuantization(2)),
            "fc1": (MagnitudePruning(0.3),),
        },
        FinetuneConfig(epochs=1, lr=1e-2),
    ),
}


def _pack(model, plan, path, loader=None, metadata=None):
    out = compress(model, plan, train_loader=loader, loss_fn=nn.functional.cross_entropy)
    return out, save_packed(out, path, arch=ARCH, metadata=metadata)


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_round_trip_identical_outputs(model, inputs, loader, tmp_path, plan_name):
    path = tmp_path / "m.rzp"
    out, size = _pack(model, PLANS[plan_name], path, loader, {"run": plan_name})
    assert size == os.path.getsize(path)
    loaded, info = load_packed(path)
    assert isinstance(loaded, type(model)) and not loaded.training
    assert info.plan == PLANS[plan_name] and info.metadata == {"run": plan_name} and info.arch == ARCH
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs), out.model(inputs), rtol=0, atol=0)
    for k, v in out.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
    for name, cw in out.weights.items():
        got = info.weights[name]
        assert (got.bits, got.shape) == (cw.bits, cw.shape)
        assert torch.equal(got.dense(), cw.dense())


def test_load_into_given_skeleton(model, inputs, tmp_path):
    out, _ = _pack(model, PLANS["sparse_3bit"], tmp_path / "m.rzp")
    skeleton = tiny_net()
    before = {k: v.clone() for k, v in skeleton.state_dict().items()}
    loaded, _ = load_packed(tmp_path / "m.rzp", skeleton)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), out.model(inputs))
    assert all(torch.equal(v, before[k]) for k, v in skeleton.state_dict().items())


def _layer_info(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return json.loads(header["__metadata__"]["layers"]), header


def test_mask_encoding_choice(model, tmp_path):
    path = tmp_path / "m.rzp"
    plan = CompressionPlan({"conv2": (MagnitudePruning(0.98),), "fc1": (MagnitudePruning(0.2),)})
    _pack(model, plan, path)
    layers, header = _layer_info(path)
    # 98% sparse: relative indices beat a 2304-bit bitmap and 2-byte absolute indices
    assert layers["conv2"]["mask"] == "relative" and header["conv2.weight@relative"]["dtype"] == "U8"
    symbols = layers["conv2"]["symbols"]
    assert header["conv2.weight@relative"]["shape"] == [-(-symbols * layers["conv2"]["index_bits"] // 8)]
    assert header["conv2.weight@relative"]["shape"][0] < min(-(-2304 // 8), 2 * layers["conv2"]["kept"])
    assert layers["fc1"]["mask"] == "bitmap"
    assert header["fc1.weight@bitmap"]["shape"] == [-(-32 * 64 // 8)]
    assert "conv2.weight" not in header and "conv1.weight" in header  # dense layer stored as is


def test_codes_stored_at_exact_bits(model, tmp_path):
    path = tmp_path / "m.rzp"
    _pack(model, CompressionPlan({"fc1": (UniformQuantization(3),)}), path)
    layers, header = _layer_info(path)
    assert layers["fc1"] == {
        "bits": 3,
        "kept": 2048,
        "mask": "dense",
        "shape": [32, 64],
        "scheme": "symmetric",
        "groups": 32,
    }
    assert header["fc1.weight@codes"]["dtype"] == "U8"
    assert header["fc1.weight@codes"]["shape"] == [2048 * 3 // 8]


def test_size_shrinks_with_bits_and_sparsity(model, tmp_path):
    def size(plan):
        return _pack(model, plan, tmp_path / "m.rzp")[1]

    by_bits = [size(_uniform(UniformQuantization(b))) for b in (16, 8, 4, 2)]
    assert by_bits == sorted(by_bits, reverse=True) and len(set(by_bits)) == 4
    by_sparsity = [size(_uniform(MagnitudePruning(s))) for s in (0.0, 0.5, 0.9, 0.95)]
    assert by_sparsity == sorted(by_sparsity, reverse=True) and len(set(by_sparsity)) == 4
    # 4-bit codes of half the weights plus a bitmap: well under a third of fp32, header included
    assert size(_uniform(MagnitudePruning(0.5), UniformQuantization(4))) < state_dict_bytes(model) / 2.8


def test_state_dict_bytes(model, tmp_path):
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert state_dict_bytes(model) == len(safetensors.torch.save(tensors))
    # An uncompressed packed file is the same tensors plus a bigger header.
    _, size = _pack(model, CompressionPlan({}), tmp_path / "m.rzp")
    assert state_dict_bytes(model) < size < state_dict_bytes(model) + 2048


def test_read_packed_info(model, tmp_path):
    _, _ = _pack(model, PLANS["sparse_3bit"], tmp_path / "m.rzp", metadata={"trial": "7"})
    info = read_packed_info(tmp_path / "m.rzp")
    assert info.plan == PLANS["sparse_3bit"] and info.metadata == {"trial": "7"} and set(info.weights) == set(LAYERS)


@pytest.mark.parametrize("entropy", [None, "lzma"])
def test_equal_models_pack_to_equal_bytes(model, tmp_path, entropy):
    """Two saves of one compressed model are byte-identical, so a packed file's hash identifies it."""
    out = compress(model, PLANS["sparse_3bit"])
    metadata = {"trial": "7", "search": "s", "note": "entrée"}  # safetensors would write these in any order
    sizes = [save_packed(out, tmp_path / f"{i}.rzp", arch=ARCH, metadata=metadata, entropy=entropy) for i in range(3)]
    files = [(tmp_path / f"{i}.rzp").read_bytes() for i in range(3)]
    assert files[0] == files[1] == files[2] and sizes[0] == len(files[0])
    _, header = _layer_info(tmp_path / "0.rzp")
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    loaded, info = load_packed(tmp_path / "0.rzp")
    assert info.metadata == metadata
    torch.testing.assert_close(loaded.state_dict(), out.model.state_dict(), rtol=0, atol=0)


def test_not_a_packed_file(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"definitely not safetensors")
    with pytest.raises(PackedFormatError, match="not a rayzor packed file"):
        load_packed(junk)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(2)}, plain)
    with pytest.raises(RayzorError, match="not a rayzor packed file"):
        read_packed_info(plain)


def test_unknown_format_version(model, tmp_path):
    path = tmp_path / "m.rzp"
    _pack(model, CompressionPlan({}), path)
    with safetensors.safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    safetensors.torch.save_file(tensors, path, metadata={**meta, "format_version": "99"})
    with pytest.raises(PackedFormatError, match="version '99'"):
        load_packed(path)


def test_wrong_skeleton(model, tmp_path):
    _pack(model, CompressionPlan({}), tmp_path / "m.rzp")
    with pytest.raises(PackedFormatError, match="do not fit"):
        load_packed(tmp_path / "m.rzp", tiny_net(width=4))


@pytest.mark.parametrize(
    ("arch", "metadata", "field"),
    [
        ({"kwargs": {}}, None, "arch.factory"),
        ({"factory": "no_colon"}, None, "arch.factory"),
        ({"factory": FACTORY, "kwargs": {"x": object()}}, None, "arch"),
        (ARCH, {"k": 3}, "metadata['k']"),
    ],
)
def test_bad_save_arguments(model, tmp_path, arch, metadata, field):
    out = compress(model, CompressionPlan({}))
    with pytest.raises(ConfigError, match=field.replace("[", r"\[")):
        save_packed(out, tmp_path / "m.rzp", arch=arch, metadata=metadata)


def test_measure_latency(model, inputs):
    ms = measure_latency(model, inputs, warmup=1, repeats=3)
    assert isinstance(ms, float) and ms > 0
    with pytest.raises(ConfigError, match="repeats: got 0"):
        measure_latency(model, inputs, repeats=0)


# -- format version 2: relative indices, entropy stage, checksum --------------------------


def _pack_mask(tmp_path, keep: torch.Tensor):
    """Prune a bare Linear to exactly ``keep``, pack it; returns (the file's entry for the weight, loaded mask)."""
    out_features, in_features = keep.shape
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():  # kept weights all outweigh the zeros, so magnitude pruning keeps exactly them
        layer.weight.copy_(torch.where(keep, 0.5 + torch.rand(keep.shape), torch.zeros(())))
    sparsity = 1 - int(keep.sum()) / keep.numel()
    out = compress(layer, CompressionPlan({"": (MagnitudePruning(sparsity),)}))
    assert torch.equal(out.weights[""].mask, keep)
    path = tmp_path / "mask.rzp"
    save_packed(
        out,
        path,
        arch={"factory": "torch.nn:Linear", "kwargs": {"in_features": in_features, "out_features": out_features}},
    )
    with safe_open(path, "pt") as f:
        entry = json.loads(f.metadata()["layers"])[""]
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    return entry, tensors, load_packed(path)[1].weights[""].mask


# Densities whose cheapest mask coding is relative indices at 1 to 8 bits per gap (64 x 256 layer).
@pytest.mark.parametrize("density", [0.003, 0.01, 0.02, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("layout", ["random", "run"])
def test_masks_round_trip_through_every_coding(tmp_path, density, layout):
    rng = np.random.default_rng(int(density * 1000))
    keep = np.zeros(64 * 256, dtype=bool)
    if layout == "random":
        keep = rng.random(keep.size) < density
    else:  # one contiguous run: long gaps around it, none inside
        n = int(density * keep.size)
        start = int(rng.integers(0, keep.size - n))
        keep[start : start + n] = True
    keep[[0, -1]] = True
    entry, tensors, loaded = _pack_mask(tmp_path, torch.from_numpy(keep.reshape(64, 256)))
    assert torch.equal(loaded, torch.from_numpy(keep.reshape(64, 256)))
    if entry["mask"] == "relative":
        # filler symbols are exactly the gaps' overflow
        index_bits = entry["index_bits"]
        gaps = np.diff(np.flatnonzero(keep), prepend=-1) - 1
        assert entry["symbols"] == int(keep.sum()) + int((gaps // (2**index_bits - 1)).sum())
        assert tensors["weight@relative"].numel() == -(-entry["symbols"] * index_bits // 8)


def test_relative_indices_cover_every_gap_width(tmp_path):
    widths = set()
    for density in (0.003, 0.02, 0.05, 0.07, 0.1, 0.2, 0.3):
        keep = torch.from_numpy(np.random.default_rng(0).random((64, 256)) < density)
        entry, _, _ = _pack_mask(tmp_path, keep)
        widths.add(entry.get("index_bits"))
    keep = torch.zeros(64, 256, dtype=torch.bool)
    keep.view(-1)[4000:12000] = True  # a dense run: 1-bit gaps
    widths.add(_pack_mask(tmp_path, keep)[0].get("index_bits"))
    assert len(widths - {None}) >= 6, widths


def test_absolute_indices_win_for_a_nearly_empty_large_layer(tmp_path):
    mask = torch.zeros(256, 256, dtype=torch.bool)
    mask[0, 3] = mask[255, 200] = True
    entry, tensors, loaded = _pack_mask(tmp_path, mask)
    assert entry["mask"] == "indices" and tensors["weight@indices"].numel() == 2
    assert torch.equal(loaded, mask)


def _corrupt_cases(path):
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    body = len(data) - 8 - header_len
    # header length, several header bytes, and bytes spread over the tensor data
    flips = [0, 3, 8, 8 + header_len // 3, 8 + header_len // 2, 8 + header_len - 20]
    flips += [8 + header_len + body * i // 7 for i in range(7)] + [len(data) - 1]
    for pos in flips:
        yield f"flip@{pos}", data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :]
    for cut in (len(data) - 1, len(data) - body // 2, 8 + header_len, 8 + header_len // 2, 5):
        yield f"truncate@{cut}", data[:cut]


@pytest.mark.parametrize("entropy", [None, "lzma"])
def test_corrupt_or_truncated_file_is_refused(model, tmp_path, entropy):
    plan = CompressionPlan(
        {
            "conv1": (UniformQuantization(4),),
            "conv2": (MagnitudePruning(0.9), UniformQuantization(3)),
            "fc1": (MagnitudePruning(0.5), KMeansQuantization(3)),
        }
    )
    out = compress(model, plan)
    good = tmp_path / "good.rzp"
    save_packed(out, good, arch=ARCH, entropy=entropy)
    load_packed(good)
    bad = tmp_path / "bad.rzp"
    for label, blob in _corrupt_cases(good):
        bad.write_bytes(blob)
        with pytest.raises(PackedFormatError, match="corrupt|truncated") as exc:
            load_packed(bad)
        assert str(bad) in str(exc.value), label


def test_reads_version_1_files(model, inputs, tmp_path):
    """A v1 file (no scheme, checksum or structure) is refused, and loads to the same model when allowed."""
    path = tmp_path / "m.rzp"
    out, _ = _pack(model, PLANS["sparse_3bit"], path)
    with safetensors.safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    layers = json.loads(meta["layers"])
    assert {info["mask"] for info in layers.values()} == {"bitmap"}
    v1_layers = {name: {k: info[k] for k in ("shape", "bits", "kept", "mask")} for name, info in layers.items()}
    v1 = {k: meta[k] for k in ("format", "plan", "arch", "metadata")}
    safetensors.torch.save_file(tensors, path, metadata={**v1, "format_version": "1", "layers": json.dumps(v1_layers)})
    with pytest.raises(PackedFormatError, match="without a checksum.*allow_unverified=True"):
        load_packed(path)
    loaded, info = load_packed(path, allow_unverified=True)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), out.model(inputs))
    assert info.structure == {} and info.entropy is None


def test_low_rank_layers_rebuilt_by_the_loader(model, inputs, tmp_path):
    plan = CompressionPlan({"fc1": (LowRank(rank_ratio=0.25), UniformQuantization(6)), "conv2": (LowRank(energy=0.8),)})
    out, size = _pack(model, plan, tmp_path / "m.rzp")
    assert isinstance(out.model.fc1, nn.Sequential) and out.structure["fc1"] == {"method": "low_rank", "rank": 8}
    assert set(out.weights) == {"fc1.0", "fc1.1", "conv2.0", "conv2.1"}
    loaded, info = load_packed(tmp_path / "m.rzp")  # a fresh tiny_net, factorised from the file's structure
    with torch.no_grad():
        assert torch.equal(loaded(inputs), out.model(inputs))
    assert size < _pack(model, CompressionPlan({"fc1": (UniformQuantization(6),)}), tmp_path / "n.rzp")[1]


def test_bad_entropy_argument(model, tmp_path):
    with pytest.raises(ConfigError, match="entropy: got 'gzip'.*'lzma', 'zstd', None"):
        save_packed(compress(model, CompressionPlan({})), tmp_path / "m.rzp", arch=ARCH, entropy="gzip")


def test_a_header_claiming_version_1_is_still_verified(model, tmp_path):
    """Editing the version to "1" and a weight byte is caught: the checksum covers the header too."""
    path = tmp_path / "m.rzp"
    _pack(model, PLANS["sparse_3bit"], path)
    with safe_open(path, "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = next(k for k, t in tensors.items() if t.dtype == torch.uint8 and t.numel())
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] ^= 0xFF
    safetensors.torch.save_file(tensors, path, metadata={**meta, "format_version": "1"})
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        load_packed(path)
    with pytest.raises(PackedFormatError, match="checksum mismatch"):
        load_packed(path, allow_unverified=True)  # a checksum that is there is always verified


def test_errors_name_the_label_not_the_path(model, tmp_path):
    path = tmp_path / "download-123" / "packed.safetensors"
    path.parent.mkdir()
    path.write_bytes(b"not a packed file at all")
    with pytest.raises(PackedFormatError) as exc:
        load_packed(path, label="packed artifact of run abc123")
    assert str(exc.value).startswith("packed artifact of run abc123: ")
    assert str(path.parent) not in str(exc.value)
