"""Pareto fronts, exact hypervolume and the ``--pick`` rule for one trial.

Pure functions on numpy arrays. Every objective is first normalised to
minimisation (:func:`to_minimization` negates the ``maximize`` columns), as in
Optuna's ``study/_multi_objective.py``, so the rest of the module only ever
reasons about "smaller is better".

Conventions shared by :func:`pareto_mask` and :func:`hypervolume`:

* ``a`` dominates ``b`` when ``a`` is no worse in every objective and strictly
  better in at least one. Identical points therefore do not dominate each
  other, and every copy of a duplicated front point is kept.
* Rows holding NaN or +/-inf (failed or diverged trials) are never on the
  front, never dominate anything and add no hypervolume: ``-inf`` in a
  minimised column would otherwise dominate every real trial.
"""

from __future__ import annotations

import math
import operator
import re
from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from numpy.typing import ArrayLike

from rayzor.errors import ConfigError, NoMatchError

__all__ = [
    "Constraint",
    "Direction",
    "NoMatchError",
    "PickSpec",
    "hypervolume",
    "parse_pick",
    "pareto_mask",
    "pick",
    "to_minimization",
]

Direction = Literal["minimize", "maximize"]
_DIRECTIONS: tuple[str, ...] = get_args(Direction)

# Cap on the booleans materialised per block by the pairwise dominance test
# (16 Mi entries = 16 MiB), so large studies do not allocate n*n*m at once.
_DOMINANCE_BLOCK = 1 << 24


# ---------------------------------------------------------------------------
# Directions
# ---------------------------------------------------------------------------


def _check_directions(directions: Sequence[str]) -> tuple[str, ...]:
    # A bare string is a Sequence[str] too; iterating it would report 'm'.
    if isinstance(directions, str):
        raise ConfigError("directions", directions, "a sequence of 'minimize'/'maximize', one per objective")
    directions = tuple(directions)
    if not directions:
        raise ConfigError("directions", directions, "at least one of 'minimize', 'maximize'")
    for d in directions:
        if d not in _DIRECTIONS:
            raise ConfigError("directions", d, _DIRECTIONS)
    return directions


def to_minimization(values: ArrayLike, directions: Sequence[str]) -> np.ndarray:
    """Return objective values as a float array where smaller is always better.

    Args:
        values: ``(n, m)`` objective values, one row per trial, one column per
            objective. An empty input (``[]``) is read as ``(0, m)``.
        directions: ``m`` entries, each ``"minimize"`` or ``"maximize"``.

    Returns:
        A new ``(n, m)`` float array with the ``maximize`` columns negated.

    Raises:
        ConfigError: If a direction is unknown, ``values`` is not numeric, or
            its shape does not match ``directions``.
    """
    directions = _check_directions(directions)
    m = len(directions)
    try:
        arr = np.array(values, dtype=float)  # always a copy: callers keep their data
    except (TypeError, ValueError):
        raise ConfigError("values", values, f"a numeric array of shape (n, {m})") from None
    if arr.size == 0 and arr.ndim == 1:
        arr = arr.reshape(0, m)
    if arr.ndim != 2 or arr.shape[1] != m:
        raise ConfigError("values.shape", arr.shape, f"(n, {m}): one column per direction")
    arr[:, [d == "maximize" for d in directions]] *= -1.0
    return arr


# ---------------------------------------------------------------------------
# Pareto front
# ---------------------------------------------------------------------------


