"""`rayzor space show` and the wine example: a user task with a declarative space, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rayzor.search.cli import app
from rayzor.tasks import Task, create_task

runner = CliRunner()
WINE = Path(__file__).resolve().parents[2] / "examples" / "wine.yaml"


@pytest.fixture(scope="module")
def wine_view():
    result = runner.invoke(app, ["space", "show", str(WINE), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_wine_example_is_a_user_task():
    task = create_task("examples.wine_task:make_task", hidden=16, epochs=100)
    assert isinstance(task, Task) and task.name == "wine"
    assert task.arch == {"factory": "examples.wine_task:build_mlp", "kwargs": {"hidden": 16}}
    assert task.baseline["val"]["accuracy"] > 0.85  # trained on the fly, in well under a second
    assert set(task.data) >= {"train", "val", "test"}


def test_space_show_json_resolves_the_wine_groups(wine_view):
    assert wine_view["task"] == "wine"
    rows = {row["layer"]: row for row in wine_view["layers"]}
    assert list(rows) == ["body.0", "body.2", "head"]
    assert rows["body.0"]["group"] == rows["body.2"]["group"] == "body" and rows["body.0"]["tied"]
    assert rows["head"]["group"] == "classifier" and not rows["head"]["tied"]
    assert rows["body.2"]["shape"] == [32, 32] and rows["body.2"]["params"] == 1024
    groups = {g["name"]: g for g in wine_view["groups"]}
    assert groups["body"]["layers"] == ["body.0", "body.2"] and groups["body"]["sparsity"] == [0.2, 0.9]
    assert groups["classifier"]["bits"] == [8]
    # body: one shared sparsity + bits + block size; head: sparsity + block size (bits fixed at 8); under
    # target onnxruntime (the default) every quantized Linear chooses its MatMulNBits block size
    assert wine_view["dimensions"] == 5 == groups["body"]["dimensions"] + groups["classifier"]["dimensions"]
    # The default exclusions would leave out the first and last layer; the groups' globs keep them.
    assert wine_view["default_exclusions"] and rows["body.0"]["default_exclusion"] == "first layer"
    assert (
        rows["head"]["default_exclusion"] == "last layer"
        and not rows["head"]["excluded"]
        and rows["head"]["why"] is None
    )
    # The method table: every registered method applies or is refused with a reason.
    for row in rows.values():
        assert row["kind"] == "Linear" and 0 < row["share"] < 1
        assert set(row["methods"]) | set(row["refused"]) == set(wine_view["methods"])
        assert {"magnitude_pruning", "uniform_quantization", "low_rank"} <= set(row["methods"])
    assert wine_view["compressible_params"] == 32 * 13 + 32 * 32 + 3 * 32 < wine_view["model_params"]


def test_space_show_table_and_exclusions(tmp_path):
    config = tmp_path / "wine.yaml"
    config.write_text(
        "task: examples.wine_task:make_task\nspace:\n  exclude: [head]\n"
        "  groups: [{name: body, match: ['body.*'], tie: true}]\n"
    )
    result = runner.invoke(app, ["space", "show", str(config)])
    assert result.exit_code == 0, result.output
    assert "body (tied)" in result.output and "(excluded)" in result.output
    assert "2 of 3 layers searched, 1 groups, 3 dimensions" in result.output  # sparsity, bits, group_size
    assert "methods for every layer: channel_pruning, low_rank, magnitude_pruning," in result.output  # stage order
    rows = {
        row["layer"]: row
        for row in json.loads(runner.invoke(app, ["space", "show", str(config), "--json"]).stdout)["layers"]
    }
    assert rows["head"]["excluded"] and rows["head"]["why"] == "space.exclude 'head'" and rows["head"]["dims"] == 0


def test_space_show_digits_default_exclusions(digits):
    # `digits` trains the baseline once per session; the command then loads it from the cache.
    result = runner.invoke(app, ["space", "show", "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    rows = {row["layer"]: row for row in view["layers"]}
    # conv2: sparsity and bits (int8 or fp32 under onnxruntime); fc1: sparsity, bits and its block size
    assert [name for name, row in rows.items() if not row["excluded"]] == ["conv2", "fc1"] and view["dimensions"] == 5
    assert rows["conv1"]["why"] == "first layer, tiny (144 weights, 0.38%)" and rows["fc2"]["why"] == "last layer"
    assert view["compressible_params"] == 144 + 4608 + 32768 + 640


def test_space_show_bad_glob_is_one_line_exit_2(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("task: examples.wine_task:make_task\nspace:\n  groups: [{name: b, match: ['bdy.*']}]\n")
    result = runner.invoke(app, ["space", "show", str(config)])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line
    assert line.startswith("error: space.groups[b].match: got 'bdy.*'") and "body.0" in line
