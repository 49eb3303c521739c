"""The one exception base of rayzor, and the error for bad user input.

Every package (``compression``, ``spaces``, ``search``, ``cluster``) raises
subclasses of :class:`RayzorError`, so a caller can catch everything rayzor
raises on purpose with one ``except``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["RayzorError", "ConfigError", "format_valid"]


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
