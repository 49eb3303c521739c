"""Student architectures: a registry of families a search can sample, build and rebuild.

A *student* is a smaller model trained to stand in for a task's teacher
(knowledge distillation, Hinton et al. 2015, https://arxiv.org/abs/1503.02531).
Like timm's model registry, each family is registered under a short name
(:func:`register_student`) and built with :func:`create_student`. A family
is a :class:`StudentFamily` with four methods:

* ``params(teacher)``: the searchable parameters valid for this teacher, as
  neutral declarations (:class:`Choice`, :class:`IntRange`); the search
  space turns them into sampler distributions;
* ``validate(teacher, **params)``: refuse bad parameters (ConfigError naming
  the field, value and valid range) before anything trains;
* ``build(teacher, **params)``: the student, as a plain ``nn.Module`` of
  Conv/Linear layers that the engine can compress;
* ``arch(teacher, **params)``: ``{"factory": "pkg.mod:fn", "kwargs": {...}}``
  (JSON), so that a packed artifact's loader rebuilds the untrained student
  with ``factory(**kwargs)``.

Registered families: ``cnn`` (:class:`StageCNN` students of plain CNN
teachers), ``bert_layer_drop`` (BERT-style encoders with fewer layers, and
optionally fewer heads and a narrower feed-forward) and ``factory`` (a user
function ``module:function``).
"""

from rayzor.compression.students._base import (
    Choice,
    IntRange,
    Params,
    StudentFamily,
    check_student,
    create_student,
    get_student_family,
    list_students,
    register_student,
)
from rayzor.compression.students._bert import BertLayerDropStudents, build_layer_drop_encoder
from rayzor.compression.students._cnn import WIDTH_MULTS, CNNStudents, StageCNN
from rayzor.compression.students._factory import FactoryStudents, build_factory_student

__all__ = [
    "WIDTH_MULTS",
    "BertLayerDropStudents",
    "CNNStudents",
    "Choice",
    "FactoryStudents",
    "IntRange",
    "Params",
    "StageCNN",
    "StudentFamily",
    "build_factory_student",
    "build_layer_drop_encoder",
    "check_student",
    "create_student",
    "get_student_family",
    "list_students",
    "register_student",
]
