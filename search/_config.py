"""The search configuration: one pydantic model for YAML files and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from compression.errors import ConfigError
from spaces import ALLOWED_BITS, MAX_SPARSITY

__all__ = ["OBJECTIVES", "SAMPLERS", "SearchConfig", "SpaceConfig", "load_config"]

#: Objective name -> direction. Every trial reports all of them.
OBJECTIVES: dict[str, str] = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
SAMPLERS = ("tpe", "nsga2", "random", "gp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpaceConfig(_Strict):
    """Ranges of the per-layer dimensions."""

    sparsity: tuple[float, float] = Field((0.0, MAX_SPARSITY), description="[low, high] per-layer sparsity")
    bits: tuple[int, ...] = Field((2, 3, 4, 5, 6, 8, 16, 32), description="candidate weight bit-widths; 32 = fp32")

    @field_validator("sparsity")
    @classmethod
    def _sparsity_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        low, high = v
        if not (0.0 <= low <= high <= MAX_SPARSITY):
            raise ValueError(f"[low, high] with 0 <= low <= high <= {MAX_SPARSITY}")
        return v

    @field_validator("bits")
    @classmethod
    def _bits_allowed(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(b not in ALLOWED_BITS for b in v):
            raise ValueError("a non-empty list of bit-widths from 2..16 and 32")
        return tuple(sorted(set(v)))


class SearchConfig(_Strict):
    """Everything a search needs; a YAML file takes the same fields as the flags."""

    task: str = Field("digits", description="registered task name or 'package.module:function'")
    task_options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the task factory")
    trials: int = Field(64, ge=1, description="number of trials")
    concurrency: int = Field(2, ge=1, description="trials run at once")
    sampler: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int = Field(0, ge=0)
    experiment: str = Field("rayzor", min_length=1, description="MLflow experiment name")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default: MLflow's own rules")
    objectives: tuple[Literal["accuracy", "size_bytes", "latency_ms"], ...] = ("accuracy", "size_bytes")
    space: SpaceConfig = Field(default_factory=SpaceConfig)
    finetune_epochs: int = Field(1, ge=0, description="recovery fine-tune epochs after pruning (masks kept)")
    cpus_per_trial: float = Field(1.0, gt=0)
    storage_path: str | None = Field(None, description="Ray Tune storage path; default ./rayzor-results")
    name: str | None = Field(None, description="search name; default search-<timestamp>")

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("two or three distinct objectives")
        return v

    @property
    def directions(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.objectives]


def _field_name(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not isinstance(part, int)) or "config"


def _valid_for(model: type[BaseModel], loc: tuple[Any, ...], error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        target: Any = model
        for part in loc[:-1]:
            field = target.model_fields.get(part) if isinstance(part, str) else None
            target = field.annotation if field is not None else target
        if isinstance(target, type) and issubclass(target, BaseModel):
            return "known keys " + ", ".join(target.model_fields)
    return error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")


def validate_config(data: dict[str, Any]) -> SearchConfig:
    """Validate a dict into a :class:`SearchConfig`, raising one-line ConfigErrors."""
    try:
        return SearchConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        raise ConfigError(_field_name(loc), error.get("input"), _valid_for(SearchConfig, loc, error)) from None


def load_config(path: str | Path | None = None, **overrides: Any) -> SearchConfig:
    """Read a YAML config (optional) and apply overrides that are not None.

    Args:
        path: YAML file with :class:`SearchConfig` fields; None = all defaults.
        **overrides: Field values from the command line; None means "not given".

    Raises:
        ConfigError: unreadable file, unknown key, or an invalid value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("CONFIG", str(path), "an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError("CONFIG", str(path), f"valid YAML ({str(exc).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError("CONFIG", str(path), "a YAML mapping of SearchConfig fields")
        data.update(loaded)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return validate_config(data)
