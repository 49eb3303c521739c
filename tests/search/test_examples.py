"""The Hugging Face example as a user task, and a short CLI search on it with ``warm_start: sensitivity``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn
from typer.testing import CliRunner

from rayzor.compression import load_packed
from rayzor.search import RESUME_FILE, trial_runs
from rayzor.search.cli import app
from rayzor.tasks import Task, create_task

pytest.importorskip("transformers")

HF_YAML = Path(__file__).resolve().parents[2] / "examples" / "hf_text_classifier.yaml"
HF_TASK = "examples.hf_text_classifier:make_task"


@pytest.fixture(scope="module")
def hf_task() -> Task:
    return create_task(HF_TASK)


def test_hf_example_is_a_trained_user_task(hf_task):
    assert hf_task.name == "hf_text" and hf_task.arch["factory"] == "examples.hf_text_classifier:build_model"
    # 4 balanced-ish classes (chance 0.25, majority class about 0.35): clearly learnt
    assert hf_task.baseline["val"]["accuracy"] > 0.6 and hf_task.baseline["test"]["accuracy"] > 0.6
    kinds = {type(m) for m in hf_task.model.modules()}
    assert {nn.Linear, nn.Embedding} <= kinds
    logits = hf_task.model(hf_task.example_input)  # the ModelOutput is unwrapped: logits for the loss and evaluate
    assert isinstance(logits, torch.Tensor) and logits.shape == (1, 4)
    # the arch factory rebuilds the same architecture (what a packed file loads into)
    from rayzor.tasks import resolve_callable

    rebuilt = resolve_callable(hf_task.arch["factory"])(**hf_task.arch["kwargs"])
    assert rebuilt.state_dict().keys() == hf_task.model.state_dict().keys()
    # cached: a second call loads the same weights instead of training again
    again = create_task(HF_TASK)
    torch.testing.assert_close(again.model.state_dict(), hf_task.model.state_dict())


@pytest.fixture(scope="module")
def searched(ray_session, hf_task, tmp_path_factory):
    """The example config, cut to 3 trials, one at a time, no fine-tune."""
    root = tmp_path_factory.mktemp("hf")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = yaml.safe_load(HF_YAML.read_text())
    config.update(
        trials=3,
        concurrency=1,
        finetune_epochs=0,
        storage_path=str(root / "ray"),
        name="hf",
        experiment="hf",
        tracking_uri=uri,
    )
    path = root / "hf.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["search", str(path)])
    assert result.exit_code == 0, result.output
    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("hf").experiment_id], filter_string="tags.`rayzor.role` = 'search'"
    )[0]
    return client, parent, root, result.output


def test_search_logs_the_sensitivity_phase_in_its_parent_run(searched, tmp_path):
    client, parent, _, output = searched
    assert parent.info.status == "FINISHED"
    assert "sensitivity: " in output and " probes of 4 units on Ray" in output
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sensitivity")}
    assert artifacts == {
        "sensitivity/sensitivity.json",
        "sensitivity/sensitivity.csv",
        "sensitivity/heatmap.png",
        "sensitivity/warm_start.json",
    }
    with open(client.download_artifacts(parent.info.run_id, "sensitivity/sensitivity.json", str(tmp_path))) as f:
        table = json.load(f)
    units = {row[table["columns"].index("unit")] for row in table["data"]}
    assert units == {"embeddings", "attention", "ffn", "head"}  # the example's tied groups
    assert "sensitivity_seconds" in parent.data.metrics


def test_warm_start_trials_are_enqueued_first_and_tagged(searched, tmp_path):
    client, parent, root, _ = searched
    with open(client.download_artifacts(parent.info.run_id, "sensitivity/warm_start.json", str(tmp_path))) as f:
        points = json.load(f)
    children = trial_runs(client, parent.info.experiment_id, parent.info.run_id)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    tagged = sorted((int(c.data.tags["rayzor.trial"]), c) for c in children if "rayzor.warm_start" in c.data.tags)
    enqueued = points[: max(1, 3 // 2)]  # at most half the budget
    assert [n for n, _ in tagged] == list(range(1, len(enqueued) + 1))
    for (_, child), point in zip(tagged, enqueued):
        assert child.data.tags["rayzor.warm_start"] == "sensitivity"
        assert {k: json.loads(v) for k, v in child.data.params.items()} == point
        # the trial compressed exactly that plan
        path = client.download_artifacts(child.info.run_id, "packed/packed.safetensors", str(tmp_path))
        settings = load_packed(path)[1].plan.settings()
        assert settings["hf.bert.encoder.layer.1.attention.self.key"]["bits"] == point["attention.bits"]
    # a resumed search tags them the same way: the points are in its state file
    state = json.loads((root / "ray" / "hf" / RESUME_FILE).read_text())
    assert state["warm_start_points"] == points
