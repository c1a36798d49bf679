"""Shared fixtures. Tests use real models, real data and real MLflow stores.

Features and bases are cached (content-addressed) in $CONTINUAL_CACHE or ~/.cache/continual,
so a second test session starts from them; the first one on a fresh machine builds them.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", message="no QP solver")


@pytest.fixture(scope="session")
def lit_model():
    """The LiT composite (real pre-trained towers), random projections: built once."""
    from continual.clip.backbone import create_model

    return create_model("lit-effnet-minilm")


@pytest.fixture(scope="session")
def make_config():
    """A factory of real, small experiments: digits in 2 sessions on the LiT towers."""
    return small_config


def small_overrides(tmp_path) -> list[str]:
    """The overrides that make any config the small digits experiment, logged to tmp_path."""
    return [
        f"output_dir={tmp_path}",
        "model.pretrained=",  # random projections: no base to build
        "stream.name=digits",
        "stream.n_sessions=2",
        "stream.train_per_class=40",
        "stream.test_per_class=20",
        "control.sources=[tux]",
        "train.epochs=2",
        "train.batch_size=32",
        "tracking.experiment=test",
    ]


def small_config(tmp_path, *overrides: str):
    """A real, small experiment: digits in 2 sessions on the LiT towers, logged to tmp_path."""
    from continual.config.load import load_config

    return load_config(None, small_overrides(tmp_path) + list(overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path: Path):
    """A real `mlflow server` (sqlite backend) on a free local port; always stopped on teardown."""
    from continual.tracking.server import start_server_process, stop_server_process, wait_healthy
    from continual.tracking.store import TrackingError

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    artifacts = tmp_path / "server-artifacts"
    proc = start_server_process(
        f"sqlite:///{tmp_path}/server.db", str(artifacts), port, log_path=str(log)
    )
    try:
        try:
            wait_healthy(url, timeout=45.0, proc=proc)
        except TrackingError as e:
            pytest.fail(f"{e}\n--- server log ---\n{log.read_text()[-3000:]}")
        yield url, artifacts
    finally:
        stop_server_process(proc)
    assert proc.poll() is not None
