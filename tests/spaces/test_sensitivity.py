"""Per-layer sensitivity probes (in process and as Ray tasks), their MLflow run, and the warm-start plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from rayzor.compression import CompressionPlan, FinetuneConfig, compress
from rayzor.search import drop_matrix, level_label, load_config, warm_start_points
from rayzor.search.cli import app
from rayzor.spaces import CompressionSpace, SensitivityRow, sensitivity, sensitivity_points
from rayzor.tasks import create_task

ROOT = Path(__file__).resolve().parents[2]
WINE = ROOT / "examples" / "wine.yaml"


@pytest.fixture(scope="module")
def wine():
    return create_task("examples.wine_task:make_task")


def test_probes_compress_one_unit_alone(wine):
    space = CompressionSpace.from_model(
        wine.model, bits=(4, 8, 32), sparsity=(0.0, 0.8), groups=[{"name": "body", "match": ["body.*"], "tie": True}]
    )
    rows = sensitivity(wine, space, sparsities=(0.5, 0.9))
    # 0.9 is outside the range; fp32 is no probe
    assert [(r.unit, r.dimension, r.value) for r in rows] == [
        ("body", "sparsity", 0.5),
        ("body", "bits", 8),
        ("body", "bits", 4),
        ("head", "sparsity", 0.5),
        ("head", "bits", 8),
        ("head", "bits", 4),
    ]
    base = wine.baseline["val"]["accuracy"]
    # A tied group's probe compresses all its layers, and nothing else.
    plan = CompressionPlan.from_settings(
        {"body.0": {"sparsity": 0.5}, "body.2": {"sparsity": 0.5}}, finetune=FinetuneConfig(epochs=0)
    )
    expected = wine.score(compress(wine.model, plan).model, "val")["accuracy"]
    assert rows[0].metric == pytest.approx(expected) and rows[0].drop == pytest.approx(base - expected)


def test_points_take_the_most_aggressive_level_within_each_tolerance():
    space = CompressionSpace(["a", "b"], bits=(2, 4, 8, 32))
    rows = [
        SensitivityRow("a", "sparsity", 0.5, 0, 0.001),
        SensitivityRow("a", "sparsity", 0.75, 0, 0.008),
        SensitivityRow("a", "bits", 4, 0, 0.0),
        SensitivityRow("a", "bits", 2, 0, 0.3),
        SensitivityRow("b", "sparsity", 0.5, 0, 0.5),
        SensitivityRow("b", "bits", 8, 0, 0.02),
    ]
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


def test_parallel_probes_on_ray_equal_the_sequential_ones(wine, ray_session):
    space = CompressionSpace.from_model(
        wine.model, bits=(2, 4, 8, 32), sparsity=(0.0, 0.9), groups=[{"name": "body", "match": ["body.*"], "tie": True}]
    )
    sequential = sensitivity(wine, space)
    parallel = sensitivity(wine, space, parallel=True)
    assert [(r.unit, r.dimension, r.value) for r in parallel] == [(r.unit, r.dimension, r.value) for r in sequential]
    assert len(parallel) == 14  # body and head: 4 sparsities + 3 bit-widths each
    torch.testing.assert_close([r.metric for r in parallel], [r.metric for r in sequential])
    torch.testing.assert_close([r.drop for r in parallel], [r.drop for r in sequential])
    assert sensitivity_points(space, parallel) == sensitivity_points(space, sequential)


def test_parallel_without_ray_is_refused_not_run_in_process():
    # A fresh interpreter: this session's Ray may be running already.
    code = (
        "from rayzor.tasks import create_task\n"
        "from rayzor.spaces import CompressionSpace, sensitivity\n"
        "task = create_task('examples.wine_task:make_task', epochs=5)\n"
        "try:\n"
        "    sensitivity(task, CompressionSpace.from_model(task.model), parallel=True)\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.startswith("RayzorError sensitivity(parallel=True) needs a running Ray"), out.stdout + out.stderr


@pytest.fixture(scope="module")
def cli_run(ray_session, tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('sensitivity') / 'mlflow.db'}"
    result = CliRunner().invoke(
        app, ["sensitivity", str(WINE), "--json", "--tracking-uri", uri, "--experiment", "sens"]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), MlflowClient(uri)


def test_sensitivity_cli_json(cli_run):
    view, _ = cli_run
    assert view["task"] == "wine" and view["metric"] == "accuracy"
    assert {p["unit"] for p in view["probes"]} == {"body", "head"}  # the tied group is probed as one unit
    space = load_config(WINE).space.build(create_task("examples.wine_task:make_task").model)
    assert view["warm_start"] and all(space.encode(space.decode(p)) == p for p in view["warm_start"])


def test_sensitivity_cli_logs_a_run_with_table_and_heatmap(cli_run, tmp_path):
    view, client = cli_run
    run = client.get_run(view["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["rayzor.role"] == "sensitivity"
    assert client.get_experiment(run.info.experiment_id).name == "sens"
    assert run.data.params["probes"] == str(len(view["probes"]))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"sensitivity.json", "sensitivity.csv", "heatmap.png", "warm_start.json", "space.json"} <= artifacts
    with open(client.download_artifacts(run.info.run_id, "sensitivity.json", str(tmp_path))) as f:
        table = json.load(f)  # MLflow's table format
    rows = [dict(zip(table["columns"], row)) for row in table["data"]]
    assert [(r["unit"], r["dimension"], r["value"], r["drop"]) for r in rows] == [
        (p["unit"], p["dimension"], p["value"], pytest.approx(p["drop"])) for p in view["probes"]
    ]
    assert {r["layers"] for r in rows if r["unit"] == "body"} == {"body.0,body.2"}
    with open(client.download_artifacts(run.info.run_id, "warm_start.json", str(tmp_path))) as f:
        assert json.load(f) == view["warm_start"]
    png = Path(client.download_artifacts(run.info.run_id, "heatmap.png", str(tmp_path))).read_bytes()
    assert png.startswith(b"\x89PNG")


def test_drop_matrix_orders_levels_mild_to_harsh():
    rows = [
        SensitivityRow("a", "bits", 4, 0, 0.1),
        SensitivityRow("a", "sparsity", 0.9, 0, 0.3),
        SensitivityRow("b", "bits", 8, 0, 0.0),
        SensitivityRow("a", "sparsity", 0.5, 0, 0.2),
    ]
    units, levels, matrix = drop_matrix(rows)
    assert units == ["a", "b"]
    assert [level_label(*lv) for lv in levels] == ["s=0.5", "s=0.9", "8b", "4b"]
    assert matrix == [[0.2, 0.3, None, 0.1], [None, None, 0.0, None]]
