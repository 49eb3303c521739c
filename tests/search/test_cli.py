"""The rayzor CLI: search -> pareto --json -> export, and every bad input."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from rayzor.compression import load_packed
from rayzor.search.cli import app
from rayzor.tasks import create_task

runner = CliRunner()


@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory):
    """One CLI search: a YAML config plus a flag that overrides it."""
    root = tmp_path_factory.mktemp("cli")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = root / "search.yaml"
    config.write_text(
        f"trials: 3\nfinetune_epochs: 0\nstorage_path: {root / 'ray'}\nspace:\n  sparsity: [0.0, 0.9]\n  bits: [4, 8, 32]\n"
    )
    result = runner.invoke(
        app,
        [
            "search",
            str(config),
            *("--trials", "5", "--seed", "1", "--no-deterministic", "--experiment", "cli", "--tracking-uri", uri),
        ],
        env={"COLUMNS": "80"},  # a narrow terminal's setting, with stdout not a terminal: a pipe, a CI log
    )
    assert result.exit_code == 0, result.output
    return uri, root, result.output


def _front_rows_are_whole(output: str, rows: list[dict], *, full_ids: bool) -> None:
    """Every front row is one line of the output holding its trial, run id, accuracy and size, none of them cut."""
    for row in rows:
        run_id = row["run_id"] if full_ids else row["run_id"][:8]
        line = next(line for line in output.splitlines() if f"trial-{row['trial']:04d}" in line and run_id in line)
        assert f"{row['accuracy']:.4f}" in line, line
        assert f"{row['deploy_bytes'] / 1024:.1f} KiB" in line and f"{row['size_bytes'] / 1024:.1f} KiB" in line, line


def _args(uri: str, *extra: str) -> list[str]:
    return [*extra, "--experiment", "cli", "--tracking-uri", uri]


def test_search_prints_progress_front_and_where_to_browse(searched):
    uri, _, output = searched
    assert output.count("] trial-") == 5  # one progress line per trial
    # each with where the search stands: done/total, failed, elapsed, ETA, front size, hypervolume
    assert re.search(
        r"\[5/5\] trial-\d{4} .* \| \d+ failed, \d+:\d\d elapsed, ETA 0:00, front \d+, HV 0\.\d{4}", output
    )
    for phase in ("loading task 'digits'", f"connecting to MLflow at {uri}", "starting Ray"):
        assert phase in output
    assert "Pareto front:" in output
    assert f"mlflow ui --backend-store-uri {uri}" in output
    parent = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("cli").experiment_id], "tags.`rayzor.role` = 'search'"
    )[0]
    assert parent.data.params["trials"] == "5"  # the flag beat the file's 3
    assert parent.data.params["deterministic"] == "False"  # and --no-deterministic the default
    assert json.loads(parent.data.params["space.bits"]) == [4, 8, 32]


def test_piped_front_table_keeps_every_number_whole(searched):
    uri, _, output = searched
    rows = json.loads(runner.invoke(app, _args(uri, "pareto", "--json")).stdout)
    _front_rows_are_whole(output, rows, full_ids=True)  # the search's own table, piped at COLUMNS=80
    piped = runner.invoke(app, _args(uri, "pareto"), env={"COLUMNS": "80"})
    assert piped.exit_code == 0, piped.output
    _front_rows_are_whole(piped.stdout, rows, full_ids=True)
    assert "…" not in piped.stdout  # off a terminal nothing is cut, the plan neither


def test_front_table_fits_an_80_column_terminal(searched, monkeypatch):
    from io import StringIO

    from rich.console import Console

    from rayzor.search import cli

    uri, _, _ = searched
    rows = json.loads(runner.invoke(app, _args(uri, "pareto", "--json")).stdout)
    screen = StringIO()
    monkeypatch.setattr(cli, "console", Console(file=screen, force_terminal=True, width=80, color_system=None))
    result = runner.invoke(app, _args(uri, "pareto"))
    assert result.exit_code == 0, result.output
    text = screen.getvalue()
    table = [line for line in text.splitlines() if line.startswith(("trial", "trial-"))]
    assert len(table) == len(rows) + 1 and all(len(line) <= 80 for line in table), text
    _front_rows_are_whole(text, rows, full_ids=False)


def test_pareto_json_lists_front_with_every_metric(searched):
    uri, _, _ = searched
    result = runner.invoke(app, _args(uri, "pareto", "--json"))
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows
    for row in rows:
        assert {"run_id", "accuracy", "size_bytes", "compression_ratio", "latency_ms"} <= set(row)
    # Non-dominated among themselves: sorted by size, accuracy strictly rises.
    rows.sort(key=lambda r: r["size_bytes"])
    assert all(a["accuracy"] < b["accuracy"] for a, b in zip(rows, rows[1:]))


def _val_batch() -> torch.Tensor:
    return create_task("digits").data["val"].tensors[0][:64]


def test_export_onnx_matches_torch(searched, tmp_path):
    uri, _, _ = searched
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, _args(uri, "export", "--pick", "min:size_bytes", "--format", "onnx", "--out", str(out)))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # stdout is the JSON report alone: `> report.json` is JSON
    assert report["max_abs_diff"] <= 1e-4
    assert result.stderr.startswith("picked trial-") and report["run_id"] in result.stderr
    assert 0.0 < report["test_metrics"]["accuracy"] <= 1.0
    # Independent parity check against the trial's own packed artifact.
    packed = MlflowClient(uri).download_artifacts(report["run_id"], "packed/packed.safetensors", str(tmp_path))
    model, _ = load_packed(packed)
    x = _val_batch()
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    assert np.max(np.abs(got - want)) <= 1e-4


def test_export_onnx_int8_reports_its_score_and_latency(searched, tmp_path):
    uri, _, _ = searched
    out = tmp_path / "model8.onnx"
    result = runner.invoke(
        app, _args(uri, "export", "--pick", "max:accuracy", "--format", "onnx-int8", "--out", str(out))
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "onnx-int8" and out.stat().st_size == report["size_bytes"]
    assert abs(report["test_metrics"]["accuracy"] - report["val_metrics"]["accuracy"]) < 0.1
    assert report["latency"]["file_ms"] > 0 and report["latency"]["speedup"] > 0


def test_export_onnx_is_the_deploy_artifact_the_trial_measured(searched, tmp_path):
    uri, _, _ = searched
    rows = json.loads(runner.invoke(app, _args(uri, "pareto", "--json")).stdout)
    for row in rows:  # every front trial: the exported file is the logged deploy artifact, byte for byte
        out = tmp_path / f"{row['run_id']}.onnx"
        result = runner.invoke(app, _args(uri, "export", "--run", row["run_id"], "--format", "onnx", "--out", str(out)))
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert out.stat().st_size == row["deploy_bytes"] == report["sizes"]["deploy_bytes"]
        assert report["sizes"]["size_bytes"] == row["size_bytes"] and report["max_abs_diff"] <= 1e-4
        assert report["latency"]["trial_ms"] == row["latency_ms"]
        if out.stat().st_size >= report["sizes"]["fp32_onnx_bytes"]:
            assert "not smaller than the fp32 ONNX model" in report["warnings"][0]


def test_export_onnx_fp32_keeps_plain_ops(searched, tmp_path):
    import onnx

    uri, _, _ = searched
    out = tmp_path / "fp32.onnx"
    result = runner.invoke(
        app, _args(uri, "export", "--pick", "min:size_bytes", "--format", "onnx-fp32", "--out", str(out))
    )
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert not ops & {"MatMulNBits", "DequantizeLinear", "GatherBlockQuantized"}
    assert out.stat().st_size == json.loads(result.stdout)["sizes"]["fp32_onnx_bytes"]


def test_export_register_round_trips_through_the_model_registry(searched, tmp_path, monkeypatch):
    import mlflow

    uri, _, _ = searched
    out = tmp_path / "registered.onnx"
    result = runner.invoke(
        app,
        _args(
            uri, "export", "--pick", "max:accuracy", "--format", "onnx", "--out", str(out), "--register", "digits-cnn"
        ),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    version = report["registered"]["version"]
    client = MlflowClient(uri)
    tags = client.get_model_version("digits-cnn", version).tags
    assert tags["rayzor.run_id"] == report["run_id"] and tags["rayzor.search_id"]
    assert float(tags["rayzor.metric.deploy_bytes"]) == out.stat().st_size
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what a user's serving process sets
    loaded = mlflow.pyfunc.load_model(f"models:/digits-cnn/{version}")
    x = _val_batch()
    got = loaded.predict(x.numpy())
    got = next(iter(got.values())) if isinstance(got, dict) else np.asarray(got)
    want = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_export_by_run_id_needs_no_experiment(searched, tmp_path):
    """Run ids are global: `--run` finds a trial of experiment 'cli' with --experiment left at its default."""
    uri, _, _ = searched
    run_id = json.loads(runner.invoke(app, _args(uri, "pareto", "--json")).stdout)[0]["run_id"]
    out = tmp_path / "m.safetensors"
    result = runner.invoke(
        app, ["export", "--run", run_id, "--format", "packed", "--out", str(out), "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_id"] == run_id and out.is_file()
    assert MlflowClient(uri).get_experiment_by_name("rayzor") is None  # nothing created on the way


def test_export_packed_by_run_id_reloads_identically(searched, tmp_path):
    uri, _, _ = searched
    rows = json.loads(runner.invoke(app, _args(uri, "pareto", "--json")).stdout)
    run_id = max(rows, key=lambda r: r["accuracy"])["run_id"]
    out = tmp_path / "model.safetensors"
    result = runner.invoke(app, _args(uri, "export", "--run", run_id, "--format", "packed", "--out", str(out)))
    assert result.exit_code == 0, result.output
    original = MlflowClient(uri).download_artifacts(run_id, "packed/packed.safetensors", str(tmp_path))
    a, _ = load_packed(out)
    b, _ = load_packed(original)
    x = _val_batch()
    with torch.inference_mode():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert out.read_bytes() == open(original, "rb").read()


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if a command gets as far as starting Ray."""

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started despite bad input")

    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # even inside the session's Ray
    monkeypatch.setattr(ray, "init", refuse)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("trials: 2\nbogus_key: 1\n", ("bogus_key", "known keys")),
        ("space:\n  sparsity: [0.0, 0.99]\n", ("space.sparsity", "0.99", "0.95")),
        ("space:\n  bits: [1, 8]\n", ("space.bits", "[1, 8]", "2..16 and 32")),
        ("sampler: annealing\n", ("sampler", "'annealing'", "'tpe'")),
        ("trials: 0\n", ("trials", "0", "greater than or equal to 1")),
        ("objectives: [cosine, size_bytes]\n", ("objectives", "'cosine'", "'accuracy'")),
        # what the deployment target cannot execute, or does not measure
        ("space:\n  bits: [3, 8]\n", ("space.bits", "[3, 8]", "2, 4, 8 and 32 under target onnxruntime")),
        ("space:\n  methods: [kmeans_quantization]\n", ("space.methods", "kmeans", "target onnxruntime")),
        ("space:\n  act_bits: [8]\n", ("space.act_bits", "[8]", "target onnxruntime")),
        ("space:\n  group_size: []\n", ("space.group_size", "[]", "MatMulNBits is block-wise")),
        ("space:\n  group_size: [48]\n", ("space.group_size", "[48]", "16, 32, 64, 128, 256")),
        ("target: tflite\n", ("target", "'tflite'", "'onnxruntime'")),
        ("target: packed\nobjectives: [accuracy, deploy_bytes]\n", ("objectives", "deploy_bytes", "target packed")),
    ],
)
def test_bad_config_file_fails_before_ray(no_ray, tmp_path, tracking_uri, yaml_text, needles):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    result = runner.invoke(app, ["search", str(config), "--tracking-uri", tracking_uri])
    _one_line_error(result, *needles)


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--sampler", "foo"], ("sampler", "'foo'", "'nsga2'")),
        (["--trials", "0"], ("trials", "got 0")),
        (["--concurrency", "0"], ("concurrency", "got 0")),
    ],
)
def test_bad_flag_fails_before_ray(no_ray, tracking_uri, flags, needles):
    _one_line_error(runner.invoke(app, ["search", *flags, "--tracking-uri", tracking_uri]), *needles)


