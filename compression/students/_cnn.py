"""The ``cnn`` student family: :class:`StageCNN` students of plain CNN teachers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from rayzor.compression._registry import check_int, check_real
from rayzor.compression.students._base import Choice, IntRange, Params, StudentFamily, register_student
from rayzor.errors import ConfigError

__all__ = ["WIDTH_MULTS", "CNNStudents", "StageCNN"]

#: Width multipliers the ``cnn`` family samples per stage and hidden layer.
WIDTH_MULTS: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
_MAX_BLOCKS = 2


class StageCNN(nn.Module):
    """A plain CNN of conv stages and a classifier head, the ``cnn`` family's student.

    Stage ``s`` is ``blocks_per_stage[s]`` 3x3 (``kernel_size``) convs with
    ReLU, the first changing the channels to ``stage_widths[s]``; convs keep
    the spatial size (stride 1, "same" padding). One adaptive max-pool then
    brings the feature map to ``head_hw``, which is flattened into the
    ``hidden`` ReLU Linear layers and a final Linear of ``num_classes``
    outputs. With the teacher's ``head_hw`` the output shape matches the
    teacher's for every input the teacher takes; ``StageCNN(1, [16, 32],
    [1, 1], [64], 10, [4, 4])`` computes exactly :class:`DigitsCNN`'s
    function (its 2x2 max-pool of the 8x8 map is the adaptive pool to 4x4).

    Layer names are stable: ``stages.<s>.<b>`` (Conv2d), ``hidden.<i>`` and
    ``classifier`` (Linear).

    Args:
        in_channels: Input channels.
        stage_widths: Output channels of each stage.
        blocks_per_stage: Convs per stage (same length as ``stage_widths``).
        hidden: Widths of the hidden Linear layers (may be empty).
        num_classes: Outputs of the last Linear.
        head_hw: Spatial size ``(h, w)`` after the pool.
        kernel_size: Odd conv kernel size.
    """

    def __init__(
        self,
        in_channels: int,
        stage_widths: Sequence[int],
        blocks_per_stage: Sequence[int],
        hidden: Sequence[int],
        num_classes: int,
        head_hw: Sequence[int] = (4, 4),
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 1)
        if kernel_size % 2 != 1:
            raise ConfigError("kernel_size", kernel_size, "an odd integer >= 1 (same padding)")
        check_int("kernel_size", kernel_size, 1)
        if not stage_widths or len(blocks_per_stage) != len(stage_widths):
            raise ConfigError(
                "blocks_per_stage",
                list(blocks_per_stage),
                f"one block count per stage ({len(stage_widths)} stages, at least one)",
            )
        if len(head_hw) != 2:
            raise ConfigError("head_hw", list(head_hw), "two positive integers (h, w)")
        stages = []
        channels = in_channels
        for s, (width, blocks) in enumerate(zip(stage_widths, blocks_per_stage)):
            check_int(f"stage_widths[{s}]", width, 1)
            check_int(f"blocks_per_stage[{s}]", blocks, 1)
            convs = []
            for _ in range(blocks):
                convs.append(nn.Conv2d(channels, width, kernel_size, padding=kernel_size // 2))
                channels = width
            stages.append(nn.Sequential(*convs))
        self.stages = nn.ModuleList(stages)
        self.head_hw = tuple(check_int("head_hw", v, 1) for v in head_hw)
        self.pool = nn.AdaptiveMaxPool2d(self.head_hw)
        features = channels * self.head_hw[0] * self.head_hw[1]
        layers = []
        for i, width in enumerate(hidden):
            check_int(f"hidden[{i}]", width, 1)
            layers.append(nn.Linear(features, width))
            features = width
        self.hidden = nn.ModuleList(layers)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            for conv in stage:
                x = torch.relu(conv(x))
        x = torch.flatten(self.pool(x), 1)
        for fc in self.hidden:
            x = torch.relu(fc(x))
        return self.classifier(x)


def _describe_cnn(teacher: nn.Module) -> dict[str, Any]:
    """Stages (Conv2d, in order), hidden Linears and head of a plain CNN teacher."""
    modules = list(teacher.named_modules())
    convs = [(i, n, m) for i, (n, m) in enumerate(modules) if isinstance(m, nn.Conv2d)]
    linears = [(i, n, m) for i, (n, m) in enumerate(modules) if isinstance(m, nn.Linear)]
    valid = "a plain CNN: Conv2d layers (chained, groups=1) registered before chained Linear layers, like DigitsCNN"
    if not convs or not linears or convs[-1][0] > linears[0][0]:
        raise ConfigError("teacher", type(teacher).__name__, valid)
    for (_, _, a), (_, _, b) in zip(convs, convs[1:]):
        if a.out_channels != b.in_channels:
            raise ConfigError("teacher", type(teacher).__name__, valid)
    for (_, _, a), (_, _, b) in zip(linears, linears[1:]):
        if a.out_features != b.in_features:
            raise ConfigError("teacher", type(teacher).__name__, valid)
    if any(m.groups != 1 for _, _, m in convs):
        raise ConfigError("teacher", type(teacher).__name__, valid)
    last = convs[-1][2].out_channels
    area, rest = divmod(linears[0][2].in_features, last)
    if rest:
        raise ConfigError(
            "teacher",
            type(teacher).__name__,
            f"{valid} (the first Linear's inputs, {linears[0][2].in_features}, "
            f"must be a multiple of the last conv's {last} channels)",
        )
    side = math.isqrt(area)
    # The flattened grid is assumed square (h = w) when it can be; otherwise one column.
    head_hw = [side, side] if side * side == area else [area, 1]
    return {
        "in_channels": convs[0][2].in_channels,
        "stages": [(n, m.out_channels) for _, n, m in convs],
        "hidden": [(n, m.out_features) for _, n, m in linears[:-1]],
        "num_classes": linears[-1][2].out_features,
        "head_hw": head_hw,
    }


@register_student("cnn")
class CNNStudents(StudentFamily):
    """:class:`StageCNN` students of plain CNN teachers (convs, then Linears).

    Each teacher conv is one stage. Parameters, named after the teacher's
    layers: ``width_mult.<conv>`` and ``width_mult.<hidden linear>`` (one of
    :data:`WIDTH_MULTS`; any number in (0, 1] is accepted when given
    directly; width ``max(1, round(mult * teacher width))``) and
    ``blocks.<conv>`` (convs in that stage, 1..2). For DigitsCNN:
    ``width_mult.conv1``, ``width_mult.conv2``, ``width_mult.fc1``,
    ``blocks.conv1``, ``blocks.conv2``. Unset parameters keep the teacher's
    width and one block. Students start from a fresh random init (PyTorch's
    defaults, from the global RNG); shrinking widths and adding blocks
    change shapes, so teacher weights are not copied.
    """

    factory = "rayzor.compression.students._cnn:StageCNN"

    def params(self, teacher: nn.Module) -> Params:
        desc = _describe_cnn(teacher)
        out: Params = {}
        for name, _ in desc["stages"]:
            out[f"width_mult.{name}"] = Choice(WIDTH_MULTS)
            out[f"blocks.{name}"] = IntRange(1, _MAX_BLOCKS)
        for name, _ in desc["hidden"]:
            out[f"width_mult.{name}"] = Choice(WIDTH_MULTS)
        return out

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        desc = _describe_cnn(teacher)
        known = [f"width_mult.{n}" for n, _ in desc["stages"] + desc["hidden"]]
        known += [f"blocks.{n}" for n, _ in desc["stages"]]
        for key in params:
            if key not in known:
                raise ConfigError(
                    key, params[key], f"parameters of student family 'cnn' for this teacher: {', '.join(known)}"
                )

        def width(name: str, full: int) -> int:
            mult = check_real(f"width_mult.{name}", params.get(f"width_mult.{name}", 1.0), 0.0, 1.0, lo_open=True)
            return max(1, round(mult * full))

        return {
            "in_channels": desc["in_channels"],
            "stage_widths": [width(n, w) for n, w in desc["stages"]],
            "blocks_per_stage": [
                check_int(f"blocks.{n}", params.get(f"blocks.{n}", 1), 1, _MAX_BLOCKS) for n, _ in desc["stages"]
            ],
            "hidden": [width(n, w) for n, w in desc["hidden"]],
            "num_classes": desc["num_classes"],
            "head_hw": desc["head_hw"],
        }
