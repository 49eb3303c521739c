"""A real multi-process Ray cluster on loopback: `ray start --head` plus
`ray start --address` workers, each a process group this test suite owns.

Every process is started with the same explicit RAY_AUTH_MODE (tests/conftest.py
sets it in os.environ, which the children inherit) and bounded memory, and is
stopped by PID at teardown, even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

#: Logical memory and object store per node: several raylets on one host
#: would each claim the whole machine otherwise.
NODE_MEMORY = str(2 * 1024**3)
OBJECT_STORE = str(100 * 1024**2)


_NODE_PORT_FLAGS = (
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, what: str, logs: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}:\n{p.read_text()[-1500:]}" for p in Path(logs).glob("*.log"))
    raise RuntimeError(f"timed out waiting for {what}\n{tails}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class LocalCluster:
    """Head (1 CPU, resource `head`) plus named workers (resource `worker`)."""

    def __init__(self) -> None:
        # Short path: Ray's unix sockets live under it (108-byte limit).
        self.temp = tempfile.mkdtemp(prefix="rz", dir="/tmp")
        self.port = free_port()
        self.dashboard_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"], "PYTHONUNBUFFERED": "1"}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(Path(self.temp) / f"{name}.log", "w")
        # Ray's agents default to fixed ports (52365, ...): clusters of other
        # test runs on this host would collide, so every node gets free ones.
        ports = [arg for flag in _NODE_PORT_FLAGS for arg in (flag, str(free_port()))]
        self.procs[name] = subprocess.Popen(
            [
                "ray",
                "start",
                "--block",
                "--disable-usage-stats",
                "--memory",
                NODE_MEMORY,
                "--object-store-memory",
                OBJECT_STORE,
                *ports,
                *args,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_head(self) -> None:
        self._start(
            "head",
            [
                "--head",
                "--node-ip-address",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num-cpus",
                "1",
                "--resources",
                json.dumps({"head": 1}),
                "--temp-dir",
                self.temp,
                "--include-dashboard",
                "true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(self.dashboard_port),
                "--ray-client-server-port",
                str(free_port()),
            ],
        )
        _wait(lambda: _listening(self.port) and self._nodes() is not None, "the Ray head and its dashboard", self.temp)

    def add_workers(self, *names: str) -> None:
        """Start workers (1 CPU, resources `worker` and the name), one at a time:
        nodes sharing a host and session folder race for socket names otherwise."""
        for name in names:
            self._start(
                name,
                [
                    "--address",
                    self.address,
                    "--node-ip-address",
                    "127.0.0.1",
                    "--num-cpus",
                    "1",
                    "--resources",
                    json.dumps({"worker": 1, name: 1}),
                ],
            )
            _wait(lambda name=name: bool(self.node_ids(name)), f"worker {name} to join", self.temp)

    def _nodes(self) -> list[dict] | None:
        try:
            with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=100", timeout=5) as r:
                return json.load(r)["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return None

    def alive_nodes(self) -> list[dict]:
        return [n for n in self._nodes() or [] if n.get("state") == "ALIVE"]

    def node_ids(self, resource: str) -> set[str]:
        """Ids of the live nodes that have a custom resource (a worker's name)."""
        return {n["node_id"] for n in self.alive_nodes() if resource in n.get("resources_total", {})}

    def kill(self, name: str) -> None:
        """SIGKILL one node: its `ray start` process group (raylet, agents)."""
        proc = self.procs.pop(name)
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        procs = list(self.procs.values())
        self.procs.clear()
        for proc in procs:
            _killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)  # the group may outlive its leader
            proc.wait()
        # Workers a raylet spawned may sit in other process groups: stop what
        # is still running from this cluster's temp dir, PID by PID.
        for pid in _pids_mentioning(self.temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="package")
def local_cluster():
    """Head + workers `w1`, `w2` (custom resources `worker` and their name)."""
    cluster = _started_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def _started_cluster(attempts: int = 2) -> LocalCluster:
    """A started head + w1 + w2; a `ray start` that times out on a loaded host is retried once on fresh ports."""
    for attempt in range(attempts):
        cluster = LocalCluster()
        try:
            cluster.start_head()
            cluster.add_workers("w1", "w2")
            return cluster
        except RuntimeError:
            cluster.stop()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def rayzor(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """A `rayzor` CLI process (a driver of its own, as a user would run it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "rayzor.search.cli", *args],
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )
