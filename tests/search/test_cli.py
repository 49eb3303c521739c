"""The rayzor CLI: search -> pareto --json -> export, and every bad input."""

from __future__ import annotations

import json
import socket

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
        app, ["search", str(config), "--trials", "5", "--seed", "1", "--experiment", "cli", "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    return uri, root, result.output


def _args(uri: str, *extra: str) -> list[str]:
    return [*extra, "--experiment", "cli", "--tracking-uri", uri]


def test_search_prints_progress_front_and_where_to_browse(searched):
    uri, _, output = searched
    assert output.count("] trial-") == 5  # one progress line per trial
    assert "Pareto front:" in output
    assert f"mlflow ui --backend-store-uri {uri}" in output
    parent = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("cli").experiment_id], "tags.`rayzor.role` = 'search'"
    )[0]
    assert parent.data.params["trials"] == "5"  # the flag beat the file's 3
    assert json.loads(parent.data.params["space.bits"]) == [4, 8, 32]


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
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["max_abs_diff"] <= 1e-4
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
    report = json.loads(result.stdout[result.stdout.index("{") :])
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
        report = json.loads(result.stdout[result.stdout.index("{") :])
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
    assert out.stat().st_size == json.loads(result.stdout[result.stdout.index("{") :])["sizes"]["fp32_onnx_bytes"]


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
    report = json.loads(result.stdout[result.stdout.index("{") :])
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


@pytest.mark.parametrize("env", [False, True])
def test_unreachable_address_names_its_source(tmp_path, monkeypatch, env):
    address = f"127.0.0.1:{_closed_port()}"
    args = ["search", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    if env:
        monkeypatch.setenv("RAY_ADDRESS", address)
    else:
        args += ["--address", address]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    flag = "RAY_ADDRESS" if env else "--address"
    assert result.stderr.startswith(f"error: {flag}: got '{address}'; valid: HOST:PORT of a running Ray head")
    assert "connect to 127.0.0.1" in result.stderr
