"""Faults a user meets, with real processes and signals: Ctrl-C, kills, a tracking outage, concurrent starts.

Every search here is a ``rayzor search`` subprocess (its own Ray), so a
signal reaches it as it would from a terminal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from rayzor.search import pareto_mask, trial_runs
from rayzor.search.cli import app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAYZOR = [sys.executable, "-c", "from rayzor.search.cli import main; main()"]
TRIALS = 6
#: Two kills, each after a logged trial, must leave trials to run.
KILL_TRIALS = 8
OUTAGE_TRIALS = 4
#: One fine-tune epoch: each trial lasts a few seconds, long enough to be caught mid-way.
YAML = """trials: {trials}
concurrency: 2
finetune_epochs: {epochs}
sampler: random
warm_start: none
target: packed
storage_path: {root}/ray
space:
  sparsity: [0.0, 0.5]
  bits: [4, 8]
"""


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(REPO),
        "RAY_AUTH_MODE": "disabled",
        "RAY_AIR_NEW_OUTPUT": "0",
        **extra,
    }


def _config(root: Path, trials: int = TRIALS, epochs: int = 1, extra: str = "") -> Path:
    path = root / "search.yaml"
    path.write_text(YAML.format(trials=trials, epochs=epochs, root=root) + extra)
    return path


def _uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def _start(root: Path, *args: str) -> subprocess.Popen:
    # its own session: the Ray processes it starts are ended with it, by its group id
    return subprocess.Popen(
        [*RAYZOR, "search", *args, "--tracking-uri", _uri(root)],
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _after_progress(proc: subprocess.Popen, lines: int) -> list[str]:
    """Read the search's output until ``lines`` trials were logged (``[i/N] trial ...``)."""
    seen: list[str] = []
    assert proc.stdout is not None
    while sum(line.startswith("[") for line in seen) < lines:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"search ended early: {''.join(seen)}{proc.stderr.read() if proc.stderr else ''}")
        seen.append(line)
    return seen


def _end_group(proc: subprocess.Popen) -> None:
    """Stop what a search left behind (a killed driver leaves Ray's processes), by its group id."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _resume(root: Path, name: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RAYZOR, "search", "--resume", name, "--storage-path", str(root / "ray"), "--tracking-uri", _uri(root)],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        start_new_session=True,
    )


def _runs(root: Path, deleted: bool = False) -> list:
    client = MlflowClient(_uri(root))
    view = ViewType.ALL if deleted else ViewType.ACTIVE_ONLY
    return client.search_runs([client.get_experiment_by_name("rayzor").experiment_id], run_view_type=view)


def _parent(root: Path):
    return next(r for r in _runs(root) if r.data.tags.get("rayzor.role") == "search")


def _finished_with_metrics(root: Path) -> dict[str, object]:
    """Trial id -> run of every FINISHED trial that carries its objectives."""
    parent = _parent(root)
    objectives = parent.data.tags["rayzor.objectives"].split(",")
    runs = trial_runs(MlflowClient(_uri(root)), parent.info.experiment_id, parent.info.run_id)
    return {
        r.data.tags["rayzor.trial_id"]: r
        for r in runs
        if r.info.status == "FINISHED" and all(o in r.data.metrics for o in objectives)
    }


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A search stopped by SIGINT after 2 logged trials."""
    root = tmp_path_factory.mktemp("sigint")
    proc = _start(root, str(_config(root)), "--name", "paused")
    try:
        _after_progress(proc, 2)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        _end_group(proc)
    return root, proc.returncode, err


def test_sigint_is_a_clean_pause(interrupted):
    root, code, err = interrupted
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "interrupted: resume with rayzor search --resume paused"
    parent = _parent(root)
    assert parent.info.status == "KILLED"
    assert parent.data.tags["rayzor.resumable"] == "true"
    trials = [r for r in _runs(root) if r.data.tags.get("rayzor.role") == "trial"]
    # whatever is logged FINISHED has its metrics: the stopped trials are not logged at all
    assert len(_finished_with_metrics(root)) == sum(r.info.status == "FINISHED" for r in trials) >= 2