def test_unreachable_tracking_uri_fails_before_ray(no_ray):
    uri = f"http://127.0.0.1:{_closed_port()}"
    _one_line_error(runner.invoke(app, ["search", "--tracking-uri", uri]), "tracking_uri", uri)


def test_export_out_in_a_missing_folder_is_refused_before_anything(searched, tmp_path):
    uri, _, _ = searched
    out = tmp_path / "no-such-folder" / "m.onnx"
    result = runner.invoke(app, _args(uri, "export", "--pick", "max:accuracy", "--format", "onnx", "--out", str(out)))
    _one_line_error(result, "--out", "no-such-folder", "existing folder")
    assert not out.parent.exists()


def test_unknown_run_id(searched, tmp_path):
    uri, _, _ = searched
    result = runner.invoke(
        app, _args(uri, "export", "--run", "0123456789abcdef", "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    )
    _one_line_error(result, "--run", "0123456789abcdef", "rayzor pareto")
    assert not (tmp_path / "m.onnx").exists()


def test_pick_matching_nothing_says_the_fronts_range(searched, tmp_path):
    uri, _, _ = searched
    result = runner.invoke(
        app, _args(uri, "export", "--pick", "accuracy>=1.5", "--format", "packed", "--out", str(tmp_path / "m"))
    )
    _one_line_error(result, "accuracy>=1.5", "accuracy ranges")


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--pick", "speed>=1"], ("--pick", "speed", "accuracy")),
        (["--pick", "min:size_bytes,max:accuracy"], ("--pick",)),
        (["--format", "tflite", "--run", "x"], ("--format", "'tflite'", "'onnx'")),
        (["--run", "x", "--pick", "min:size_bytes"], ("--run/--pick", "exactly one")),
        (["--format", "packed", "--run", "x", "--register", "m"], ("--register", "'m'", "ONNX format")),
        (["--format", "onnx", "--run", "x", "--register", " "], ("--register", "registered-model name")),
    ],
)
def test_bad_export_arguments(searched, tmp_path, flags, needles):
    uri, _, _ = searched
    args = ["export", *flags, "--out", str(tmp_path / "m")]
    if "--format" not in flags:
        args += ["--format", "packed"]
    _one_line_error(runner.invoke(app, _args(uri, *args)), *needles)


