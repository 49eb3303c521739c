"""The state file a search leaves next to its Tune experiment, and finding it again for ``--resume``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rayzor.errors import ConfigError
from rayzor.search._config import SearchConfig, validate_config

__all__ = ["RESUME_FILE", "check_tune_state", "load_resume_state", "resumed_config", "write_resume_state"]

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


#: Tune's saved state that a restore reads, by the pattern of its files (the newest of each is read).
_TUNE_STATE = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")


def check_tune_state(resume: str, experiment_path: str) -> None:
    """Refuse a Tune experiment whose saved state would not restore whole, before Ray starts.

    Tune writes its state to a staging folder and copies it to the storage
    path in a background thread, while the next save (0.1 s later) may
    rewrite the staging copy: a driver killed during that copy leaves a file
    cut short, or the trials of one save beside the searcher of another.
    Tune's restore then fails, logs it and starts the experiment again from
    nothing; the resumed search would run every trial again and drop the
    runs of the finished ones. So the newest experiment state and searcher
    files must load, and the trials Tune saved must be the ones its search
    generator counted.

    Raises:
        ConfigError: naming ``--resume``, the file and what is wrong with it;
            the trials logged so far are not touched.
    """
    import fnmatch

    import ray.cloudpickle as cloudpickle

    fs, path = _experiment_fs(experiment_path)
    names = [info.base_name for info in fs.get_file_info(_selector(path))]
    loaded: dict[str, Any] = {}
    for pattern in _TUNE_STATE:
        matching = sorted(fnmatch.filter(names, pattern))
        if not matching:
            continue  # Tune saved none yet (killed before its first save): it restores what it has
        name = matching[-1]  # the one Tune reads
        with fs.open_input_stream(f"{path}/{name}") as f:
            data = f.read()
        try:  # the experiment state is JSON; Tune pickles the other two (the generator's despite its name)
            loaded[pattern] = json.loads(data) if pattern.startswith("experiment_state") else cloudpickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the file is not whole
            raise ConfigError(
                "--resume",
                resume,
                f"{_VALID_RESUME}, with Tune's saved state whole; {name} in {path} is cut short or unreadable "
                f"({type(exc).__name__}: the driver was probably killed while Tune copied it to the storage path). "
                f"{_KEPT}",
            ) from None
    state, generator = loaded.get("experiment_state-*.json"), loaded.get("search_gen_state-*.json")
    trials = state.get("trial_data") if isinstance(state, dict) else None
    counter = generator.get("counter") if isinstance(generator, dict) else None
    if isinstance(trials, list) and isinstance(counter, int) and counter != len(trials):
        raise ConfigError(
            "--resume",
            resume,
            f"{_VALID_RESUME}, with Tune's saved state whole; in {path} the experiment state holds {len(trials)} "
            f"trials but the search generator counted {counter} (the two files come from different saves: the "
            f"driver was probably killed while Tune copied them to the storage path). {_KEPT}",
        )


#: What a refused resume leaves, and what to do next.
_KEPT = (
    "Nothing was changed: the trials it logged stay in MLflow (rayzor pareto and export read them); "
    "run the rest of the budget as a new search"
)


def _selector(path: str) -> Any:
    import pyarrow.fs

    return pyarrow.fs.FileSelector(path, allow_not_found=True)


def resumed_config(state: dict[str, Any], given: SearchConfig) -> SearchConfig:
    """The saved config of a resumed search (validated, as read from the file); a new ``address`` may replace the old one."""
    data = dict(state["config"])
    if given.address:
        data["address"] = given.address
    if not state.get("concurrency_given"):
        data.pop("concurrency", None)  # derived again from the cluster
    return validate_config(data)