def test_pareto_of_a_paused_search_is_its_front_so_far(interrupted):
    root, _, _ = interrupted
    runs = list(_finished_with_metrics(root).values())
    values = np.array([[r.data.metrics["accuracy"], r.data.metrics["size_bytes"]] for r in runs])
    front = {r.info.run_id for r, m in zip(runs, pareto_mask(values, ["maximize", "minimize"])) if m}
    # the paused search's own tags, written as its trials were logged, are its front
    assert {r.info.run_id for r in runs if r.data.tags["rayzor.pareto"] == "true"} == front
    # in this process (as tests/search/test_cli.py does): two fresh CLI processes took 17 s of the suite
    shown = CliRunner().invoke(app, ["pareto", "--tracking-uri", _uri(root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    header = shown.stdout.splitlines()[0]
    assert f"Pareto-optimal of {len(runs)} trials" in header
    assert header.endswith("(so far: its search run is KILLED)")
    listed = CliRunner().invoke(app, ["pareto", "--json", "--tracking-uri", _uri(root)])
    assert {row["run_id"] for row in json.loads(listed.stdout)} == front


def test_sigint_then_resume_finishes_the_budget(interrupted):
    root, _, _ = interrupted
    resumed = _resume(root, "paused")
    assert resumed.returncode == 0, resumed.stderr
    assert len(_finished_with_metrics(root)) == TRIALS
    parent = _parent(root)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rayzor.resumable"] == "false"
    pareto = CliRunner().invoke(app, ["pareto", "--json", "--tracking-uri", _uri(root)])
    assert pareto.exit_code == 0, pareto.output
    assert json.loads(pareto.stdout)


def test_duplicate_name_is_refused_in_one_line(interrupted):
    root, _, _ = interrupted
    done = subprocess.run(
        [*RAYZOR, "search", str(_config(root)), "--name", "paused", "--tracking-uri", _uri(root)],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: --name: got 'paused'; valid: a name not used under ")
    assert done.stderr.strip().count("\n") == 0
    assert "--resume paused" in done.stderr


def _keeps_every_run_if_torn(root: Path, output: str) -> None:
    """A kill that landed while Tune copied its state to the storage path (see the torn-state test below):
    the resume is refused in one line, and no run is deleted. Anything else fails the test."""
    assert "with Tune's saved state whole" in output and "Nothing was changed" in output, output
    stages = [r.info.lifecycle_stage for r in _runs(root, deleted=True)]
    assert stages == ["active"] * len(stages)


def test_two_kills_then_resume_rerun_nothing(tmp_path):
    """SIGKILL the driver twice mid-search; the last resume runs only what no run holds."""
    config = _config(tmp_path, trials=KILL_TRIALS)
    before: dict[str, int] = {}  # trial id -> end time of its FINISHED run when a driver died
    proc = _start(tmp_path, str(config), "--name", "killed")
    for attempt in range(2):
        try:
            _after_progress(proc, 2 - attempt)  # the resumed driver dies at its first logged trial
            proc.kill()
        except AssertionError as exc:  # the resume ended early: only a refused torn state may do that
            _keeps_every_run_if_torn(tmp_path, str(exc))
            return
        finally:
            _end_group(proc)
        for trial_id, run in _finished_with_metrics(tmp_path).items():
            before.setdefault(trial_id, run.info.end_time)
        if attempt == 0:
            proc = _start(tmp_path, "--resume", "killed", "--storage-path", str(tmp_path / "ray"))
    assert len(before) >= 2
    resumed = _resume(tmp_path, "killed")
    if resumed.returncode == 2:
        _keeps_every_run_if_torn(tmp_path, resumed.stderr)
        return
    assert resumed.returncode == 0, resumed.stderr
    after = _finished_with_metrics(tmp_path)
    assert len(after) == KILL_TRIALS
    # no finished trial ran again: each keeps the run (and end time) it had when the driver died
    assert {t: after[t].info.end_time for t in before} == before
    every = _runs(tmp_path, deleted=True)
    assert not [r.info.run_id for r in every if r.data.tags.get("rayzor.orphan")]
    assert not [r.info.run_id for r in every if r.info.status == "RUNNING"]
    parent = _parent(tmp_path)
    assert parent.info.status == "FINISHED"
    history = MlflowClient(_uri(tmp_path)).get_metric_history(parent.info.run_id, "hypervolume")
    assert sorted(m.step for m in history) == list(range(1, KILL_TRIALS + 1))
    # Three drivers tagged the front as it grew (the killed ones mid-way): the tags are the front of all of them.
    assert parent.data.tags["rayzor.objectives"] == "accuracy,size_bytes"
    runs = list(after.values())
    mask = pareto_mask(
        np.array([[r.data.metrics["accuracy"], r.data.metrics["size_bytes"]] for r in runs]), ["maximize", "minimize"]
    )
    assert [r.data.tags.get("rayzor.pareto") for r in runs] == ["true" if m else "false" for m in mask]
    assert all(("★" in r.info.run_name) == bool(m) for r, m in zip(runs, mask))
    progress = [line for line in resumed.stdout.splitlines() if line.startswith("[")]
    assert all(int(line[1:].split("/")[0]) <= KILL_TRIALS for line in progress)


def test_a_torn_tune_state_is_refused_and_no_finished_trial_is_dropped(tmp_path):
    """Tune copies its state to the storage path in a background thread: a driver killed during the
    copy leaves a file cut short, or the trials of one save beside the generator of another. Tune's
    own restore would fail, log it and start again from nothing, and the resume would drop every
    finished run. The resume refuses instead, and a whole state still resumes."""
    import ray.cloudpickle as cloudpickle

    proc = _start(tmp_path, str(_config(tmp_path, trials=KILL_TRIALS)), "--name", "torn")
    try:
        _after_progress(proc, 2)
        proc.kill()
    finally:
        _end_group(proc)
    logged = {t: r.info.end_time for t, r in _finished_with_metrics(tmp_path).items()}
    assert len(logged) >= 2
    experiment = tmp_path / "ray" / "torn"
    state, generator = max(experiment.glob("experiment_state-*.json")), max(experiment.glob("search_gen_state-*"))
    whole = {path: path.read_bytes() for path in (state, generator)}
    counted = cloudpickle.loads(whole[generator])
    cases = {
        f"{state.name} in {experiment} is cut short": (state, whole[state][: len(whole[state]) // 2]),
        f"{generator.name} in {experiment} is cut short": (generator, whole[generator][:-7]),
        "the search generator counted": (generator, cloudpickle.dumps({**counted, "counter": counted["counter"] + 1})),
    }
    for says, (path, data) in cases.items():
        path.write_bytes(data)
        refused = _resume(tmp_path, "torn")
        path.write_bytes(whole[path])
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: --resume: got 'torn'; valid: ") and says in refused.stderr
        assert refused.stderr.strip().count("\n") == 0 and "Nothing was changed" in refused.stderr
    # A state that loads but that Tune cannot restore (its trials' records emptied): Tune logs the
    # failure and starts again from nothing; the search stops at its first step instead.
    unreadable = json.loads(whole[state])
    unreadable["trial_data"] = [["{}", "{}"] for _ in unreadable["trial_data"]]
    state.write_text(json.dumps(unreadable))
    stopped = _resume(tmp_path, "torn")
    state.write_bytes(whole[state])
    assert stopped.returncode == 2, stopped.stderr
    assert f"error: Ray Tune restored none of the {len(logged)} trials search torn logged" in stopped.stderr
    every = _runs(tmp_path, deleted=True)
    assert not [r.info.run_id for r in every if r.info.lifecycle_stage == "deleted" or r.data.tags.get("rayzor.orphan")]
    assert {t: r.info.end_time for t, r in _finished_with_metrics(tmp_path).items()} == logged
    # the whole state resumes: the budget is finished and no finished trial ran again
    resumed = _resume(tmp_path, "torn")
    assert resumed.returncode == 0, resumed.stderr
    after = _finished_with_metrics(tmp_path)
    assert len(after) == KILL_TRIALS
    assert {t: after[t].info.end_time for t in logged} == logged


def test_two_searches_started_together_on_a_fresh_store(tmp_path):
    config = _config(tmp_path, trials=1, epochs=0)
    procs = [_start(tmp_path, str(config), "--name", f"together-{i}") for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            _end_group(p)
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    parents = [r for r in _runs(tmp_path) if r.data.tags.get("rayzor.role") == "search"]
    assert sorted(r.info.status for r in parents) == ["FINISHED", "FINISHED"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` on loopback (one worker), answering /health before this returns."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "-w",
            "1",
        ],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError("mlflow server did not start") from None
            time.sleep(0.5)
    _end_group(proc)
    raise AssertionError("mlflow server did not answer /health in 300 s")


class _Outage:
    """A TCP relay on loopback in front of the tracking server: the address the search is given.

    ``cut()`` closes its listening socket and every connection through it, so each request is refused
    as a stopped server refuses it; ``restore()`` listens on the same port again. One ``mlflow server``
    start (10-13 s) stands for the two a stop and a restart would take.
    """

    def __init__(self, target: int) -> None:
        self._target = target
        self.port = _free_port()
        self._live: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        try:  # close() alone leaves a socket blocked in accept() listening on Linux; shutdown() ends it
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            for conn in self._live:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._live.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            try:
                server = socket.create_connection(("127.0.0.1", self._target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._live += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def test_tracking_outage_then_resume_logs_everything(tmp_path):
    """The server becomes unreachable after 1 logged trial and stays so past the end of the search."""
    port = _free_port()
    server = _mlflow_server(tmp_path, port)
    link = _Outage(port)
    uri = f"http://127.0.0.1:{link.port}"
    config = _config(tmp_path, trials=OUTAGE_TRIALS, extra="tracking_wait: 3\n")
    try:
        search = subprocess.Popen(  # the server named as many users name it: by MLFLOW_TRACKING_URI
            [*RAYZOR, "search", str(config), "--name", "outage"],
            cwd=tmp_path,
            env=_env(MLFLOW_TRACKING_URI=uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out = _after_progress(search, 1)
            link.cut()  # unreachable until the search has ended
            rest, err = search.communicate(timeout=600)
        finally:
            _end_group(search)
        assert search.returncode != 0, "".join(out) + rest + err
        # one line per trial: MLflow's own "View run ... at" lines are off for a server, however it is named
        assert "View run" not in "".join(out) + rest
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error: tracking server {uri} unreachable")
        assert line.endswith("rayzor sync outage (or rayzor search --resume outage)")
        assert list((tmp_path / "ray" / "outage" / "tracking-journal").glob("*.json"))
        link.restore()
        resumed = subprocess.run(
            [*RAYZOR, "search", "--resume", "outage", "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
        )
        assert resumed.returncode == 0, resumed.stderr
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("rayzor").experiment_id
        runs = client.search_runs([experiment], run_view_type=ViewType.ALL)
        parent = next(r for r in runs if r.data.tags.get("rayzor.role") == "search")
        trials = [r for r in runs if r.data.tags.get("rayzor.role") == "trial"]
    finally:
        link.cut()
        _end_group(server)
    assert parent.info.status == "FINISHED"
    assert len(trials) == OUTAGE_TRIALS
    assert all(r.info.status == "FINISHED" and "accuracy" in r.data.metrics for r in trials)
    assert not list((tmp_path / "ray" / "outage" / "tracking-journal").glob("*.json"))


def test_a_corrupt_artifact_is_named_by_its_run_id(interrupted, tmp_path):
    root, _, _ = interrupted
    run = next(iter(_finished_with_metrics(root).values()))
    packed = Path(run.info.artifact_uri.removeprefix("file://")) / "packed" / "packed.safetensors"
    data = bytearray(packed.read_bytes())
    data[-1] ^= 0xFF  # one flipped weight byte
    packed.write_bytes(bytes(data))
    done = subprocess.run(
        [*RAYZOR, "export", "--run", run.info.run_id, "--format", "packed", "--out", str(tmp_path / "m.safetensors")]
        + ["--tracking-uri", _uri(root)],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: packed artifact of run {run.info.run_id}: corrupt rayzor packed file")
    assert str(root) not in done.stderr and "/tmp" not in done.stderr
