"""The shipped cluster configs: launcher YAML against Ray's own schema,
KubeRay manifests for structure, and the pure resource rules."""

from __future__ import annotations

import copy

import pytest
import yaml

from rayzor.cluster import (
    CONFIG_DIR,
    check_cluster_resources,
    derive_concurrency,
    trial_resources,
    validate_launcher_config,
)
from rayzor.errors import ClusterConfigError, ConfigError


def test_launcher_config_matches_rays_schema():
    config = validate_launcher_config(CONFIG_DIR / "aws-gpu.yaml")
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] >= 1 and gpu["resources"] == {"worker": 1}
    assert any("rayzor" in cmd for cmd in config["setup_commands"])


def test_schema_validation_catches_a_broken_launcher_config(tmp_path):
    broken = yaml.safe_load((CONFIG_DIR / "aws-gpu.yaml").read_text())
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "one"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ClusterConfigError, match="available_node_types/gpu_worker/min_workers"):
        validate_launcher_config(path)


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _check_cluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert _containers(head["template"])[0]["image"]
    (gpu,) = spec["workerGroupSpecs"]
    assert gpu["minReplicas"] >= 1 and gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    assert _containers(gpu["template"])[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_kuberay_raycluster_structure():
    doc = yaml.safe_load((CONFIG_DIR / "kuberay-raycluster.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster")
    _check_cluster_spec(doc["spec"])


def test_kuberay_rayjob_structure():
    doc = yaml.safe_load((CONFIG_DIR / "kuberay-rayjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    assert doc["spec"]["entrypoint"].startswith("python -m rayzor.search.cli search ")
    assert "MLFLOW_TRACKING_URI" in yaml.safe_load(doc["spec"]["runtimeEnvYAML"])["env_vars"]
    _check_cluster_spec(copy.deepcopy(doc["spec"]["rayClusterSpec"]))


def test_fractional_gpus_set_the_concurrency():
    request = trial_resources(1, 0.25, {"worker": 1})
    assert request == {"CPU": 1.0, "GPU": 0.25, "worker": 1.0}
    cluster = {"CPU": 16.0, "GPU": 2.0, "worker": 8.0}
    assert derive_concurrency(request, cluster, trials=64) == 8  # 2 GPUs / 0.25
    assert derive_concurrency(request, cluster, trials=3) == 3
    check_cluster_resources(request, cluster)


def test_gpu_request_without_gpus_names_the_field():
    with pytest.raises(
        ConfigError, match=r"^gpus_per_trial: got 0\.5; valid: at most 0: the cluster has 0 GPU in total$"
    ):
        check_cluster_resources(trial_resources(1, 0.5), {"CPU": 8.0})
