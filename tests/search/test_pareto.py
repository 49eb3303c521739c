"""Tests for search._pareto: fronts, exact hypervolume, --pick."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from rayzor.errors import ConfigError, NoMatchError, RayzorError
from rayzor.search import (
    Constraint,
    PickSpec,
    hypervolume,
    pareto_mask,
    parse_pick,
    pick,
    to_minimization,
)

MIN2 = ["minimize", "minimize"]
MIN3 = ["minimize"] * 3


# ---------------------------------------------------------------------------
# Brute-force references (independent of the implementation)
# ---------------------------------------------------------------------------


def grid_count(points: np.ndarray, ref: int) -> int:
    """Unit cells of [0, ref)^m dominated by integer minimised points."""
    m = points.shape[1]
    points = points[np.all(points < ref, axis=1)]
    if len(points) == 0:
        return 0
    cells = np.indices((ref,) * m).reshape(m, -1).T  # lower corners
    # Cell [c, c+1] lies in the box [p, ref] iff p <= c.
    covered = np.all(points[None, :, :] <= cells[:, None, :], axis=2).any(axis=1)
    return int(covered.sum())


def inclusion_exclusion(points: np.ndarray, ref: np.ndarray) -> float:
    """Union of boxes [p, ref] by inclusion-exclusion (tiny n only)."""
    points = points[np.all(points < ref, axis=1)]
    total = 0.0
    for r in range(1, len(points) + 1):
        for subset in itertools.combinations(points, r):
            corner = np.max(subset, axis=0)  # intersection of the boxes
            total += (-1) ** (r + 1) * float(np.prod(ref - corner))
    return total


# ---------------------------------------------------------------------------
# to_minimization
# ---------------------------------------------------------------------------


def test_to_minimization_negates_maximize_columns_and_copies():
    values = np.array([[0.9, 10.0], [0.8, 5.0]])
    out = to_minimization(values, ["maximize", "minimize"])
    np.testing.assert_array_equal(out, [[-0.9, 10.0], [-0.8, 5.0]])
    assert out.dtype == float
    assert values[0, 0] == 0.9  # input untouched


def test_to_minimization_empty_input():
    assert to_minimization([], MIN2).shape == (0, 2)
    assert to_minimization(np.empty((0, 3)), MIN3).shape == (0, 3)


@pytest.mark.parametrize("directions", [["minimize", "up"], ["MIN", "minimize"]])
def test_to_minimization_bad_direction_lists_valid(directions):
    with pytest.raises(ConfigError) as info:
        to_minimization([[1.0, 2.0]], directions)
    assert info.value.field == "directions"
    assert "'minimize'" in str(info.value) and "'maximize'" in str(info.value)


def test_to_minimization_bare_string_and_empty_directions():
    with pytest.raises(ConfigError, match="directions"):
        to_minimization([[1.0]], "minimize")
    with pytest.raises(ConfigError, match="directions"):
        to_minimization([[1.0]], [])


@pytest.mark.parametrize("values", [[1.0, 2.0], [[1.0, 2.0, 3.0]], [[[1.0, 2.0]]]])
def test_to_minimization_shape_mismatch(values):
    with pytest.raises(ConfigError) as info:
        to_minimization(values, MIN2)
    assert info.value.field == "values.shape"


def test_to_minimization_non_numeric():
    with pytest.raises(ConfigError, match="values"):
        to_minimization([["a", "b"]], MIN2)


# ---------------------------------------------------------------------------
# pareto_mask
# ---------------------------------------------------------------------------


def test_pareto_mask_2d_drops_dominated_point():
    values = [[1, 3], [2, 2], [3, 1], [2.5, 2.5], [3, 3]]
    assert pareto_mask(values, MIN2).tolist() == [True, True, True, False, False]


def test_pareto_mask_weakly_dominated_point_is_dropped():
    # Equal in one objective, worse in the other.
    assert pareto_mask([[1, 1], [1, 2], [2, 1]], MIN2).tolist() == [True, False, False]


def test_pareto_mask_keeps_all_duplicates():
    values = [[1, 2], [1, 2], [2, 1], [3, 3], [3, 3]]
    assert pareto_mask(values, MIN2).tolist() == [True, True, True, False, False]


def test_pareto_mask_maximize_minimize_mix():
    # (accuracy up, size down)
    values = [[0.90, 100], [0.95, 200], [0.85, 150], [0.95, 300], [0.80, 50]]
    mask = pareto_mask(values, ["maximize", "minimize"])
    assert mask.tolist() == [True, True, False, False, True]


def test_pareto_mask_three_objectives():
    values = [
        [1, 2, 3],
        [3, 2, 1],
        [2, 2, 2],  # incomparable with the two above
        [2, 3, 3],  # dominated by [1, 2, 3]
        [3, 3, 1],  # dominated by [3, 2, 1]
        [1, 1, 5],
    ]
    assert pareto_mask(values, MIN3).tolist() == [True, True, True, False, False, True]


def test_pareto_mask_non_finite_rows_never_on_front_nor_dominate():
    values = [[np.nan, 0.0], [1.0, 1.0], [-np.inf, -np.inf], [2.0, 0.5], [0.0, np.inf]]
    assert pareto_mask(values, MIN2).tolist() == [False, True, False, True, False]


def test_pareto_mask_empty():
    mask = pareto_mask([], MIN2)
    assert mask.shape == (0,) and mask.dtype == bool


def test_pareto_mask_single_point():
    assert pareto_mask([[5.0, 5.0]], MIN2).tolist() == [True]


# ---------------------------------------------------------------------------
# hypervolume
# ---------------------------------------------------------------------------


def test_hypervolume_2d_staircase():
    assert hypervolume([[1, 3], [2, 2], [3, 1]], MIN2, [4, 4]) == pytest.approx(6.0)


def test_hypervolume_2d_ignores_dominated_and_order():
    values = [[3, 1], [2.5, 2.5], [1, 3], [2, 2], [3, 3]]
    assert hypervolume(values, MIN2, [4, 4]) == pytest.approx(6.0)


def test_hypervolume_point_outside_reference_contributes_nothing():
    base = hypervolume([[1, 3], [2, 2]], MIN2, [4, 4])
    # Beyond the reference in one objective, on it, or beyond in both.
    for extra in ([0, 5], [0, 4], [5, 5]):
        assert hypervolume([[1, 3], [2, 2], extra], MIN2, [4, 4]) == pytest.approx(base)
    assert hypervolume([[5, 5]], MIN2, [4, 4]) == 0.0


def test_hypervolume_empty_and_non_finite_rows():
    assert hypervolume([], MIN2, [1, 1]) == 0.0
    values = [[1, 1], [np.nan, 0], [-np.inf, 0]]
    assert hypervolume(values, MIN2, [2, 2]) == pytest.approx(1.0)


def test_hypervolume_one_objective():
    assert hypervolume([[3.0], [1.0], [7.0]], ["minimize"], [5.0]) == pytest.approx(4.0)
    assert hypervolume([[0.8], [0.9]], ["maximize"], [0.5]) == pytest.approx(0.4)


def test_hypervolume_maximize_direction():
    # Same staircase mirrored: maximise both, reference (0, 0).
    got = hypervolume([[3, 1], [2, 2], [1, 3]], ["maximize", "maximize"], [0, 0])
    assert got == pytest.approx(6.0)
    # Mixed: accuracy up from 0.5, size down from 100.
    values = [[0.9, 40], [0.7, 20]]
    # boxes [0.5,0.9]x[40,100] = 24 and [0.5,0.7]x[20,100] = 16, overlap
    # [0.5,0.7]x[40,100] = 12 -> 28.
    got = hypervolume(values, ["maximize", "minimize"], [0.5, 100])
    assert got == pytest.approx(28.0)
    # A point worse than the reference in its maximised objective.
    assert hypervolume([[0.4, 10]], ["maximize", "minimize"], [0.5, 100]) == 0.0


def test_hypervolume_3d_single_box():
    assert hypervolume([[1, 2, 3]], MIN3, [4, 4, 4]) == pytest.approx(3 * 2 * 1)


def test_hypervolume_3d_two_overlapping_boxes():
    # |A| = 3*2*1 = 6, |B| = 1*2*3 = 6, A∩B = box from max corner (3,2,3)
    # = 1*2*1 = 2 -> 6 + 6 - 2 = 10.
    assert hypervolume([[1, 2, 3], [3, 2, 1]], MIN3, [4, 4, 4]) == pytest.approx(10.0)


def test_hypervolume_3d_three_boxes_inclusion_exclusion():
    # Each box is 2*2*1 = 4 (x3 = 12); each pair meets in a box from a corner
    # like (0,1,1): 2*1*1 = 2 (x3 = 6); all three meet in (1,1,1): 1.
    # 12 - 6 + 1 = 7, i.e. every unit cell of [0,2)^3 but the one at the origin.
    pts = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]
    assert hypervolume(pts, MIN3, [2, 2, 2]) == pytest.approx(7.0)


def test_hypervolume_3d_duplicates_and_dominated_points():
    pts = [[1, 2, 3], [1, 2, 3], [3, 2, 1], [3, 3, 3]]
    assert hypervolume(pts, MIN3, [4, 4, 4]) == pytest.approx(10.0)


def test_hypervolume_3d_mixed_directions():
    # Negate the first column and flip its direction: the volume is unchanged.
    pts = np.array([[1, 2, 3], [3, 2, 1]], dtype=float)
    mirrored = pts * [-1, 1, 1]
    got = hypervolume(mirrored, ["maximize", "minimize", "minimize"], [-4, 4, 4])
    assert got == pytest.approx(10.0)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_matches_grid_count(m, seed):
    rng = np.random.default_rng(seed)
    ref = 6
    # Include values on and past the reference, plus duplicates and ties.
    pts = rng.integers(0, ref + 2, size=(int(rng.integers(1, 12)), m)).astype(float)
    assert hypervolume(pts, ["minimize"] * m, [ref] * m) == grid_count(pts, ref)


@pytest.mark.parametrize("m", [3, 4, 5])
@pytest.mark.parametrize("seed", range(4))
def test_hypervolume_matches_inclusion_exclusion_on_floats(m, seed):
    rng = np.random.default_rng(100 + seed)
    pts = rng.random((7, m))
    ref = np.full(m, 0.9)
    assert hypervolume(pts, ["minimize"] * m, ref) == pytest.approx(inclusion_exclusion(pts, ref))


def test_hypervolume_bad_reference():
    for bad in ([4], [4, 4, 4], [4, np.nan], [np.inf, 4], ["a", "b"]):
        with pytest.raises(ConfigError) as info:
            hypervolume([[1, 1]], MIN2, bad)
        assert info.value.field == "reference"


# ---------------------------------------------------------------------------
# Constraint / PickSpec / parse_pick
# ---------------------------------------------------------------------------

METRICS = {"accuracy", "size_bytes", "latency_ms"}


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [(">=", 0.9, True), (">=", 0.95, False), ("<=", 0.9, True), (">", 0.9, False),
     ("<", 0.95, True), ("==", 0.9, True), ("==", 0.91, False)],
)  # fmt: skip
def test_constraint_ok(op, value, expected):
    assert Constraint("accuracy", op, value).ok({"accuracy": 0.9}) is expected


def test_constraint_eq_tolerates_rounding_and_missing_or_nan_fails():
    assert Constraint("x", "==", 0.3).ok({"x": 0.1 + 0.2})
    assert not Constraint("x", ">=", 0.0).ok({"y": 1.0})
    assert not Constraint("x", "<=", 1.0).ok({"x": math.nan})


def test_constraint_bad_op():
    with pytest.raises(ConfigError, match="--pick"):
        Constraint("x", "!=", 1.0)


def test_parse_pick_constraint_and_objective():
    spec = parse_pick("accuracy>=0.95,min:size_bytes", METRICS)
    assert spec == PickSpec((Constraint("accuracy", ">=", 0.95),), ("min", "size_bytes"))


def test_parse_pick_tolerates_whitespace_and_all_ops():
    spec = parse_pick(
        " accuracy >= 0.9 , latency_ms<5 ,size_bytes <= 1e6, accuracy>0.1, latency_ms == 3 ,max : accuracy ",
        METRICS,
    )
    assert spec.constraints == (
        Constraint("accuracy", ">=", 0.9),
        Constraint("latency_ms", "<", 5.0),
        Constraint("size_bytes", "<=", 1e6),
        Constraint("accuracy", ">", 0.1),
        Constraint("latency_ms", "==", 3.0),
    )
    assert spec.objective == ("max", "accuracy")


def test_parse_pick_only_objective_or_only_constraints():
    assert parse_pick("max:accuracy", METRICS) == PickSpec((), ("max", "accuracy"))
    assert parse_pick("size_bytes<1000", METRICS) == PickSpec((Constraint("size_bytes", "<", 1000.0),), None)


def test_pickspec_str_round_trips():
    text = "accuracy>=0.95,size_bytes<1000000,max:accuracy"
    spec = parse_pick(text, METRICS)
    assert str(spec) == text
    assert parse_pick(str(spec), METRICS) == spec


def test_parse_pick_unknown_metric_lists_known():
    for bad in ("acc>=0.9", "min:bytes"):
        with pytest.raises(ConfigError) as info:
            parse_pick(f"latency_ms<5,{bad}", METRICS)
        assert info.value.field == "--pick"
        assert info.value.value == bad
        assert info.value.valid == sorted(METRICS)


@pytest.mark.parametrize(
    ("spec", "bad"),
    [
        ("min:accuracy,max:size_bytes", "max:size_bytes"),  # two objectives
        ("accuracy>=high", "accuracy>=high"),  # non-numeric
        ("accuracy>=nan", "accuracy>=nan"),
        ("accuracy=0.9", "accuracy=0.9"),  # bad syntax
        ("accuracy!=0.9", "accuracy!=0.9"),
        ("accuracy=>0.9", "accuracy=>0.9"),
        ("accuracy>=", "accuracy>="),
        ("best:accuracy", "best:accuracy"),
        ("accuracy", "accuracy"),
        ("accuracy>=0.9 0.8", "accuracy>=0.9 0.8"),
        ("", ""),  # empty spec
        ("   ", "   "),
        ("accuracy>=0.9,,min:size_bytes", "accuracy>=0.9,,min:size_bytes"),  # empty part
    ],
)
def test_parse_pick_errors_name_the_bad_part(spec, bad):
    with pytest.raises(ConfigError) as info:
        parse_pick(spec, METRICS)
    assert info.value.field == "--pick"
    assert info.value.value == bad
    assert "METRIC>=V" in str(info.value) and "min:METRIC" in str(info.value)


def test_pickspec_bad_sense():
    with pytest.raises(ConfigError, match="--pick"):
        PickSpec((), ("best", "accuracy"))


# ---------------------------------------------------------------------------
# pick
# ---------------------------------------------------------------------------

CANDIDATES = [
    {"accuracy": 0.91, "size_bytes": 1000.0},
    {"accuracy": 0.97, "size_bytes": 4000.0},
    {"accuracy": 0.95, "size_bytes": 2000.0},
    {"accuracy": 0.98, "size_bytes": 8000.0},
    {"accuracy": 0.96, "size_bytes": 2000.0},
]


def test_pick_filters_then_minimises():
    assert pick(CANDIDATES, parse_pick("accuracy>=0.95,min:size_bytes", METRICS)) == 2


def test_pick_maximises():
    assert pick(CANDIDATES, parse_pick("size_bytes<5000,max:accuracy", METRICS)) == 1


def test_pick_ties_go_to_first():
    assert pick(CANDIDATES, parse_pick("min:size_bytes,accuracy>0.92", METRICS)) == 2


def test_pick_without_objective_takes_first_match():
    assert pick(CANDIDATES, parse_pick("accuracy>0.96", METRICS)) == 1


def test_pick_skips_unrankable_objective_values():
    cands = [{"accuracy": math.nan, "size_bytes": 1.0}, {"accuracy": 0.5, "size_bytes": 2.0}]
    assert pick(cands, PickSpec((), ("max", "accuracy"))) == 1


def test_pick_no_match_reports_spec_and_ranges():
    with pytest.raises(NoMatchError) as info:
        pick(CANDIDATES, parse_pick("accuracy>=0.999", METRICS))
    assert isinstance(info.value, RayzorError)
    assert str(info.value) == (
        "no Pareto-optimal trial satisfies 'accuracy>=0.999': accuracy ranges 0.91..0.98 over 5 candidates"
    )


def test_pick_no_match_lists_every_involved_metric_once():
    spec = parse_pick("accuracy>=0.97,size_bytes<3000,min:size_bytes", METRICS)
    with pytest.raises(NoMatchError) as info:
        pick(CANDIDATES, spec)
    msg = str(info.value)
    assert "'accuracy>=0.97,size_bytes<3000,min:size_bytes'" in msg
    assert "accuracy ranges 0.91..0.98, size_bytes ranges 1000..8000 over 5" in msg


def test_pick_no_candidates():
    with pytest.raises(NoMatchError, match="latency_ms has no values over 0 candidates"):
        pick([], parse_pick("latency_ms<5", METRICS))
