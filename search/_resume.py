"""The state file a search leaves next to its Tune experiment, and finding it again for ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayzor.errors import ConfigError
from rayzor.search._config import SearchConfig, validate_config

__all__ = ["RESUME_FILE", "load_resume_state", "resumed_config", "write_resume_state"]

#: Written next to the Tune experiment: what ``--resume`` needs to continue.
RESUME_FILE = "rayzor-search.json"
_VALID_RESUME = (
    "the folder of a search's Tune experiment (STORAGE_PATH/NAME, or a pyarrow URI), or NAME under storage_path"
)


def _experiment_fs(path: str) -> tuple[Any, str]:
    """A pyarrow filesystem and path for a local folder or a URI (s3://, gs://)."""
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def write_resume_state(experiment_path: str, state: dict[str, Any]) -> None:
    """Write :data:`RESUME_FILE` into the experiment folder (local or a pyarrow URI)."""
    fs, path = _experiment_fs(experiment_path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{RESUME_FILE}") as f:
        f.write(json.dumps(state, indent=2).encode())


def load_resume_state(resume: str, storage_path: str | None) -> tuple[str, dict[str, Any]]:
    """Find a search to resume: ``(experiment_path, saved state)``.

    Raises:
        ConfigError: naming ``--resume`` when there is no restorable Tune
            experiment with rayzor's state file there.
    """
    import pyarrow.fs
    from ray import tune

    candidates = [resume] if "://" in resume or Path(resume).is_dir() else []
    storage = storage_path or "rayzor-results"
    candidates.append(f"{storage.rstrip('/')}/{resume}" if "://" in storage else str(Path(storage) / resume))
    for candidate in candidates:
        fs, path = _experiment_fs(candidate)
        info = fs.get_file_info(f"{path}/{RESUME_FILE}")
        if info.type == pyarrow.fs.FileType.File and tune.Tuner.can_restore(
            path if "://" not in candidate else candidate
        ):
            with fs.open_input_stream(f"{path}/{RESUME_FILE}") as f:
                return (candidate if "://" in candidate else path), json.loads(f.read())
    raise ConfigError("--resume", resume, f"{_VALID_RESUME}; nothing restorable at {', '.join(candidates)}")


def resumed_config(state: dict[str, Any], given: SearchConfig) -> SearchConfig:
    """The saved config of a resumed search (validated, as read from the file); a new ``address`` may replace the old one."""
    data = dict(state["config"])
    if given.address:
        data["address"] = given.address
    if not state.get("concurrency_given"):
        data.pop("concurrency", None)  # derived again from the cluster
    return validate_config(data)