def test_pareto_of_missing_store(tracking_uri):
    result = runner.invoke(app, ["pareto", "--tracking-uri", tracking_uri])
    _one_line_error(result, "tracking_uri", tracking_uri, "rayzor search")


def test_pareto_of_unknown_experiment(searched):
    uri, _, _ = searched
    result = runner.invoke(app, ["pareto", "--experiment", "nope", "--tracking-uri", uri])
    _one_line_error(result, "--experiment", "'nope'", "'cli'")


def test_unreachable_dashboard_names_the_flag(tmp_path):
    config = tmp_path / "nojob.yaml"
    config.write_text("trials: 1\n")
    result = runner.invoke(app, ["submit", str(config), "--address", f"http://127.0.0.1:{_closed_port()}"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --address: got 'http://127.0.0.1:")


def test_resume_without_an_experiment_names_the_flag(tmp_path):
    result = runner.invoke(app, ["search", "--resume", str(tmp_path / "nothing-here")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: --resume: got '{tmp_path / 'nothing-here'}'; valid: ")


def _search_at(address: str, uri: str, monkeypatch, env: bool):
    """``rayzor search`` given ``address`` by RAY_ADDRESS (``env``) or ``--address``; the result and that source."""
    args = ["search", "--tracking-uri", uri]
    if env:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        args += ["--address", address]
    return runner.invoke(app, args), "RAY_ADDRESS" if env else "--address"


@pytest.mark.parametrize("env", [False, True])
def test_unreachable_address_names_its_source(tmp_path, monkeypatch, env):
    address = f"127.0.0.1:{_closed_port()}"
    result, flag = _search_at(address, f"sqlite:///{tmp_path / 'm.db'}", monkeypatch, env)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {flag}: got '{address}'; valid: HOST:PORT of a running Ray head")
    assert "connect to 127.0.0.1" in result.stderr


@pytest.mark.parametrize("env", [False, True])
def test_ray_client_address_is_refused_for_a_search(tmp_path, monkeypatch, env):
    # Under ray:// Tune runs its loop in an actor on the cluster, where the search's MLflow writer is not:
    # the search failed after its set-up (KeyError in rayzor's callback), so it is refused before any.
    address = f"ray://127.0.0.1:{_closed_port()}"
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result, flag = _search_at(address, uri, monkeypatch, env)
    assert result.exit_code == 2
    _refused_before_anything(result, uri, f"{flag}: got '{address}'", "HOST:PORT of the head's GCS", "rayzor submit")
    assert "connect to" not in result.stderr  # refused for what it is, not probed


# -- refused before anything: no tracking store, no experiment, no Ray ---------------------


def _refused_before_anything(result, tracking_uri: str, *needles: str) -> None:
    """One error line, and no tracking store was created (so no experiment either)."""
    _one_line_error(result, *needles)
    assert not os.path.exists(tracking_uri.removeprefix("sqlite:///")), "a tracking store was created"


@pytest.mark.parametrize(
    ("yaml_text", "needles"),
    [
        ("task: nope\n", ("task", "'nope'", "registered name")),
        ("task: no_such_module_x:make\n", ("task", "cannot import", "no_such_module_x")),
        ("task: tests.search.bad_tasks:missing\n", ("task", "no attribute 'missing'")),
        ("task: tests.search.bad_tasks:not_a_task\n", ("task", "returned dict", "rayzor.tasks.Task")),
        ("task: tests.search.bad_tasks:raises\n", ("task", "failed", "the data folder is missing")),
        ("task_options: {bogus: 1}\n", ("task_options", "bogus", "keyword arguments")),
        ("task: tests.search.bad_tasks:no_compressible_layers\n", ("layers", "Conv/Linear")),
        ("space:\n  groups:\n    - {name: g, match: ['nomatch*']}\n", ("space.groups[g].match", "nomatch*", "conv1")),
        (
            "space:\n  groups:\n    - {name: a, match: ['conv*']}\n    - {name: b, match: [conv1]}\n",
            ("space.groups[b].match", "already in group 'a'"),
        ),
        (
            "space:\n  groups:\n    - {name: conv1, match: ['conv*']}\n",
            ("space.groups[conv1].name", "not a layer name"),
        ),
        ("space:\n  rank_ratio: [0.1, 0.5]\n", ("space.rank_ratio", "factorize")),
        ("", ("CONFIG", "the file is empty")),
        ("# only a comment\n", ("CONFIG", "the file is empty")),
        ("trials: 3\n  bad: [\n", ("CONFIG", "valid YAML", "line 2, column 6")),
    ],
)
def test_bad_task_space_or_file_writes_nothing(no_ray, tmp_path, tracking_uri, yaml_text, needles):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    storage = tmp_path / "results"
    result = runner.invoke(app, ["search", str(config), "--tracking-uri", tracking_uri, "--storage-path", str(storage)])
    _refused_before_anything(result, tracking_uri, *needles)
    assert not storage.exists()


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("flags", "needles"),
    [
        (["--concurrency", str(_cpus() + 1)], ("concurrency", f"at most {_cpus()} on this machine")),
        (["--storage-path", "FILE"], ("storage_path", "is a file")),
        (["--storage-path", "FILE/under"], ("storage_path", "is a file")),
    ],
)
def test_what_this_machine_cannot_provide_is_refused_up_front(no_ray, tmp_path, tracking_uri, flags, needles):
    (tmp_path / "file").write_text("not a folder")
    flags = [f.replace("FILE", str(tmp_path / "file")) for f in flags]
    result = runner.invoke(app, ["search", *flags, "--tracking-uri", tracking_uri])
    _refused_before_anything(result, tracking_uri, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpus_per_trial_without_a_gpu_is_refused_up_front(no_ray, tracking_uri):
    result = runner.invoke(app, ["search", "--gpus-per-trial", "1", "--tracking-uri", tracking_uri])
    _refused_before_anything(result, tracking_uri, "gpus_per_trial", "1.0", "no GPU found")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["search", "--trials", "abc"], ("--trials: got 'abc'", "integer")),
        (["search", "--trials=abc"], ("--trials: got 'abc'", "integer")),
        (["search", "--trails", "3"], ("option: got '--trails'", "did you mean --trials?")),
        (["serch"], ("command: got 'serch'", "search, pareto, export")),
        (["export", "--format", "onnx"], ("--out", "required")),
    ],
)
def test_usage_errors_are_one_line_too(no_ray, tracking_uri, args, needles):
    result = runner.invoke(app, [*args, "--tracking-uri", tracking_uri] if args[0] == "search" else args)
    _refused_before_anything(result, tracking_uri, *needles)
    assert "Usage:" not in result.output and "╭" not in result.output  # not the usage box


def test_export_out_naming_a_folder_is_refused_before_anything(tmp_path, tracking_uri):
    result = runner.invoke(
        app, ["export", "--run", "x", "--format", "onnx", "--out", str(tmp_path), "--tracking-uri", tracking_uri]
    )
    _refused_before_anything(result, tracking_uri, "--out", str(tmp_path), "existing folder")


def test_export_unknown_run_id_blames_run_not_experiment(tmp_path, tracking_uri):
    MlflowClient(tracking_uri).search_experiments()  # a store that exists, without this run or a 'rayzor' experiment
    result = runner.invoke(
        app,
        [
            "export",
            "--run",
            "0123456789abcdef",
            "--format",
            "packed",
            "--out",
            str(tmp_path / "m"),
            "--tracking-uri",
            tracking_uri,
        ],
    )
    _one_line_error(result, "--run: got '0123456789abcdef'", "rayzor pareto")
    assert MlflowClient(tracking_uri).get_experiment_by_name("rayzor") is None
    assert not (tmp_path / "m").exists()


# -- help, version, start-up ------------------------------------------------------------------


def test_help_shows_every_search_default():
    from rayzor.search import SearchConfig

    result = runner.invoke(app, ["search", "-h"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ --")}
    defaults = SearchConfig.model_fields
    assert f"[default: ({defaults['trials'].default})]" in lines["--trials"]  # 64, once swallowed as markup
    assert f"[default: ({defaults['sampler'].default})]" in lines["--sampler"]
    assert f"[default: ({defaults['seed'].default})]" in lines["--seed"]
    assert f"[default: ({defaults['experiment'].default})]" in lines["--experiment"]
    assert all("[default:" in line for flag, line in lines.items() if flag not in ("--verbose", "--help"))


def test_version_and_short_help():
    from rayzor import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"rayzor {__version__}"
    short = runner.invoke(app, ["export", "-h"])
    assert short.exit_code == 0 and "--format" in short.output


def test_help_imports_neither_torch_ray_nor_mlflow():
    code = (
        "import sys\nfrom rayzor.search.cli import main\nsys.argv = ['rayzor', 'search', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'ray', 'mlflow', 'optuna') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "LOADED []" in out.stdout, out.stdout[-500:]


@pytest.mark.parametrize(("args", "code"), [(["--version"], 0), (["search", "--trials", "abc"], 2)])
def test_the_cli_exits_without_collecting_what_it_leaves_behind(args, code):
    """Interpreter shutdown's last collection walked every object torch, Ray and MLflow left:
    2.1-2.7 s after a search's summary (BENCHMARKS.md, cli_exit). The console script freezes
    the collector on its way out, whichever way the command ended; atexit handlers still run."""
    probe = (
        "import atexit, gc, sys; atexit.register(lambda: print('frozen at exit:', gc.get_freeze_count() > 0)); "
        "from rayzor.search.cli import main; sys.argv[0] = 'rayzor'; main()"
    )
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
    assert out.returncode == code
    assert "frozen at exit: True" in out.stdout
