"""Session-wide fixtures: one Ray instance, one trained digits baseline."""

from __future__ import annotations

import os

import pytest

# Set before Ray or MLflow is imported by any test module.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray's token auth turns itself on when ~/.ray/auth_token exists: set the mode
# explicitly, the same for this process and every Ray process a test starts,
# so tests behave the same with or without a token file.
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh baseline cache per session, so tests never read a stale model."""
    path = str(tmp_path_factory.mktemp("rayzor-cache"))
    os.environ["RAYZOR_CACHE_DIR"] = path
    return path


@pytest.fixture(scope="session")
def digits():
    """The embedded digits task, trained once per session."""
    from rayzor.tasks import create_task

    return create_task("digits")


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray instance for every test that needs it.

    Its workers inherit the environment it starts with, not later changes: the test tasks'
    attempt log (``tests/search/attempt_task.py``) is named here.
    """
    import ray

    os.environ["RAYZOR_TEST_ATTEMPTS"] = str(tmp_path_factory.mktemp("attempts") / "attempts.txt")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A private MLflow store for one test."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the session's Ray, or a module that runs a search, is slow."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
