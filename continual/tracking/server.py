"""MLflow's own processes: the UI in the foreground (``continual ui``) and a tracking server in
the background (tests, multi-node runs)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from continual.tracking.store import TrackingError

def ui_url(port: int = 5000, experiment_id: str | None = None, host: str = "127.0.0.1") -> str:
    """A link into MLflow's UI in its model-training view (MLflow 3 opens its GenAI view unless
    the link asks): an experiment's runs, or the list of experiments."""
    page = f"experiments/{experiment_id}/runs" if experiment_id else "experiments"
    return f"http://{host}:{port}/#/{page}?workflowType=machine_learning"


def _mlflow_command() -> list[str]:
    # The mlflow of this interpreter, not whatever `mlflow` is first on PATH.
    return [sys.executable, "-m", "mlflow"]


def start_ui(store_uri: str, artifact_root: str, port: int = 5000) -> int:
    """Run ``mlflow ui`` on 127.0.0.1:`port` in the foreground until Ctrl-C; returns its exit code."""
    Path(artifact_root).mkdir(parents=True, exist_ok=True)
    command = _mlflow_command() + [
        "ui",
        "--backend-store-uri", store_uri,
        "--default-artifact-root", artifact_root,
        "--host", "127.0.0.1",
        "--port", str(port),
    ]
    try:
        return subprocess.run(command).returncode
    except KeyboardInterrupt:  # Ctrl-C is how the user stops the UI: not an error
        return 0


def start_server_process(
    store_uri: str,
    artifact_root: str,
    port: int,
    host: str = "127.0.0.1",
    workers: int = 1,
    log_path: str | None = None,
) -> subprocess.Popen:
    """Start ``mlflow server`` in the background; stop it with :func:`stop_server_process`.

    Artifacts are proxied (``--artifacts-destination``): clients upload them over HTTP and
    need no access to `artifact_root`. The server runs in its own process group so that
    stopping it also stops its workers. Output goes to `log_path` (default: discarded).
    Call :func:`wait_healthy` before using it (it takes about 10 s to answer).
    """
    Path(artifact_root).mkdir(parents=True, exist_ok=True)
    command = _mlflow_command() + [
        "server",
        "--backend-store-uri", store_uri,
        "--artifacts-destination", artifact_root,
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        if log_path:
            out.close()  # the child has its own copy of the descriptor


def stop_server_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate a server from :func:`start_server_process` and its workers; kill if stuck."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its own group (start_new_session), not ours
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<url>/health`` until it answers 200; TrackingError after `timeout` seconds.

    With `proc`, give up at once if that server process has exited.
    """
    deadline = time.monotonic() + timeout
    health = url.rstrip("/") + "/health"
    while True:
        try:
            with urllib.request.urlopen(health, timeout=2.0) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if proc is not None and proc.poll() is not None:
            raise TrackingError(
                f"MLflow server for {url} exited with code {proc.returncode} "
                f"before answering /health"
            )
        if time.monotonic() > deadline:
            raise TrackingError(f"MLflow server {url} did not answer /health within {timeout:.0f} s")
        time.sleep(0.25)
