"""Early stopping: ASHA inside size buckets stops trials, and the front survives."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from rayzor.errors import ConfigError
from rayzor.search import STOPPED, SearchConfig, SizeBucketASHA, run_search, size_bucket, trial_runs, validate_config


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def _result(value: float, it: int, bucket: int | None) -> dict:
    result = {"accuracy": value, "training_iteration": it}
    if bucket is not None:
        result["size_bucket"] = bucket
    return result


def test_size_bucket_is_octaves_of_compression_ratio():
    assert size_bucket(1000, 1000, 0.5) == 0
    assert size_bucket(250, 1000, 0.5) == 4  # 4x = 2 octaves = 4 half-octaves
    assert size_bucket(250, 1000, 1.0) == 2
    assert size_bucket(1500, 1000, 1.0) == -1


def test_trials_compete_only_inside_their_bucket():
    sched = SizeBucketASHA("accuracy", "max", max_t=4, grace_period=1, reduction_factor=2)
    good, bad, small = _Trial("good"), _Trial("bad"), _Trial("small")
    assert sched.on_trial_result(None, good, _result(0.95, 1, 0)) == "CONTINUE"
    # Same bucket and far worse: ASHA stops it at the first rung.
    assert sched.on_trial_result(None, bad, _result(0.50, 1, 0)) == "STOP"
    # As bad, but in another (smaller) bucket: it only meets trials of its size.
    assert sched.on_trial_result(None, small, _result(0.50, 1, 5)) == "CONTINUE"
    assert sched.num_stopped == 1
    # Results without a bucket (e.g. before the first report) never stop a trial.
    assert sched.on_trial_result(None, _Trial("x"), _result(0.1, 1, None)) == "CONTINUE"


def test_partial_front_is_protected():
    def result(value, size):
        return {"accuracy": value, "size_bytes": size, "training_iteration": 1, "size_bucket": 0}

    for protect, expected in ((True, "CONTINUE"), (False, "STOP")):
        sched = SizeBucketASHA("accuracy", "max", max_t=4, grace_period=1, reduction_factor=2, protect_front=protect)
        assert sched.on_trial_result(None, _Trial("big"), result(0.95, 1000)) == "CONTINUE"
        # Worse, but smaller than anything seen at this epoch: on the partial front.
        assert sched.on_trial_result(None, _Trial("small"), result(0.50, 500)) == expected
        # Worse and bigger than "big": dominated, so ASHA's verdict stands.
        assert sched.on_trial_result(None, _Trial("bad"), result(0.50, 2000)) == "STOP"
        assert sched.num_stopped == (1 if protect else 2)


def test_asha_needs_enough_finetune_epochs():
    with pytest.raises(ConfigError, match=r"finetune_epochs: got 1; valid: an integer >= 2 with scheduler: asha"):
        validate_config({"scheduler": "asha", "finetune_epochs": 1})
    with pytest.raises(ConfigError, match=r"asha.reduction_factor: got 1"):
        validate_config({"scheduler": "asha", "finetune_epochs": 3, "asha": {"reduction_factor": 1}})
    with pytest.raises(ConfigError, match=r"asha.eta: got 2; valid: known keys grace_period, reduction_factor"):
        validate_config({"scheduler": "asha", "finetune_epochs": 3, "asha": {"eta": 2}})


@pytest.fixture(scope="module")
def asha_search(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("asha")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = SearchConfig(
        trials=8,
        concurrency=1,
        sampler="random",
        seed=3,
        experiment="asha",
        tracking_uri=uri,
        storage_path=str(root / "ray"),
        finetune_epochs=3,
        warm_start="none",
        scheduler="asha",
        # One wide bucket, so that 8 trials are enough to meet each other at the rungs.
        asha={"grace_period": 1, "reduction_factor": 2, "bucket_width": 64},
        target="packed",
        space={"sparsity": [0.0, 0.95], "bits": [2, 3, 4, 8]},
    )
    lines: list[str] = []
    return run_search(config, progress=lines.append), MlflowClient(uri), lines


def test_asha_stops_trials_and_the_front_remains(asha_search):
    result, client, lines = asha_search
    stopped = [r for r in result.trials if r.status == STOPPED]
    finished = [r for r in result.trials if r.status == "FINISHED"]
    assert stopped and finished and len(stopped) + len(finished) == 8
    assert result.pareto and {r.run_id for r in result.pareto} <= {r.run_id for r in finished}
    assert sum("stopped early" in line for line in lines) == len(stopped)
    runs = {r.info.run_id: r for r in trial_runs(client, result.experiment_id, result.parent_run_id)}
    for record in stopped:
        run = runs[record.run_id]
        assert run.info.status == "KILLED"
        assert run.data.tags["rayzor.early_stopped"].startswith("after epoch ")
        assert run.data.tags["rayzor.pareto"] == "false"
        assert "accuracy" in run.data.metrics and "size_bytes" in run.data.metrics
        assert not client.list_artifacts(record.run_id, "packed")  # no artifact for a stopped trial
    for record in finished:
        assert client.list_artifacts(record.run_id, "packed")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.metrics["trials_stopped_early"] == len(stopped)
