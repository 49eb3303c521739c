"""Per-layer sensitivity probes and the warm-start plans they give (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compression import CompressionPlan, FinetuneConfig, compress
from compression.tasks import create_task
from search import load_config
from search._runner import warm_start_points
from search.cli import app
from spaces import CompressionSpace, SensitivityRow, sensitivity, sensitivity_points

WINE = Path(__file__).resolve().parents[2] / "examples" / "wine.yaml"


@pytest.fixture(scope="module")
def wine():
    return create_task("examples.wine_task:make_task")


def test_probes_compress_one_unit_alone(wine):
    space = CompressionSpace.from_model(wine.model, bits=(4, 8, 32), sparsity=(0.0, 0.8),
                                        groups=[{"name": "body", "match": ["body.*"], "tie": True}])
    rows = sensitivity(wine, space, sparsities=(0.5, 0.9))
    # 0.9 is outside the range; fp32 is no probe
    assert [(r.unit, r.dimension, r.value) for r in rows] == [
        ("body", "sparsity", 0.5), ("body", "bits", 8), ("body", "bits", 4),
        ("head", "sparsity", 0.5), ("head", "bits", 8), ("head", "bits", 4)]
    base = wine.baseline["val"]["accuracy"]
    # A tied group's probe compresses all its layers, and nothing else.
    plan = CompressionPlan.from_settings({"body.0": {"sparsity": 0.5}, "body.2": {"sparsity": 0.5}},
                                         finetune=FinetuneConfig(epochs=0))
    expected = wine.score(compress(wine.model, plan).model, "val")["accuracy"]
    assert rows[0].metric == pytest.approx(expected) and rows[0].drop == pytest.approx(base - expected)


def test_points_take_the_most_aggressive_level_within_each_tolerance():
    space = CompressionSpace(["a", "b"], bits=(2, 4, 8, 32))
    rows = [SensitivityRow("a", "sparsity", 0.5, 0, 0.001), SensitivityRow("a", "sparsity", 0.75, 0, 0.008),
            SensitivityRow("a", "bits", 4, 0, 0.0), SensitivityRow("a", "bits", 2, 0, 0.3),
            SensitivityRow("b", "sparsity", 0.5, 0, 0.5), SensitivityRow("b", "bits", 8, 0, 0.02)]
    points = sensitivity_points(space, rows, tolerances=(0.005, 0.01, 0.02))
    assert points == [
        {"a.sparsity": 0.5, "a.bits": 4, "b.sparsity": 0.0, "b.bits": 32},  # b: nothing within 0.005 -> mildest
        {"a.sparsity": 0.75, "a.bits": 4, "b.sparsity": 0.0, "b.bits": 32},
        {"a.sparsity": 0.75, "a.bits": 4, "b.sparsity": 0.0, "b.bits": 8},
    ]
    for p in points:
        assert space.encode(space.decode(p)) == p
    space.warm_start = points
    assert warm_start_points(space, load_config(warm_start="sensitivity", trials=4)) == points[:2]  # half the budget


def test_sensitivity_cli_json():
    result = CliRunner().invoke(app, ["sensitivity", str(WINE), "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    assert view["task"] == "wine" and view["metric"] == "accuracy"
    assert {p["unit"] for p in view["probes"]} == {"body", "head"}  # the tied group is probed as one unit
    space = load_config(WINE).space.build(create_task("examples.wine_task:make_task").model)
    assert view["warm_start"] and all(space.encode(space.decode(p)) == p for p in view["warm_start"])
