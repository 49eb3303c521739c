"""Every exception rayzor raises on purpose, under one base.

Every subpackage (``rayzor.compression``, ``rayzor.tasks``, ``rayzor.spaces``,
``rayzor.search``, ``rayzor.cluster``) raises subclasses of
:class:`RayzorError`, so a caller catches all of them with one ``except``.
They live here, below every subpackage, so that no layer imports another
just to name an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "ClusterConfigError",
    "ConfigError",
    "JobFailedError",
    "MissingExtraError",
    "NoMatchError",
    "PackedFormatError",
    "RayzorError",
    "ResumeError",
    "TaskLoadError",
    "TrackingError",
    "format_valid",
]


class RayzorError(Exception):
    """Base class of every error rayzor raises on purpose."""


def format_valid(valid: Any) -> str:
    """Render the set of valid values for an error message."""
    if isinstance(valid, str):
        return valid
    if isinstance(valid, Iterable):
        return ", ".join(repr(v) if isinstance(v, str) else str(v) for v in valid)
    return str(valid)


class ConfigError(RayzorError, ValueError):
    """Bad user input, reported before any compute starts.

    The message names the field, shows the bad value and says what is valid,
    in one line, e.g. ``sampler: got 'foo'; valid: 'tpe', 'nsga2'``.

    Args:
        field: Dotted name of the offending field (``space.bits``, ``--trials``).
        value: The value that was given.
        valid: What would have been accepted: a description or an iterable of
            the valid values.
    """

    def __init__(self, field: str, value: Any, valid: Any) -> None:
        self.field = field
        self.value = value
        self.valid = valid
        super().__init__(f"{field}: got {value!r}; valid: {format_valid(valid)}")


class PackedFormatError(RayzorError):
    """A file is not a rayzor packed file, is truncated or corrupt, has an unsupported version, or does not fit the model."""


class TaskLoadError(RayzorError):
    """A task spec that does not import or does not return a task."""


class MissingExtraError(RayzorError):
    """An optional dependency group is not installed."""


class NoMatchError(RayzorError):
    """No candidate satisfies a ``--pick`` spec."""


class TrackingError(RayzorError):
    """The MLflow writer failed while the search ran."""


class ResumeError(RayzorError):
    """Ray Tune restored none of a resumed search's trials: the search stops before any trial runs."""


class ClusterConfigError(RayzorError):
    """A cluster config does not match the schema it is written for."""


class JobFailedError(RayzorError):
    """A submitted Ray Job ended FAILED or STOPPED."""
