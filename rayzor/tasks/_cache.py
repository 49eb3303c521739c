"""The on-disk cache of the embedded tasks (trained baselines, bundled datasets)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["cache_dir", "save_cached"]


def cache_dir() -> Path:
    """Where the embedded tasks cache what they train or load: ``$RAYZOR_CACHE_DIR`` or ``~/.cache/rayzor``."""
    return Path(os.environ.get("RAYZOR_CACHE_DIR", Path.home() / ".cache" / "rayzor"))


def save_cached(tensors: dict[str, torch.Tensor], path: Path, settings: dict[str, Any] | None = None) -> None:
    """Write ``tensors`` to the safetensors file ``path``, with the settings that made them as metadata.

    Written to a temporary file and renamed: concurrent processes (two
    searches started at once) never read half a file.
    """
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, tmp, metadata={"settings": json.dumps(settings)} if settings is not None else None)
    os.replace(tmp, path)
