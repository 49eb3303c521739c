"""Same seed, same search: two runs at concurrency 2 log the same trials, param for param, metric for metric."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rayzor.search import SearchConfig, run_search

#: Measured on the machine, not computed from the plan: never reproducible.
TIMING = ("latency_ms", "trial_seconds", "params_wait_seconds")


@pytest.mark.slow
def test_same_seed_same_trials_at_concurrency_2(ray_session, tmp_path):
    runs, packed = [], []
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    for i in range(2):
        config = SearchConfig(
            # trials end in a random order (the evaluation sleeps a random time), as on a busy machine,
            # and the first trial to score in a worker takes 5 s more: newer ones overtake it
            task="tests.search.jittery_task:make_slow_once_task",
            trials=10,
            warm_start="none",  # more trials the sampler picks
            concurrency=2,
            seed=7,
            experiment="test-reproducible",
            tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            storage_path=str(tmp_path / "ray"),
            name=f"repro-{i}",
            finetune_epochs=1,  # the fine-tune is seeded too
            target="packed",
        )
        result = run_search(config, progress=lambda line: None)
        # A newer trial's params waited for the slow first one: the trial started, then waited on its worker.
        assert any(r.metrics.get("params_wait_seconds", 0) > 0 for r in result.trials)
        assert all(r.params for r in result.trials)  # a deferred trial's params are logged as it ran them
        runs.append(
            [
                (r.number, r.status, r.params, {k: v for k, v in r.metrics.items() if k not in TIMING})
                for r in result.trials
            ]
        )
        artifacts = [Path(client.get_run(r.run_id).info.artifact_uri.removeprefix("file://")) for r in result.trials]
        packed.append(
            [hashlib.sha256((a / "packed" / "packed.safetensors").read_bytes()).hexdigest() for a in artifacts]
        )
    assert len(runs[0]) == 10
    assert runs[0] == runs[1]
    assert packed[0] == packed[1]  # the same packed files, byte for byte
