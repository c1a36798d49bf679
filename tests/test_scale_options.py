"""The options users expect at scale, in one process: gradient checkpointing changes nothing but
memory, bf16 autocast trains, DataLoader workers feed the same steps, gradient accumulation
is exact for per-example losses (its DDP form is in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

import _ddp_worker as worker
from continual.config import load_config
from continual.errors import ConfigError


@pytest.fixture(scope="module")
def reference():
    return worker.run_case("finetune", dtype=torch.float32)


def assert_same_update(got: dict, want: dict, atol: float) -> None:
    for name, value in want["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=0, atol=atol)


def test_gradient_checkpointing_gives_the_same_step(reference):
    assert_same_update(worker.run_case("finetune-checkpointing", dtype=torch.float32), reference, atol=1e-6)


def test_workers_give_the_same_step(reference):
    assert_same_update(worker.run_case("finetune-workers", dtype=torch.float32), reference, atol=1e-6)


def test_accumulation_gives_the_same_step(reference):
    assert_same_update(worker.run_case("finetune-accumulate", dtype=torch.float32), reference, atol=1e-6)


def test_bf16_autocast_trains_close_to_fp32(reference):
    got = worker.run_case("finetune-bf16", dtype=torch.float32)
    for step_got, step_want in zip(got["steps"], reference["steps"]):
        assert step_got["task"] == pytest.approx(step_want["task"], rel=0.02)
    moved = max(float((reference["params"][n] - p).abs().max()) for n, p in got["params"].items())
    assert 0 < moved < 0.05  # bf16 rounding, not a different step


@pytest.mark.parametrize("override,message", [
    ("train.precision=fp16", "train.precision"),
    ("train.accumulation_steps=0", "train.accumulation_steps must be > 0"),
    ("train.workers=-1", "train.workers must be >= 0"),
    ("train.accumulation_steps=3", "divisible by train.accumulation_steps"),
])
def test_scale_options_are_validated(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.batch_size=64", override])


def test_grad_checkpointing_of_a_model_without_it_is_a_user_error():
    from continual.backbone import enable_grad_checkpointing
    from continual.errors import UserError

    with pytest.raises(UserError, match="train.grad_checkpointing"):
        enable_grad_checkpointing(torch.nn.Linear(2, 2))
