"""The one resolver of ``package.module:function`` strings (task factories, architectures, students)."""

from __future__ import annotations

import importlib
from typing import Any

from rayzor.errors import ConfigError, RayzorError

__all__ = ["resolve"]

#: The repository's folders were importable under these bare names before they moved into ``rayzor``;
#: packed files and stores written then name factories that way, so they are read as ``rayzor.<name>``.
_LEGACY_TOP_LEVEL = ("compression.", "spaces.", "search.", "cluster.")
#: Module paths that moved, by attribute: ``old module -> {attr: new module}`` (packed files name the old ones).
_MOVED = {
    "rayzor.compression._students": {
        "StageCNN": "rayzor.compression.students._cnn",
        "build_layer_drop_encoder": "rayzor.compression.students._bert",
        "build_factory_student": "rayzor.compression.students._factory",
    },
}


def resolve(
    spec: Any, field: str, *, error: type[RayzorError] = RayzorError, valid: str = "a 'package.module:function' string"
) -> Any:
    """Import ``package.module:attr`` (``attr`` may be dotted) and return the attribute.

    Args:
        spec: The string, as a user or a file gave it.
        field: The config field it came from, named in every error.
        error: Raised when the module or attribute cannot be had (the format was right).
        valid: What a valid value is, for the format error.

    Raises:
        ConfigError: ``spec`` is not of the form ``module:attr``.
        error: The module does not import, or lacks the attribute.
    """
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not (sep and module_name and attr) or ":" in attr:
        raise ConfigError(field, spec, valid)
    if module_name.startswith(_LEGACY_TOP_LEVEL):
        module_name = f"rayzor.{module_name.replace('compression.tasks', 'tasks', 1)}"
    module_name = _MOVED.get(module_name, {}).get(attr.split(".")[0], module_name)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{field}: cannot import module {module_name!r} of {spec!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise error(f"{field}: module {module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    return obj
