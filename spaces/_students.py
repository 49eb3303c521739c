"""The joint space of a distillation search: which model, its shape, then its per-layer compression."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalChoiceType
from torch import nn

from rayzor.compression import (
    Choice,
    CompressionPlan,
    FinetuneConfig,
    IntRange,
    StudentFamily,
    get_student_family,
    list_students,
)
from rayzor.errors import ConfigError
from rayzor.spaces import _dimensions as dims
from rayzor.spaces._dimensions import Dimension, Distribution, SuggestsParams, suggest
from rayzor.spaces._space import CompressionSpace

__all__ = ["FAMILY_KEY", "TEACHER", "StudentChoice", "StudentSpace", "student_distributions", "suggest_student_params"]

#: Parameter naming the model a trial compresses: :data:`TEACHER` or a student family.
FAMILY_KEY = "student.family"
#: The value of :data:`FAMILY_KEY` for the task's own model.
TEACHER = "teacher"
_STUDENT_PREFIX = "student."


def _distribution(field: str, param: Any) -> Distribution:
    if isinstance(param, Choice):
        return optuna.distributions.CategoricalDistribution(param.choices)
    if isinstance(param, IntRange):
        return optuna.distributions.IntDistribution(param.low, param.high)
    if isinstance(param, Distribution):  # a family that declares Optuna's own
        return param
    raise ConfigError(field, param, "a Choice or IntRange (rayzor.compression)")


def student_distributions(
    family: str | StudentFamily, teacher: nn.Module, prefix: str = "student."
) -> dict[str, Distribution]:
    """The Optuna distribution of each searchable parameter of ``family`` for ``teacher``, by parameter name."""
    fam = get_student_family(family) if isinstance(family, str) else family
    return {name: _distribution(prefix + name, p) for name, p in fam.params(teacher).items()}


def suggest_student_params(
    trial: optuna.Trial, family: str | StudentFamily, teacher: nn.Module, prefix: str = "student."
) -> dict[str, Any]:
    """Sample a family's parameters in an Optuna trial (define-by-run), each as ``prefix + name``.

    Returns:
        The sampled values by parameter name (without ``prefix``), ready for
        ``build(teacher, **params)`` / ``arch(teacher, **params)``.
    """
    return {
        name: suggest(trial, prefix + name, dist)
        for name, dist in student_distributions(family, teacher, prefix).items()
    }


class _Prefixed:
    """An Optuna trial whose parameter names get a prefix (the per-layer dims of one family)."""

    def __init__(self, trial: SuggestsParams, prefix: str) -> None:
        self._trial, self._prefix = trial, prefix

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._trial.suggest_float(self._prefix + name, low, high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._trial.suggest_int(self._prefix + name, low, high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Sequence[CategoricalChoiceType]) -> CategoricalChoiceType:
        return self._trial.suggest_categorical(self._prefix + name, choices)


@dataclass(frozen=True)
class StudentChoice:
    """What one sampled parameter dict of a :class:`StudentSpace` stands for."""

    family: str
    params: dict[str, Any]
    plan: CompressionPlan
    space: CompressionSpace


class StudentSpace:
    """Student choice + student parameters + per-layer compression of the chosen model.

    Sampled define-by-run: ``student.family`` picks the teacher itself or a
    student family (:func:`compression.list_students`); a family's own
    parameters follow (``student.<param>``, from
    :meth:`compression.StudentFamily.params`), then the per-layer dimensions
    of *that* student's layers, named ``<family>:<layer>.sparsity`` etc. so
    that two architectures never share a dimension by accident. The teacher
    keeps the dimensions of ``teacher_space`` unprefixed, so a search without
    students and one with them name the teacher's dimensions alike.

    A student's layers take the space-wide ranges of ``teacher_space``
    (sparsity, bits, methods); groups and exclusions name the teacher's
    layers and are not carried over.

    Args:
        teacher_space: The per-layer space of the task's model.
        teacher: The task's trained model, which students are built from.
        families: Student families to choose among.
        include_teacher: Whether compressing the teacher itself is a choice.
    """

    def __init__(
        self, teacher_space: CompressionSpace, teacher: nn.Module, families: Sequence[str], include_teacher: bool = True
    ) -> None:
        families = tuple(families)
        if not families:
            raise ConfigError("students.families", list(families), f"at least one of {list_students()}")
        for i, name in enumerate(families):
            if name not in list_students():
                raise ConfigError(f"students.families[{i}]", name, list_students())
            get_student_family(name).params(teacher)  # refuses a teacher the family cannot shrink
        self.teacher_space = teacher_space
        self.teacher = teacher
        self.families = families
        self.include_teacher = include_teacher
        self.choices = ((TEACHER,) if include_teacher else ()) + families
        #: The model choice, then each family's own parameters while that family is chosen.
        self.dims: tuple[Dimension, ...] = (
            Dimension("family", optuna.distributions.CategoricalDistribution(self.choices)),
            *(
                Dimension(name, dist, when=("family", (family,)))
                for family in families
                for name, dist in student_distributions(family, teacher, prefix="").items()
            ),
        )
        self._spaces: dict[tuple, CompressionSpace] = {}

    # What the search reads of any space: the teacher's, for warm starts and logging.
    @property
    def layers(self) -> tuple[str, ...]:
        return self.teacher_space.layers

    @property
    def finetune(self) -> FinetuneConfig:
        return self.teacher_space.finetune

    @property
    def methods(self) -> tuple[str, ...]:
        return self.teacher_space.methods if self.include_teacher else ()

    @property
    def bits(self) -> tuple[int, ...]:
        return self.teacher_space.bits

    @property
    def warm_start(self) -> list[dict[str, Any]]:
        if not self.include_teacher:
            return []
        return [{FAMILY_KEY: TEACHER, **p} for p in self.teacher_space.warm_start]

    @warm_start.setter
    def warm_start(self, points: list[dict[str, Any]]) -> None:
        self.teacher_space.warm_start = points

    @property
    def dimensions(self) -> int:
        """The family choice and each family's own parameters, plus the teacher's dimensions."""
        return dims.count(self.dims) + (self.teacher_space.dimensions if self.include_teacher else 0)

    def uniform_params(self, bits: int) -> dict[str, Any]:
        """The teacher's uniform plan (see :meth:`CompressionSpace.uniform_params`), tagged as the teacher."""
        return {FAMILY_KEY: TEACHER, **self.teacher_space.uniform_params(bits)}

    def suggest(self, trial: optuna.Trial) -> None:
        """Define-by-run: the family, then its parameters, then the chosen model's per-layer dims."""
        values = dims.sample(trial, _STUDENT_PREFIX.rstrip("."), self.dims)
        family = values.pop("family")
        if family == TEACHER:
            self.teacher_space.suggest(trial)
            return
        self.space_for(family, values).suggest(_Prefixed(trial, f"{family}:"))

    def space_for(self, family: str, params: Mapping[str, Any]) -> CompressionSpace:
        """The per-layer space of the student ``family`` builds with ``params`` (cached)."""
        key = (family, tuple(sorted(params.items())))
        if key not in self._spaces:
            student = get_student_family(family).build(self.teacher, **params)
            base = self.teacher_space
            self._spaces[key] = CompressionSpace.from_model(
                student,
                sparsity=base.sparsity,
                bits=base.bits,
                methods=base.methods,
                group_size=base.settings.group_size,
                finetune=base.finetune,
                target=base.target,
                accuracy_level=base.accuracy_level,
            )
        return self._spaces[key]

    def resolve(self, params: Mapping[str, Any]) -> StudentChoice:
        """The model choice, its parameters and the plan a sampled parameter dict stands for."""
        family = params.get(FAMILY_KEY, self.choices[0])
        dims.check({"family": family}, self.dims[:1], {"family": FAMILY_KEY})
        if family == TEACHER:
            return StudentChoice(TEACHER, {}, self.teacher_space.decode(params), self.teacher_space)
        student_params = dims.read(params, _STUDENT_PREFIX.rstrip("."), self.dims)
        del student_params["family"]
        space = self.space_for(family, student_params)
        layer_params = {k.removeprefix(f"{family}:"): v for k, v in params.items() if k.startswith(f"{family}:")}
        return StudentChoice(family, student_params, space.decode(layer_params), space)

    def decode(self, params: Mapping[str, Any]) -> CompressionPlan:
        """The compression plan of the chosen model (its layers are the student's for a student)."""
        return self.resolve(params).plan

    def describe(self) -> dict[str, Any]:
        """The teacher's space description plus the student families and their parameters."""
        return {
            **self.teacher_space.describe(),
            "students": {
                "choices": list(self.choices),
                "families": {
                    f: {k: repr(d) for k, d in student_distributions(f, self.teacher).items()} for f in self.families
                },
            },
        }

    def __getstate__(self) -> dict[str, Any]:
        # Trials get the space through the object store: the cache is rebuilt where needed.
        return {**self.__dict__, "_spaces": {}}