def _nondominated(points: np.ndarray) -> np.ndarray:
    """Mask of the non-dominated rows of finite, minimised ``(k, m)`` points."""
    k, m = points.shape
    dominated = np.zeros(k, dtype=bool)
    block = max(1, _DOMINANCE_BLOCK // max(1, k * m))
    for start in range(0, k, block):
        rows = points[start : start + block, None, :]  # (b, 1, m)
        # [i, j] is True when points[j] dominates rows[i].
        no_worse = np.all(points[None, :, :] <= rows, axis=2)
        better = np.any(points[None, :, :] < rows, axis=2)
        dominated[start : start + block] = np.any(no_worse & better, axis=1)
    return ~dominated


def pareto_mask(values: ArrayLike, directions: Sequence[str]) -> np.ndarray:
    """Flag the non-dominated points.

    Args:
        values: ``(n, m)`` objective values in their original units.
        directions: ``m`` entries, each ``"minimize"`` or ``"maximize"``.

    Returns:
        ``(n,)`` bool array, True for points no other finite point dominates.
        Duplicated front points are all True; rows with NaN/inf are False.

    Raises:
        ConfigError: As :func:`to_minimization`.
    """
    points = to_minimization(values, directions)
    mask = np.zeros(len(points), dtype=bool)
    finite = np.all(np.isfinite(points), axis=1)
    mask[finite] = _nondominated(points[finite])
    return mask


# ---------------------------------------------------------------------------
# Hypervolume
#
# The private helpers take minimised points that are finite and strictly
# better than ``ref`` in every objective (hypervolume() guarantees both).
# ---------------------------------------------------------------------------


def _hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated in 2-D: one sweep along x, O(n log n)."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    x = points[order, 0]
    # The staircase height over [x_i, x_{i+1}) is the best y seen so far;
    # dominated points simply do not lower it, so no filtering is needed.
    y = np.minimum.accumulate(points[order, 1])
    widths = np.append(x[1:], ref[0]) - x
    return float(np.dot(widths, ref[1] - y))


def _hv_3d(points: np.ndarray, ref: np.ndarray) -> float:
    """Volume dominated in 3-D: slice along z, keep the 2-D slab area updated.

    Sweeping the points by increasing z, each slab ``[z_k, z_{k+1})`` is
    covered by the 2-D front of the points swept so far. That front is kept
    as a staircase (x ascending, y strictly descending) and its area is
    updated on each insertion instead of being recomputed, so the whole
    sweep costs O(n log n) comparisons plus list shifts.
    """
    order = np.argsort(points[:, 2], kind="stable")
    pts = points[order].tolist()
    rx, ry, rz = (float(r) for r in ref)
    xs: list[float] = []
    ys: list[float] = []
    area = volume = 0.0
    for k, (x, y, z) in enumerate(pts):
        if k:
            volume += area * (z - pts[k - 1][2])
        i = bisect_left(xs, x)  # xs[:i] < x <= xs[i:]
        if (i > 0 and ys[i - 1] <= y) or (i < len(xs) and xs[i] == x and ys[i] <= y):
            continue  # the slab front already covers (x, y)
        # Newly covered area: integrate (old height - y) from x rightwards
        # across the steps the new point removes, up to the first step lower
        # than y (or the reference).
        height = ys[i - 1] if i > 0 else ry
        left = x
        j = i
        while j < len(xs) and ys[j] >= y:
            area += (xs[j] - left) * (height - y)
            left, height = xs[j], ys[j]
            j += 1
        area += ((xs[j] if j < len(xs) else rx) - left) * (height - y)
        xs[i:j] = [x]
        ys[i:j] = [y]
    return volume + area * (rz - pts[-1][2])


def _hv(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by slicing along the last objective (HSO)."""
    n, m = points.shape
    if n == 0:
        return 0.0
    if m == 1:
        return float(ref[0] - points[:, 0].min())
    if m == 2:
        return _hv_2d(points, ref)
    if m == 3:
        return _hv_3d(points, ref)
    points = points[np.argsort(points[:, -1], kind="stable")]
    heights = np.append(points[1:, -1], ref[-1]) - points[:, -1]
    volume = 0.0
    for k in range(n):
        if heights[k] <= 0.0:
            continue  # tied last objective: empty slab
        # Slab k is the (m-1)-D volume of the points swept so far. The 3-D
        # sweep skips dominated points cheaply; above that, dropping them
        # first keeps the deeper recursion small.
        front = points[: k + 1, :-1]
        if m > 4:
            front = front[_nondominated(front)]
        volume += heights[k] * _hv(front, ref[:-1])
    return volume


def hypervolume(values: ArrayLike, directions: Sequence[str], reference: ArrayLike) -> float:
    """Exact hypervolume dominated by the points, bounded by ``reference``.

    Only points strictly better than ``reference`` in every objective
    contribute; the others (and NaN/inf rows) add nothing. The computation is
    exact for any number of objectives: m=1 is a difference, m=2 a sweep in
    O(n log n), m=3 a z-sweep with an incrementally updated 2-D front, and
    m>=4 slices along the last objective down to m=3 (HSO). Comfortable up to
    about n=1000 non-dominated points with m<=4.

    Args:
        values: ``(n, m)`` objective values in their original units.
        directions: ``m`` entries, each ``"minimize"`` or ``"maximize"``.
        reference: ``m`` finite values in the same original units and
            directions, e.g. the worst acceptable accuracy and size.

    Returns:
        The hypervolume as a float (0.0 when no point beats the reference).

    Raises:
        ConfigError: As :func:`to_minimization`, or if ``reference`` is not
            ``m`` finite numbers.
    """
    points = to_minimization(values, directions)
    m = points.shape[1]
    valid_ref = f"{m} finite numbers, one per direction"
    try:
        ref = to_minimization(np.reshape(np.asarray(reference, dtype=float), (1, -1)), directions)
    except (ConfigError, TypeError, ValueError):
        raise ConfigError("reference", reference, valid_ref) from None
    ref = ref[0]
    if not np.all(np.isfinite(ref)):
        raise ConfigError("reference", reference, valid_ref)
    # NaN compares False, so this also drops non-finite rows (and -inf, which
    # would make the volume infinite).
    keep = np.all(np.isfinite(points), axis=1) & np.all(points < ref, axis=1)
    points = points[keep]
    points = points[_nondominated(points)]
    return _hv(points, ref)


# ---------------------------------------------------------------------------
# --pick: choosing one trial from the front
# ---------------------------------------------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    # Exact float equality almost never holds after arithmetic (0.1 + 0.2).
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0),
}
_SENSES = ("min", "max")
_PICK_FORM = (
    "METRIC>=V, METRIC<=V, METRIC>V, METRIC<V, METRIC==V, min:METRIC, max:METRIC "
    "(comma-separated, at most one min:/max:)"
)
_OBJECTIVE_RE = re.compile(r"(min|max)\s*:\s*(\S+)")
# Longer operators first so '>=' is not read as '>' followed by '=V'.
_CONSTRAINT_RE = re.compile(r"([^\s<>=!:,]+)\s*(>=|<=|==|>|<)\s*(\S+)")


def _fmt(value: float) -> str:
    """Shortest faithful text for a threshold (``8`` not ``8.0``)."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


@dataclass(frozen=True)
class Constraint:
    """One ``METRIC OP VALUE`` condition of a ``--pick`` spec.

    Attributes:
        metric: Name of the metric, e.g. ``"accuracy"``.
        op: One of ``>=``, ``<=``, ``>``, ``<``, ``==`` (``==`` tolerates float
            rounding, relative 1e-9).
        value: The threshold.
    """

    metric: str
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ConfigError("--pick", self.op, tuple(_OPS))

    def ok(self, metrics: Mapping[str, float]) -> bool:
        """Whether ``metrics`` satisfies this condition.

        A missing or NaN metric (e.g. a failed evaluation) never satisfies it.
        """
        got = metrics.get(self.metric)
        if got is None:
            return False
        got = float(got)
        return not math.isnan(got) and bool(_OPS[self.op](got, self.value))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{_fmt(self.value)}"


@dataclass(frozen=True)
class PickSpec:
    """A parsed ``--pick`` spec.

    Attributes:
        constraints: Conditions every chosen candidate must meet.
        objective: ``("min" | "max", metric)`` ranking the matches, or None to
            take the first match.
    """

    constraints: tuple[Constraint, ...]
    objective: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.objective is not None and self.objective[0] not in _SENSES:
            raise ConfigError("--pick", self.objective[0], _SENSES)

    def __str__(self) -> str:
        parts = [str(c) for c in self.constraints]
        if self.objective is not None:
            parts.append(f"{self.objective[0]}:{self.objective[1]}")
        return ",".join(parts)


def parse_pick(spec: str, metrics: Collection[str]) -> PickSpec:
    """Parse a ``--pick`` spec such as ``"accuracy>=0.95,min:size_bytes"``.

    Args:
        spec: Comma-separated constraints ``METRIC OP VALUE`` (OP one of
            ``>=``, ``<=``, ``>``, ``<``, ``==``) plus at most one objective
            ``min:METRIC`` or ``max:METRIC``. Whitespace around parts and
            operators is ignored.
        metrics: The metric names candidates carry.

    Returns:
        The parsed :class:`PickSpec`, constraints in the order given.

    Raises:
        ConfigError: ``field="--pick"``, for an empty spec, a part with bad
            syntax, a non-numeric or NaN value, a second objective, or an
            unknown metric (then ``valid`` lists the known metrics).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("--pick", spec, _PICK_FORM)
    known = sorted(metrics)
    constraints: list[Constraint] = []
    objective: tuple[str, str] | None = None
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            # e.g. "a>=1,,min:b": the empty part has nothing to show.
            raise ConfigError("--pick", spec, _PICK_FORM)
        if match := _OBJECTIVE_RE.fullmatch(part):
            sense, metric = match.groups()
            if objective is not None:
                raise ConfigError("--pick", part, _PICK_FORM)
            if metric not in metrics:
                raise ConfigError("--pick", part, known)
            objective = (sense, metric)
        elif match := _CONSTRAINT_RE.fullmatch(part):
            metric, op, text = match.groups()
            if metric not in metrics:
                raise ConfigError("--pick", part, known)
            try:
                value = float(text)
            except ValueError:
                raise ConfigError("--pick", part, _PICK_FORM) from None
            if math.isnan(value):
                raise ConfigError("--pick", part, _PICK_FORM)
            constraints.append(Constraint(metric, op, value))
        else:
            raise ConfigError("--pick", part, _PICK_FORM)
    return PickSpec(tuple(constraints), objective)


def _ranges(candidates: Sequence[Mapping[str, float]], spec: PickSpec) -> str:
    """``"accuracy ranges 0.91..0.98"`` per metric the spec involves."""
    names = [c.metric for c in spec.constraints]
    if spec.objective is not None:
        names.append(spec.objective[1])
    parts = []
    for name in dict.fromkeys(names):  # dedupe, keep order
        vals = [float(c[name]) for c in candidates if c.get(name) is not None]
        vals = [v for v in vals if not math.isnan(v)]
        if vals:
            parts.append(f"{name} ranges {min(vals):.6g}..{max(vals):.6g}")
        else:
            parts.append(f"{name} has no values")
    return ", ".join(parts)


def pick(candidates: Sequence[Mapping[str, float]], spec: PickSpec) -> int:
    """Index of the candidate a :class:`PickSpec` chooses.

    Candidates failing any constraint are dropped; the objective then picks
    the best remaining one (ties go to the earliest). Without an objective
    the first match wins. A candidate whose objective metric is missing or
    NaN cannot be ranked and is not chosen.

    Args:
        candidates: Metrics per candidate, usually the Pareto-optimal trials.
        spec: The parsed spec, see :func:`parse_pick`.

    Returns:
        Index into ``candidates``.

    Raises:
        NoMatchError: If no candidate qualifies; the message gives the spec
            and each involved metric's range over the candidates.
    """
    best: int | None = None
    best_key = math.inf
    for idx, metrics in enumerate(candidates):
        if not all(c.ok(metrics) for c in spec.constraints):
            continue
        if spec.objective is None:
            return idx
        sense, name = spec.objective
        got = metrics.get(name)
        if got is None or math.isnan(float(got)):
            continue
        key = float(got) if sense == "min" else -float(got)
        if best is None or key < best_key:  # strict: ties keep the first
            best, best_key = idx, key
    if best is None:
        raise NoMatchError(
            f"no Pareto-optimal trial satisfies {str(spec)!r}: "
            f"{_ranges(candidates, spec)} over {len(candidates)} candidates"
        )
    return best
