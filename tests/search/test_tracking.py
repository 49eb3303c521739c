"""Tracking URIs: MLflow's own rules, absolute paths, fast failure."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from rayzor.errors import ConfigError
from rayzor.search import connect, resolve_tracking_uri


def test_relative_sqlite_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///x/mlflow.db") == f"sqlite:///{tmp_path / 'x' / 'mlflow.db'}"


def test_follows_mlflow_tracking_uri_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"


def test_default_is_mlflow_db_in_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_fast():
    uri = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(ConfigError) as info:
        connect(uri, "x")
    assert str(info.value).startswith(f"tracking_uri: got '{uri}'")
    assert "GET /health failed" in str(info.value)


def test_sqlite_in_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        connect(f"sqlite:///{tmp_path}/no/such/dir/mlflow.db", "x")


def test_connect_creates_experiment_once(tracking_uri):
    _, uri, first = connect(tracking_uri, "exp")
    _, _, second = connect(tracking_uri, "exp", create=False)
    assert first == second
    assert Path(uri[len("sqlite:///") :]).exists()


def test_unknown_experiment_lists_known_ones(tracking_uri):
    connect(tracking_uri, "known")
    with pytest.raises(ConfigError, match="--experiment: got 'other'.*'known'"):
        connect(tracking_uri, "other", create=False)
