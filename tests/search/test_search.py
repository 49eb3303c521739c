"""A real search on Ray: every trial in MLflow, correct Pareto tags, failures kept."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rayzor.compression import load_packed
from rayzor.search import SearchConfig, pareto_mask, run_search, trial_runs, warm_start_points
from rayzor.tasks import create_task


@pytest.fixture(scope="module")
def finished(ray_session, tmp_path_factory):
    """One search of 6 trials where the user task fails on some plans."""
    root = tmp_path_factory.mktemp("search")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = SearchConfig(
        task="tests.search.failing_task:make_task",
        trials=6,
        concurrency=2,
        sampler="random",
        seed=0,
        experiment="test-search",
        tracking_uri=uri,
        storage_path=str(root / "ray"),
        finetune_epochs=0,
        target="packed",  # every bit-width; size_bytes, the packed file, is the front's size
        entropy="lzma",  # size_bytes must include the entropy stage
        warm_start="none",  # uniform warm-start plans never trip the failing task
        space={"default_exclusions": False},  # the failing task trips on conv1, the first layer
    )
    lines: list[str] = []
    SNAPSHOTS.clear()
    TELL_ERRORS.clear()
    attempts = Path(os.environ["RAYZOR_TEST_ATTEMPTS"])  # named by ray_session, for its workers
    attempts.unlink(missing_ok=True)
    tune_optuna = logging.getLogger("ray.tune.search.optuna.optuna_search")
    handler = _Collect()
    tune_optuna.addHandler(handler)
    try:
        result = run_search(config, progress=lambda line: _snapshot(line, lines, MlflowClient(uri)))
    finally:
        tune_optuna.removeHandler(handler)
    ATTEMPTS[:] = attempts.read_text().splitlines() if attempts.exists() else []
    return result, MlflowClient(uri), lines, root


#: One line per call of the task's evaluate that raised, across the fixture's trial workers.
ATTEMPTS: list[str] = []

#: What Tune's OptunaSearch logged while the fixture's search ran: it logs (and swallows) a failed ``study.tell``.
TELL_ERRORS: list[str] = []


class _Collect(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        TELL_ERRORS.append(record.getMessage())


#: After each trial's progress line: every child run's status, objectives, Pareto tag and name, as MLflow held them.
SNAPSHOTS: list[list[tuple[str, float, float, str, str]]] = []


def _snapshot(line: str, lines: list[str], client: MlflowClient) -> None:
    lines.append(line)
    if not line.startswith("["):  # a set-up line, not a trial's
        return
    experiment = client.get_experiment_by_name("test-search")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`mlflow.parentRunId` != ''", order_by=["start_time ASC"]
    )
    SNAPSHOTS.append(
        [
            (
                r.info.status,
                r.data.metrics.get("accuracy", float("nan")),
                r.data.metrics.get("size_bytes", float("nan")),
                r.data.tags.get("rayzor.pareto", ""),
                r.info.run_name,
            )
            for r in runs
        ]
    )


def test_parent_run_has_config_and_finished(finished):
    result, client, _, _ = finished
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "6"
    assert parent.data.params["sampler"] == "random"
    assert json.loads(parent.data.params["space.bits"]) == [2, 3, 4, 5, 6, 8, 16, 32]
    artifacts = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"pareto.json", "pareto.csv", "pareto.png", "search_config.json", "space.json"} <= artifacts


def test_every_trial_is_a_nested_child_run(finished):
    result, client, lines, _ = finished
    children = trial_runs(client, result.experiment_id, result.parent_run_id)
    assert len(children) == 6
    statuses = {c.info.status for c in children}
    # The failing task raises on some plans: both outcomes must be recorded.
    assert statuses == {"FINISHED", "FAILED"}
    assert sum("FAILED" in line for line in lines) == sum(c.info.status == "FAILED" for c in children)
    for child in children:
        params = child.data.params
        for layer in ("conv1", "conv2", "fc1", "fc2"):
            assert 0.0 <= float(params[f"{layer}.sparsity"]) <= 0.95
            assert int(params[f"{layer}.bits"]) in (2, 3, 4, 5, 6, 8, 16, 32)
        if child.info.status == "FAILED":
            assert "conv1 too sparse" in child.data.tags["rayzor.error"]
            assert float(params["conv1.sparsity"]) > 0.7
        else:
            assert {"accuracy", "size_bytes", "compression_ratio", "latency_ms"} <= set(child.data.metrics)


def test_failed_trials_are_told_to_optuna_as_failed(finished):
    """Told as COMPLETE with NaN objectives, ``study.tell`` raised "The value nan is not acceptable" and
    Tune only logged it: the failed trial stayed RUNNING in the study, for the sampler and a resume."""
    result, _, _, _ = finished
    assert any(r.status == "FAILED" for r in result.trials)
    assert TELL_ERRORS == []


def test_a_raising_trial_is_attempted_once(finished, tmp_path):
    # max_failures (2, the default) retries a trial whose worker or node died, never one whose code raised
    result, client, _, _ = finished
    failed = [c for c in trial_runs(client, result.experiment_id, result.parent_run_id) if c.info.status == "FAILED"]
    assert failed
    assert len(ATTEMPTS) == len(failed)
    text = Path(client.download_artifacts(failed[0].info.run_id, "error.txt", str(tmp_path))).read_text()
    assert "Traceback" in text and "evaluate_or_fail" in text


def test_size_bytes_is_the_logged_file_and_it_rebuilds_the_model(finished, tmp_path):
    result, client, _, _ = finished
    task = create_task("digits")
    codecs = []
    for child in trial_runs(client, result.experiment_id, result.parent_run_id):
        if child.info.status != "FINISHED":
            continue
        path = client.download_artifacts(child.info.run_id, "packed/packed.safetensors", str(tmp_path))
        assert os.path.getsize(path) == child.data.metrics["size_bytes"]
        model, info = load_packed(path)
        codecs.append(info.entropy)
        assert info.plan.settings()["conv1"]["bits"] == int(child.data.params["conv1.bits"])
        assert task.score(model, "val")["accuracy"] == pytest.approx(child.data.metrics["accuracy"], abs=1e-9)
    assert "lzma" in codecs  # the search's entropy stage reached the packed files


def test_pareto_tags_follow_the_front_while_the_search_runs(finished):
    # The runs table's Pareto filter works mid-search: after each logged trial, exactly the front so far is tagged.
    assert len(SNAPSHOTS) == 6
    for logged, snapshot in enumerate(SNAPSHOTS, start=1):
        assert len(snapshot) == logged
        done = [row for row in snapshot if row[0] == "FINISHED"]
        mask = pareto_mask(np.array([row[1:3] for row in done]), ["maximize", "minimize"]) if done else []
        assert [row[3] for row in done] == ["true" if m else "false" for m in mask]
        assert all(row[3] == "false" for row in snapshot if row[0] != "FINISHED")
        assert all(("★" in row[4]) == (row[3] == "true") for row in snapshot)
    assert any(row[3] == "true" for row in SNAPSHOTS[-1])


def test_pareto_tags_match_the_front(finished):
    result, client, _, _ = finished
    done = [c for c in trial_runs(client, result.experiment_id, result.parent_run_id) if c.info.status == "FINISHED"]
    values = np.array([[c.data.metrics["accuracy"], c.data.metrics["size_bytes"]] for c in done])
    mask = pareto_mask(values, ["maximize", "minimize"])
    assert [c.data.tags["rayzor.pareto"] for c in done] == ["true" if m else "false" for m in mask]
    assert sorted(r.run_id for r in result.pareto) == sorted(c.info.run_id for c, m in zip(done, mask) if m)
    with open(client.download_artifacts(result.parent_run_id, "pareto.json")) as f:
        rows = json.load(f)
    assert sorted(row["run_id"] for row in rows) == sorted(r.run_id for r in result.pareto)


def test_hypervolume_is_logged_per_completed_trial(finished):
    result, client, _, _ = finished
    history = client.get_metric_history(result.parent_run_id, "hypervolume")
    n_done = sum(r.status == "FINISHED" for r in result.trials)
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, n_done + 1))
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert values == sorted(values)  # adding points never shrinks a dominated volume
    assert values[-1] == pytest.approx(result.hypervolume)
    assert 0.0 < result.hypervolume < 1.0


def test_pareto_runs_are_named_and_the_search_run_describes_the_front(finished):
    result, client, _, _ = finished
    children = trial_runs(client, result.experiment_id, result.parent_run_id)
    on_front = {r.run_id for r in result.pareto}
    for child in children:
        number = int(child.data.tags["rayzor.trial"])
        if child.info.run_id in on_front:
            m = child.data.metrics
            kib = m["size_bytes"] / 1024  # a packed-target search: its front is on size_bytes
            assert child.info.run_name == f"trial-{number:04d} ★ acc {m['accuracy']:.3f} · {kib:.1f} KiB"
        else:
            assert child.info.run_name == f"trial-{number:04d}"
    note = client.get_run(result.parent_run_id).data.tags["mlflow.note.content"]
    assert "tags.\"rayzor.pareto\" = 'true'" in note
    assert f"tags.\"mlflow.parentRunId\" = '{result.parent_run_id}'" in note
    for r in result.pareto:
        assert f"| [trial-{r.number:04d}](#/experiments/{result.experiment_id}/runs/{r.run_id}) |" in note
        assert f"rayzor export --run {r.run_id} --tracking-uri {result.tracking_uri} --format onnx" in note
    # the filter the note gives selects exactly the front
    pareto_filter = note.split("```\n", 2)[1].splitlines()[0]
    found = client.search_runs([result.experiment_id], filter_string=pareto_filter)
    assert sorted(r.info.run_id for r in found) == sorted(on_front)
    experiment_note = client.get_experiment(result.experiment_id).tags["mlflow.note.content"]
    assert "rayzor" in experiment_note and "tags.\"rayzor.pareto\" = 'true'" in experiment_note


def test_child_runs_last_as_long_as_their_trial(finished):
    result, client, _, _ = finished
    done = [c for c in trial_runs(client, result.experiment_id, result.parent_run_id) if c.info.status == "FINISHED"]
    assert done
    for child in done:
        seconds = (child.info.end_time - child.info.start_time) / 1000
        assert seconds == pytest.approx(child.data.metrics["trial_seconds"], rel=0.1)


def test_float_params_are_rounded_and_metrics_are_not(finished):
    result, client, _, _ = finished
    child = trial_runs(client, result.experiment_id, result.parent_run_id)[0]
    sparsity = child.data.params["conv1.sparsity"]
    assert sparsity == f"{float(sparsity):.4g}"  # 4 significant digits at most, not 16
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["baseline.accuracy"] == f"{result.baseline['accuracy']:.4g}"
    assert parent.data.metrics["hypervolume"] == result.hypervolume  # metrics keep full precision


def test_interactive_plot_is_logged_beside_the_png(finished, tmp_path):
    result, client, _, _ = finished
    with open(client.download_artifacts(result.parent_run_id, "pareto.html", str(tmp_path))) as f:
        page = f.read()
    for r in result.pareto:
        assert f"trial-{r.number:04d}  ★ Pareto-optimal" in page  # its hover text
        assert f"run {r.run_id}" in page


def test_uniform_warm_start_points(digits):
    from rayzor.compression import FinetuneConfig
    from rayzor.search import load_config
    from rayzor.spaces import CompressionSpace

    space = CompressionSpace.from_model(digits.model, bits=(4, 8, 32), sparsity=(0.1, 0.9), finetune=FinetuneConfig())
    points = warm_start_points(space, load_config(trials=10))
    assert [space.decode(p).settings()["fc1"] for p in points] == [
        {"sparsity": 0.1, "bits": 8},
        {"sparsity": 0.1, "bits": 4},
    ]  # highest first, no fp32, lowest sparsity
    for p in points:
        assert len({(s["sparsity"], s["bits"]) for s in space.decode(p).settings().values()}) == 1  # uniform
    assert len(warm_start_points(space, load_config(trials=2))) == 1  # at most half the budget
    assert warm_start_points(space, load_config(warm_start="none")) == []
