"""What clusters do to runs: many processes on one store, two commands on one run, SIGTERM, a
tracking server that dies. Real processes, a real store and a real `mlflow server`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import free_port

TINY = ["model.pretrained=null", "stream.name=digits", "stream.n_sessions=2", "stream.train_per_class=10",
        "stream.test_per_class=5", "control.name=null", "train.epochs=1", "tracking.experiment=many"]


def command(out: Path, *overrides: str) -> list[str]:
    """A run that can be stopped in session 2: 3 sessions of 10 epochs (an MLflow point each)."""
    return [sys.executable, "-m", "continual", "run", "configs/default.yaml", "--no-progress", f"output_dir={out}",
            "model.pretrained=null", "stream.name=digits", "stream.n_sessions=3", "stream.train_per_class=20",
            "stream.test_per_class=10", "control.name=null", "train.epochs=10", "train.batch_size=16",
            "tracking.experiment=faults", *overrides]


def wait_for_session(out: Path, session: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Return as soon as session ``session`` is checkpointed (the next one is training)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for state in (out / "checkpoints").glob("*/state.json"):
            if json.loads(state.read_text())["session"] >= session:
                return
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.02)
    pytest.fail(f"session {session} was not checkpointed within {timeout} s")


def only_run(uri: str, experiment: str = "faults"):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, run


def assert_each_point_once(client: MlflowClient, run, sessions: int) -> None:
    """Every (metric, step) of the run logged once, Avalanche's per-epoch loss included; every row."""
    keys = set(client.get_run(run.info.run_id).data.metrics)
    assert any(k.startswith("Loss_Epoch") for k in keys), keys
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {sorted(steps)}"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "acc/session_1")) == list(range(sessions + 1))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


# -- one store, many processes ------------------------------------------------------------------
WORKER = """
import sys, time
from continual.tracking.store import ensure_store
from mlflow import MlflowClient
uri, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
ensure_store(uri)
print(len(MlflowClient(uri).search_experiments()))
"""


def test_processes_that_start_together_create_the_store_once(tmp_path):
    """Bare MLflow, four processes opening one new sqlite store at the same instant crash in its
    schema migrations (and can leave the store half made); through ensure_store, none does."""
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    start = time.time() + 6  # every interpreter has imported MLflow by then
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(start)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["1"] * 4  # the Default experiment, in a whole store
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["mlflow.db", "mlflow.db.lock"]


@pytest.mark.slow
def test_four_first_runs_into_one_new_store(tmp_path):
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, "-m", "continual", "run", "configs/default.yaml", "--no-progress",
                               f"output_dir={out}", *TINY, f"seed={seed}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in range(4)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e[-2000:] for e in errors]
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")  # the store opens afterwards
    runs = client.search_runs([client.get_experiment_by_name("many").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)


# -- SIGTERM, and two commands on one run ---------------------------------------------------------
@pytest.mark.slow
def test_sigterm_leaves_a_killed_run_that_one_process_resumes(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    client, run = only_run(f"sqlite:///{tmp_path}/whole/mlflow.db")
    expected = np.array(json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json")).read_text())["accuracy"])

    out = tmp_path / "stopped"
    uri = f"sqlite:///{out}/mlflow.db"
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for_session(out, 1, proc)
    proc.send_signal(signal.SIGTERM)  # during session 2
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    line = one_line(err)
    client, run = only_run(uri)
    assert run.info.status == "KILLED"
    assert line == (f"interrupted by SIGTERM: MLflow run {run.info.run_id} marked KILLED; sessions up to 1 are "
                    f"checkpointed in {out}/checkpoints/{run.info.run_id}; the same command resumes after session 1")

    # Two identical commands: the first holds the run (paused while the second tries), the second says why not.
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    first = subprocess.Popen(command(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for text in first.stdout:
        if "resuming after session 1 of 3" in text:
            break
    else:
        pytest.fail(f"the first command did not resume: {first.communicate()[1][-2000:]}")
    first.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run(command(out), capture_output=True, text=True, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"run {run.info.run_id} is being trained by another process (pid {first.pid} " in one_line(second.stderr)
    rest, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]

    client, run = only_run(uri)  # the same MLflow run, continued once
    assert run.info.status == "FINISHED"
    resumed = np.array(json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json")).read_text())["accuracy"])
    np.testing.assert_array_equal(resumed, expected)  # the uninterrupted matrix, bit for bit on the CPU
    assert_each_point_once(client, run, 3)


# -- a tracking server that dies ------------------------------------------------------------------
@pytest.mark.slow
def test_a_dead_tracking_server_fails_the_run_in_one_line_and_a_resume_completes_it(tmp_path):
    from continual.tracking.server import start_server_process, stop_server_process, wait_healthy

    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def serve() -> subprocess.Popen:
        proc = start_server_process(f"sqlite:///{tmp_path}/server.db", str(tmp_path / "artifacts"), port,
                                    log_path=str(tmp_path / "server.log"))
        wait_healthy(url, timeout=60, proc=proc)
        return proc

    out = tmp_path / "out"
    server = serve()
    try:
        proc = subprocess.Popen(command(out, f"tracking.uri={url}"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        wait_for_session(out, 1, proc)
        os.killpg(server.pid, signal.SIGKILL)  # the server dies during session 2
        server.wait()
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - killed < 60
        assert proc.returncode == 2
        line = one_line(err)
        assert line.startswith(f"error: MLflow tracking server {url} ") and "once the server is back" in line

        server = serve()
        again = subprocess.run(command(out, f"tracking.uri={url}"), capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "resuming after session" in again.stdout
        client, run = only_run(url)
        assert run.info.status == "FINISHED"
        assert_each_point_once(client, run, 3)
    finally:
        stop_server_process(server)


# -- signal handling in one process ---------------------------------------------------------------
def test_sigterm_handler_is_installed_for_the_call_only_and_waits_for_mlflow_writes():
    import threading

    from continual.system.signals import Terminated, sigterm_as_interrupt, uninterrupted

    before = signal.getsignal(signal.SIGTERM)
    done = []

    @uninterrupted
    def write():  # a SIGTERM here is raised only when the write is done
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        done.append("write")

    @sigterm_as_interrupt
    def run():
        assert signal.getsignal(signal.SIGTERM) is not before
        write()
        done.append("after")  # never reached

    with pytest.raises(Terminated):
        run()
    assert done == ["write"]
    assert signal.getsignal(signal.SIGTERM) is before  # put back for whatever runs next

    seen = []
    worker = threading.Thread(target=sigterm_as_interrupt(lambda: seen.append(signal.getsignal(signal.SIGTERM))))
    worker.start()
    worker.join()
    assert seen == [before]  # a run in a worker thread leaves the process's handlers alone
