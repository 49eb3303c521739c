"""The ``factory`` student family: a user function ``module:function`` called on the teacher."""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from rayzor.compression.students._base import Params, StudentFamily, _import, register_student
from rayzor.errors import ConfigError, RayzorError

__all__ = ["FactoryStudents", "build_factory_student"]


def build_factory_student(factory: str, teacher_arch: Mapping[str, Any], params: Mapping[str, Any]) -> nn.Module:
    """Rebuild a ``factory`` student: the untrained teacher from its arch, then ``factory(teacher, **params)``.

    The packed loader then loads the student's own weights, so the random
    weights of the rebuilt teacher never matter.
    """
    teacher = _import(str(teacher_arch.get("factory")), "teacher_arch.factory")(**dict(teacher_arch.get("kwargs", {})))
    return _import(factory, "factory")(teacher, **dict(params))


@register_student("factory")
class FactoryStudents(StudentFamily):
    """A user function ``factory="package.module:function"`` called as ``function(teacher, **params)``.

    It must return an ``nn.Module``. Its parameters are the user's and are
    not searched (``params`` is empty); register a :class:`StudentFamily`
    for searchable ones. ``arch`` needs ``teacher_arch`` (the task's
    ``arch``): a packed loader rebuilds the untrained teacher with it and
    calls the function on that (:func:`build_factory_student`).
    """

    factory = "rayzor.compression.students._factory:build_factory_student"

    def params(self, teacher: nn.Module) -> Params:
        return {}

    def _function(self, params: Mapping[str, Any]) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
        rest = dict(params)
        spec = rest.pop("factory", None)
        fn = _import(spec, "factory")
        try:
            inspect.signature(fn).bind(None, **rest)
        except TypeError:
            raise ConfigError(
                "params", rest, f"keyword arguments of {spec}{inspect.signature(fn)} after the teacher"
            ) from None
        except ValueError:  # no signature (builtins): let the call decide
            pass
        return fn, rest

    def resolve(self, teacher: nn.Module, params: Mapping[str, Any]) -> dict[str, Any]:
        self._function(params)
        rest = {k: v for k, v in params.items() if k != "factory"}
        return {"factory": params["factory"], "params": rest}

    def build(self, teacher: nn.Module, **params: Any) -> nn.Module:
        fn, rest = self._function(params)
        try:
            student = fn(teacher, **rest)
        except RayzorError:
            raise
        except Exception as exc:
            raise ConfigError(
                "factory", params["factory"], f"a function that builds the student ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(student, nn.Module):
            raise ConfigError(
                "factory", params["factory"], f"a function returning an nn.Module (got {type(student).__name__})"
            )
        return student

    def arch(
        self, teacher: nn.Module, *, teacher_arch: Mapping[str, Any] | None = None, **params: Any
    ) -> dict[str, Any]:
        if not isinstance(teacher_arch, Mapping) or not isinstance(teacher_arch.get("factory"), str):
            raise ConfigError(
                "teacher_arch",
                teacher_arch,
                "the task's arch {'factory': 'pkg.mod:fn', 'kwargs': {...}} "
                "(a packed loader rebuilds the teacher to rebuild the student)",
            )
        arch = super().arch(teacher, **params)
        arch["kwargs"]["teacher_arch"] = {
            "factory": teacher_arch["factory"],
            "kwargs": copy.deepcopy(dict(teacher_arch.get("kwargs", {}))),
        }
        try:
            json.dumps(arch)
        except (TypeError, ValueError):
            raise ConfigError("teacher_arch", teacher_arch, "JSON-serialisable kwargs") from None
        return arch
