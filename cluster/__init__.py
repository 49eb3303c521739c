"""Running rayzor on a Ray cluster: connect, size trials, submit Ray Jobs.

Cluster configs (Ray cluster launcher YAML, KubeRay manifests, the MLflow
server recipe) ship in :data:`CONFIG_DIR`.
"""

from rayzor.cluster._configs import CONFIG_DIR, launcher_schema, validate_launcher_config
from rayzor.cluster._connect import check_address, check_dashboard
from rayzor.cluster._jobs import job_status, stop_job, submit_search
from rayzor.cluster._resources import check_cluster_resources, derive_concurrency, trial_resources

__all__ = [
    "CONFIG_DIR",
    "check_address",
    "check_cluster_resources",
    "check_dashboard",
    "derive_concurrency",
    "job_status",
    "launcher_schema",
    "stop_job",
    "submit_search",
    "trial_resources",
    "validate_launcher_config",
]
