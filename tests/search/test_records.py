"""The incremental front of a running search, and the front `pareto`/`export` read back from MLflow."""

from __future__ import annotations

import math
import random

import pytest
from mlflow.tracking import MlflowClient

from rayzor.search import Front, TrialRecord, load_search, pareto_mask, search_hypervolume

OBJECTIVES = ("accuracy", "size_bytes", "latency_ms")
BASELINE = {"accuracy": 0.9, "size_bytes": 1000.0, "latency_ms": 1.0}


def _record(i: int, rng: random.Random, status: str = "FINISHED") -> TrialRecord:
    metrics = {
        "accuracy": round(rng.random(), 2),
        "size_bytes": float(rng.randint(1, 10) * 100),
        "latency_ms": float(rng.randint(1, 4)) / 2,
    }
    return TrialRecord(i, f"run{i}", status, {}, metrics)


def _expected(records: list[TrialRecord]) -> tuple[set[str], float]:
    done = [r for r in records if r.status == "FINISHED"]
    if not done:
        return set(), 0.0
    values = [[r.metrics[o] for o in OBJECTIVES] for r in done]
    mask = pareto_mask(values, ["maximize", "minimize", "minimize"])
    return {r.run_id for r, keep in zip(done, mask) if keep}, search_hypervolume(
        [r.metrics for r in done], OBJECTIVES, BASELINE
    )


@pytest.mark.parametrize("seed", range(5))
def test_incremental_front_equals_the_front_of_all_records(seed):
    rng = random.Random(seed)
    front = Front(OBJECTIVES, BASELINE)
    records: list[TrialRecord] = []
    for i in range(40):
        record = _record(i, rng, status=rng.choice(["FINISHED"] * 4 + ["FAILED", "STOPPED"]))
        records.append(record)
        front.add(record)
        members, hv = _expected(records)
        assert {r.run_id for r in front.members} == members
        assert front.hypervolume == pytest.approx(hv)
    for record in rng.sample(records, 10):  # e.g. orphaned runs a resumed search deletes
        front.discard(record.run_id)
        records.remove(record)
        members, hv = _expected(records)
        assert {r.run_id for r in front.members} == members
        assert front.hypervolume == pytest.approx(hv)


def test_dominated_record_leaves_front_and_hypervolume_alone():
    front = Front(("accuracy", "size_bytes"), BASELINE)
    assert front.add(TrialRecord(1, "a", "FINISHED", {}, {"accuracy": 0.9, "size_bytes": 100.0}))
    hv = front.hypervolume
    assert not front.add(TrialRecord(2, "b", "FINISHED", {}, {"accuracy": 0.8, "size_bytes": 200.0}))
    assert not front.add(TrialRecord(3, "c", "FINISHED", {}, {"accuracy": math.nan, "size_bytes": 10.0}))
    assert [r.run_id for r in front.members] == ["a"] and front.hypervolume == hv and front.finished == 3
    # an identical point does not dominate: both stay, as with pareto_mask
    assert front.add(TrialRecord(4, "d", "FINISHED", {}, {"accuracy": 0.9, "size_bytes": 100.0}))
    assert [r.run_id for r in front.members] == ["a", "d"]


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("front")
    parent = client.create_run(
        experiment_id, tags={"rayzor.role": "search", "rayzor.objectives": "accuracy,size_bytes"}
    )
    runs = []
    for n, (accuracy, size) in enumerate([(0.9, 400.0), (0.8, 100.0), (0.7, 300.0)], start=1):
        run = client.create_run(
            experiment_id,
            tags={"rayzor.role": "trial", "rayzor.trial": str(n), "mlflow.parentRunId": parent.info.run_id},
        )
        client.log_metric(run.info.run_id, "accuracy", accuracy)
        client.log_metric(run.info.run_id, "size_bytes", size)
        client.set_terminated(run.info.run_id, "FINISHED")
        runs.append(run.info.run_id)
    return uri, client, runs


def test_load_search_recomputes_the_front_of_a_search_without_tags(store):
    uri, _, runs = store
    view = load_search(uri, "front")
    assert view.recomputed
    assert [r.run_id for r in view.pareto] == [runs[1], runs[0]]  # smallest first; trial 3 is dominated


def test_load_search_reads_the_front_the_search_tagged(store):
    uri, client, runs = store
    for run_id, on_front in zip(runs, ("true", "false", "true")):  # what the search wrote wins
        client.set_tag(run_id, "rayzor.pareto", on_front)
    view = load_search(uri, "front")
    assert not view.recomputed
    assert [r.run_id for r in view.pareto] == [runs[2], runs[0]]
    assert view.pareto[0].metrics == {"accuracy": 0.7, "size_bytes": 300.0}
    assert [r.number for r in view.trials] == [1, 2, 3]


@pytest.mark.parametrize("tagged", [False, True])
def test_readers_skip_a_finished_run_without_its_objectives(store, tagged):
    """A FINISHED run with no metrics (an interrupted trial an older rayzor logged) is never on a front."""
    uri, client, runs = store
    parent = client.get_run(runs[0]).data.tags["mlflow.parentRunId"]
    empty = client.create_run(
        client.get_experiment_by_name("front").experiment_id,
        tags={"rayzor.role": "trial", "rayzor.trial": "4", "mlflow.parentRunId": parent},
    )
    client.set_terminated(empty.info.run_id, "FINISHED")
    if tagged:
        for run_id, on_front in zip(runs, ("true", "true", "false")):
            client.set_tag(run_id, "rayzor.pareto", on_front)
    view = load_search(uri, "front")
    assert view.recomputed is not tagged
    assert [r.run_id for r in view.pareto] == [runs[1], runs[0]]
    front = Front(("accuracy", "size_bytes"), {"size_bytes": 1000.0})
    assert not front.add(TrialRecord(1, "x", "FINISHED", {}, {}))
    assert front.finished == 0
