"""A real search whose space prunes channels and factorizes layers: every trial finishes and rebuilds."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from rayzor.compression import load_packed
from rayzor.search import SearchConfig, run_search, trial_runs


@pytest.fixture(scope="module")
def searched(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("structure-search")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = SearchConfig(
        trials=3,
        concurrency=1,
        sampler="random",
        seed=0,
        experiment="structure",
        tracking_uri=uri,
        storage_path=str(root / "ray"),
        finetune_epochs=0,
        space={"channels": [0.25, 0.5], "factorize": ["lowrank"], "rank_ratio": [0.1, 0.5]},
    )
    return run_search(config), MlflowClient(uri)


def test_every_trial_finishes_with_the_sampled_structure(searched, digits, tmp_path):
    result, client = searched
    children = trial_runs(client, result.experiment_id, result.parent_run_id)
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    factorized = 0
    for child in children:
        params = child.data.params
        path = client.download_artifacts(child.info.run_id, "plan.json", str(tmp_path / child.info.run_id))
        with open(path) as f:
            layers = json.load(f)["layers"]
        for layer in ("conv2", "fc1"):
            methods = {m["method"]: m for m in layers[layer]}
            assert 0.25 <= float(params[f"{layer}.channels"]) <= 0.5
            # float params are logged to 4 significant digits; plan.json keeps the exact value
            assert methods["channel_pruning"]["ratio"] == pytest.approx(float(params[f"{layer}.channels"]), rel=1e-3)
            assert params[f"{layer}.factorize"] in ("none", "low_rank")
            # the rank is a parameter of a trial only where that trial factorizes the layer
            assert (f"{layer}.rank_ratio" in params) == (params[f"{layer}.factorize"] == "low_rank")
            if "low_rank" in methods:
                factorized += 1
                assert methods["low_rank"]["rank_ratio"] == pytest.approx(
                    float(params[f"{layer}.rank_ratio"]), rel=1e-3
                )
        # the packed file rebuilds the pruned, factorized model with the logged accuracy
        packed = client.download_artifacts(child.info.run_id, "packed/packed.safetensors", str(tmp_path))
        model, _ = load_packed(packed)
        assert digits.score(model, "val")["accuracy"] == pytest.approx(child.data.metrics["accuracy"], abs=1e-9)
        assert child.data.metrics["compression_ratio"] > 1.0
    assert factorized  # the sampler did pick a factorization somewhere
    with open(client.download_artifacts(result.parent_run_id, "space.json", str(tmp_path))) as f:
        space = json.load(f)
    assert [u["name"] for u in space["channel_units"]] == ["conv2", "fc1"] and space["factorize"] == ["low_rank"]


@pytest.fixture(scope="module")
def calibrated(ray_session, tmp_path_factory):
    """A search whose layers choose among RTN, GPTQ and AWQ, with block sizes, under target onnxruntime."""
    root = tmp_path_factory.mktemp("calibrated-search")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = SearchConfig(
        trials=4,
        concurrency=2,
        sampler="random",
        seed=3,
        experiment="calibrated",
        tracking_uri=uri,
        storage_path=str(root / "ray"),
        finetune_epochs=0,
        space={
            "sparsity": [0.0, 0.0],
            "bits": [4, 8],
            "methods": ["uniform_quantization", "gptq", "awq"],
            "group_size": [32, 64],
            "include": ["*"],
        },
    )
    return run_search(config), MlflowClient(uri)


def test_calibration_statistics_are_computed_once_per_search(calibrated, digits):
    result, client = calibrated
    children = trial_runs(client, result.experiment_id, result.parent_run_id)
    assert len(children) == 4 and {c.info.status for c in children} == {"FINISHED"}
    chosen = {c.data.params[f"{layer}.quant"] for c in children for layer in ("fc1", "fc2")}
    assert chosen & {"gptq", "awq"}  # the seed samples calibrated quantizers
    for child in children:
        # every statistic came from the driver's one pass, through the object store: none recomputed in a trial
        assert child.data.metrics["calibration_layers_computed"] == 0
        # convolutions are offered per-channel int8 only under onnxruntime; AWQ never reaches them
        assert child.data.params.get("conv2.quant", "uniform_quantization") == "uniform_quantization"
        # bits [4, 8] leave int8 only (a fixed choice, not logged as a param) on a convolution
        assert "conv2.bits" not in child.data.params
        assert child.data.metrics["deploy_bytes"] > 0
    # the front and its hypervolume are on the deploy artifact's size, normalised by the fp32 ONNX file's
    assert 0.0 < result.hypervolume < 1.0
