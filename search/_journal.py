"""The tracker's on-disk journal: trial outcomes not yet written to MLflow, kept under the storage path.

One JSON file per outcome (and the trial's packed file beside it), written
before the MLflow calls and removed once they all succeeded: a tracking
outage, or a driver that dies while one lasts, loses no result.
``rayzor sync`` or ``--resume`` replays what is left.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from rayzor.search._tags import PACKED_NAME

__all__ = ["JOURNAL_DIR", "Journal", "journal_folder"]

#: Folder of the journal inside a search's experiment folder.
JOURNAL_DIR = "tracking-journal"
_PARENT = "parent.json"


def journal_folder(storage: str, name: str) -> Path:
    """Where a search keeps its journal: in its experiment folder, or, for a remote storage
    path (s3://), in ``.rayzor-journal/NAME`` of the working directory (it must be a local disk)."""
    if "://" in storage:
        return Path(".rayzor-journal").resolve() / name
    return Path(storage) / name / JOURNAL_DIR


def _json_safe(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    try:
        return float(value)  # numpy scalars
    except (TypeError, ValueError):
        return str(value)


class Journal:
    """Pending outcomes, in the order they came, as files in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(_json_safe(data)))
        os.replace(tmp, path)  # never a half-written entry

    def add(self, entry: dict[str, Any], packed: str | None) -> Path:
        """Keep one outcome (and a copy of its packed file); returns its entry file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        seq = max((int(p.stem.split("-")[0]) for p in self.folder.glob("*-*.json")), default=0) + 1
        path = self.folder / f"{seq:06d}-{entry['trial_id']}.json"
        if packed is not None:  # under its own name: MLflow logs the file by its name
            path.with_suffix("").mkdir(exist_ok=True)
            copy = path.with_suffix("") / PACKED_NAME
            shutil.copyfile(packed, copy)
            entry = {**entry, "packed": str(copy)}
        self._write_json(path, entry)
        return path

    def update(self, path: Path, **fields: Any) -> None:
        """Record more of an entry (the run id once its run exists, so a retry reuses it)."""
        self._write_json(path, {**json.loads(path.read_text()), **fields})

    def remove(self, path: Path) -> None:
        """Forget a written entry and its packed file."""
        shutil.rmtree(path.with_suffix(""), ignore_errors=True)
        path.unlink(missing_ok=True)

    def entries(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every pending entry, oldest first."""
        if not self.folder.is_dir():
            return []
        return [(p, json.loads(p.read_text())) for p in sorted(self.folder.glob("*-*.json"))]

    def set_parent(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        """Keep the parent run's end (its status and tags) for when the server answers again."""
        self._write_json(self.folder / _PARENT, {"run_id": run_id, "status": status, "tags": tags})

    def parent(self) -> dict[str, Any] | None:
        path = self.folder / _PARENT
        return json.loads(path.read_text()) if path.exists() else None

    def clear_parent(self) -> None:
        (self.folder / _PARENT).unlink(missing_ok=True)

    def __len__(self) -> int:
        return len(self.entries()) + (self.parent() is not None)
