"""Student families: the base class, the registry and the neutral declaration of searchable parameters."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from rayzor._resolve import resolve
from rayzor.errors import ConfigError, RayzorError

__all__ = [
    "Choice",
    "IntRange",
    "Params",
    "StudentFamily",
    "check_student",
    "create_student",
    "get_student_family",
    "list_students",
    "register_student",
]


@dataclass(frozen=True)
class Choice:
    """A searchable parameter taking one of ``choices``."""

    choices: tuple[Any, ...]


@dataclass(frozen=True)
class IntRange:
    """A searchable integer parameter in ``[low, high]`` (both ends included)."""

    low: int
    high: int


#: A family's searchable parameters, by name.
Params = dict[str, Choice | IntRange]


class StudentFamily:
    """One family of student architectures; subclass and register with :func:`register_student`.

    Subclasses implement :meth:`params` and :meth:`resolve`; the default
    :meth:`build` calls the ``arch`` factory on the resolved kwargs, so the
    built student and the one a packed loader rebuilds have the same
    architecture by construction. Override :meth:`build` to also initialise
    the student from the teacher.
    """

    #: ``package.module:function`` that :meth:`arch` names; called with the
    #: kwargs :meth:`resolve` returns.
    factory: str = ""

    def params(self, teacher: nn.Module) -> Params:
        """Searchable parameters valid for ``teacher``, by name (:class:`Choice` or :class:`IntRange`).

        Raises:
            ConfigError: The family cannot make students of ``teacher``.
        """
        raise NotImplementedError

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``params`` and return the JSON kwargs of :attr:`factory`.

        Raises:
            ConfigError: Naming the parameter, its value and the valid range.
        """
        raise NotImplementedError

    def validate(self, teacher: nn.Module, **params: Any) -> None:
        """Refuse ``params`` for ``teacher`` before any training.

        Raises:
            ConfigError: Naming the parameter, its value and the valid range.
        """
        self.resolve(teacher, params)

    def build(self, teacher: nn.Module, **params: Any) -> nn.Module:
        """The (untrained unless the family copies teacher weights) student, in eval mode."""
        kwargs = self.resolve(teacher, params)
        return _import(self.factory, "factory")(**kwargs).eval()

    def arch(
        self, teacher: nn.Module, *, teacher_arch: Mapping[str, Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        """``{"factory", "kwargs"}`` that rebuilds the untrained student (for packed files).

        Args:
            teacher: The teacher model.
            teacher_arch: The task's ``arch`` of the teacher; only families
                whose students need the teacher to be rebuilt read it
                (``factory``), the others ignore it.
            **params: The student's parameters.
        """
        arch = {"factory": self.factory, "kwargs": self.resolve(teacher, params)}
        try:
            json.dumps(arch)
        except (TypeError, ValueError):
            raise ConfigError(
                "params", dict(params), "JSON-serialisable values (packed files store the arch as JSON)"
            ) from None
        return arch


_STUDENTS: dict[str, StudentFamily] = {}

F = TypeVar("F")


def register_student(name: str) -> Callable[[F], F]:
    """Register a :class:`StudentFamily` subclass (instantiated without arguments) or instance.

    Example::

        @register_student("tiny")
        class TinyStudents(StudentFamily): ...

    Raises:
        ConfigError: The name is taken or empty, or the object is not a family.
    """
    if not isinstance(name, str) or not name or name in _STUDENTS:
        raise ConfigError("student", name, f"a new family name (taken: {', '.join(list_students())})")

    def decorator(family: F) -> F:
        instance = family() if isinstance(family, type) and issubclass(family, StudentFamily) else family
        if not isinstance(instance, StudentFamily):
            raise ConfigError(f"register_student({name!r})", family, "a StudentFamily subclass or instance")
        _STUDENTS[name] = instance
        return family

    return decorator


def list_students() -> list[str]:
    """Names of the registered student families."""
    return sorted(_STUDENTS)


def get_student_family(name: str) -> StudentFamily:
    """The family registered under ``name``.

    Raises:
        ConfigError: No such family; the message lists the valid names.
    """
    try:
        return _STUDENTS[name]
    except (KeyError, TypeError):
        raise ConfigError("student", name, list_students()) from None


def create_student(name: str, teacher: nn.Module, **params: Any) -> nn.Module:
    """Build a student of family ``name`` for ``teacher`` (validated first).

    Raises:
        ConfigError: Unknown family, or parameters invalid for this teacher.
    """
    return get_student_family(name).build(teacher, **params)


def _shape_signature(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, Mapping):
        return {k: _shape_signature(v) for k, v in out.items() if v is not None}
    if isinstance(out, (tuple, list)):
        return [_shape_signature(v) for v in out]
    return type(out).__name__


def check_student(student: nn.Module, teacher: nn.Module, example_input: torch.Tensor) -> None:
    """Refuse a student whose output shape differs from the teacher's on ``example_input``.

    Tensors are compared by shape; mappings (e.g. a ``transformers``
    ``ModelOutput``) and tuples entry by entry. Neither model's train/eval
    mode is changed.

    Raises:
        ConfigError: Naming both shapes, or the input the student cannot take.
    """
    with torch.inference_mode():
        want = _shape_signature(teacher(example_input))
        try:
            got = _shape_signature(student(example_input))
        except Exception as exc:  # a student that cannot take the teacher's input is a config error
            raise ConfigError(
                "student",
                type(student).__name__,
                f"a model taking the teacher's input of shape {tuple(example_input.shape)} "
                f"({type(exc).__name__}: {exc})",
            ) from exc
    if got != want:
        raise ConfigError("student output shape", got, f"the teacher's output shape {want}")


def _import(spec: str, field: str) -> Callable[..., Any]:
    try:
        obj = resolve(spec, field)
    except ConfigError:
        raise
    except RayzorError as exc:
        raise ConfigError(field, spec, f"an importable 'package.module:function' ({exc})") from None
    if not callable(obj):
        raise ConfigError(field, spec, "a callable 'package.module:function'")
    return obj


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"
