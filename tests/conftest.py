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
    from continual.backbone import create_model

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
    from continual.config import load_config

    return load_config(None, small_overrides(tmp_path) + list(overrides))
