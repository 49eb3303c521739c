"""A joint search over student architectures and their compression, distilled from the teacher."""

from __future__ import annotations

import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from rayzor.compression import StageCNN, load_packed
from rayzor.errors import ConfigError
from rayzor.search import SearchConfig, run_search, trial_runs, validate_config


@pytest.fixture(scope="module")
def student_search(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = SearchConfig(
        trials=6,
        concurrency=2,
        sampler="random",
        seed=1,
        experiment="students",
        tracking_uri=uri,
        storage_path=str(root / "ray"),
        finetune_epochs=1,
        warm_start="none",
        target="packed",  # the sampled stream these assertions were measured on
        students={"families": ["cnn"], "distill_epochs": 3},
        recovery={"distill_alpha": 0.5},
    )
    return run_search(config, progress=lambda line: None), MlflowClient(uri)


def test_students_are_sampled_distilled_compressed_and_packed(student_search, digits, tmp_path):
    result, client = student_search
    runs = trial_runs(client, result.experiment_id, result.parent_run_id)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    models = {r.data.tags["rayzor.model"] for r in runs}
    assert models == {"teacher", "cnn"}, models  # seed 1 draws both
    for run in runs:
        params = run.data.params
        path = client.download_artifacts(run.info.run_id, "packed/packed.safetensors", str(tmp_path / run.info.run_id))
        assert os.path.getsize(path) == run.data.metrics["size_bytes"]
        model, info = load_packed(path)
        # the packed file rebuilds the model the trial scored: same validation accuracy
        x, y = digits.data["val"].tensors
        with torch.inference_mode():
            accuracy = (model(x).argmax(1) == y).float().mean().item()
        assert accuracy == pytest.approx(run.data.metrics["accuracy"], abs=1e-6)
        if run.data.tags["rayzor.model"] == "cnn":
            assert isinstance(model, StageCNN)
            assert any(k.startswith("student.width_mult.") for k in params)
            assert any(k.startswith("cnn:") and k.endswith(".sparsity") for k in params)
            # a distilled student is a working classifier, far above chance (0.1)
            assert run.data.metrics["accuracy"] > 0.5
        else:
            assert "conv2.sparsity" in params
    assert result.pareto


def test_unknown_student_family_fails_before_ray(tmp_path):
    config = validate_config({"students": {"families": ["resnet"]}, "tracking_uri": f"sqlite:///{tmp_path}/m.db"})
    with pytest.raises(ConfigError, match=r"students.families\[0\]: got 'resnet'; valid: .*cnn"):
        run_search(config)  # refused while preparing, before Ray starts


def test_student_settings_without_a_family_are_refused():
    with pytest.raises(
        ConfigError,
        match=r"students.families: got \[\]; valid: at least one student family .* "
        r"when students.distill_epochs is set",
    ):
        validate_config({"students": {"distill_epochs": 5}})
