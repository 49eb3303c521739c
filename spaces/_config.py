"""``SpaceConfig``: the ``space:`` section of a search config, and the space it builds for a model."""

from __future__ import annotations

from typing import Any

from torch import nn

from rayzor.compression import FinetuneConfig
from rayzor.spaces._settings import SpaceSettings
from rayzor.spaces._space import CompressionSpace

__all__ = ["SpaceConfig"]


class SpaceConfig(SpaceSettings):
    """Ranges of the per-layer dimensions (YAML ``space:``); validated by :class:`SpaceSettings`."""

    def build(
        self,
        model: nn.Module,
        finetune: FinetuneConfig = FinetuneConfig(),
        example_input: Any = None,
        target: str = "packed",
        accuracy_level: int = 0,
    ) -> CompressionSpace:
        """The :class:`CompressionSpace` this config describes for ``model``.

        With ``default_exclusions`` (the default) the layers
        :func:`default_exclusions` lists are left out unless a group's glob or
        ``include`` names them; ``exclude`` always wins. ``example_input`` (one
        batch, e.g. the task's) is needed with ``channels`` or ``heads``: it is
        traced to find the layers whose channels or heads can go. ``target``
        narrows each layer's bit-widths and methods to what that runtime runs,
        and ``accuracy_level`` tells which of its kernels the warm start prefers.

        Raises:
            ConfigError: a glob that matches no layer, a layer in two groups,
                channels or heads without ``example_input``.
        """
        return CompressionSpace.from_model(
            model,
            self,
            finetune=finetune,
            default_exclusions=self.default_exclusions,
            example_input=example_input,
            target=target,
            accuracy_level=accuracy_level,
        )
