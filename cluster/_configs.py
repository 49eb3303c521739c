"""The cluster configs that ship with rayzor, and their validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from rayzor.errors import ClusterConfigError

__all__ = ["CONFIG_DIR", "launcher_schema", "validate_launcher_config"]

#: Ray cluster launcher YAML, KubeRay manifests and the MLflow server recipe.
CONFIG_DIR = Path(__file__).parent / "configs"


def launcher_schema() -> dict[str, Any]:
    """The JSON schema of ``ray up`` configs, as shipped inside the ray package."""
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def validate_launcher_config(path: str | Path) -> dict[str, Any]:
    """Load a cluster launcher YAML and validate it against Ray's own schema.

    Raises:
        ClusterConfigError: the first schema violation, with its location.
    """
    import jsonschema

    config = yaml.safe_load(Path(path).read_text())
    try:
        jsonschema.validate(config, launcher_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<root>"
        raise ClusterConfigError(f"{path}: {where}: {exc.message}") from None
    return config
