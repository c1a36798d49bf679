"""The options users expect at scale, in one process: gradient checkpointing changes nothing but
memory, bf16 autocast trains, DataLoader workers feed the same steps, gradient accumulation
is exact for per-example losses (its DDP form is in test_distributed.py)."""

from __future__ import annotations

import math

import pytest
import torch

import _ddp_worker as worker
from numerics import eps, sum_rounding
from continual.config.load import load_config
from continual.errors import ConfigError


@pytest.fixture(scope="module")
def reference():
    return worker.run_case("finetune", dtype=torch.float32)


def update_size(run: dict) -> float:
    """How far the two steps moved the parameters (largest entry)."""
    return max(float((run["params"][n] - run["start"][n]).abs().max()) for n in run["params"])


def assert_same_update(got: dict, want: dict) -> None:
    """The same two steps up to float32 rounding: the options regroup the same sums (micro-batches,
    recomputed activations, batches built in another process and placed elsewhere in memory), and a
    sum of the model's widest inner products (64 terms) is off by at most 64 eps of its terms; two
    steps, each a forward and a backward pass, with momentum carrying the first into the second:
    8 such errors, relative to how far the parameters moved."""
    tolerance = 8 * sum_rounding(64, update_size(want))
    for name, value in want["params"].items():
        torch.testing.assert_close(got["params"][name], value, rtol=0, atol=tolerance)


def test_gradient_checkpointing_gives_the_same_step(reference):
    assert_same_update(worker.run_case("finetune-checkpointing", dtype=torch.float32), reference)


def test_workers_give_the_same_step(reference):
    assert_same_update(worker.run_case("finetune-workers", dtype=torch.float32), reference)


def test_accumulation_gives_the_same_step(reference):
    assert_same_update(worker.run_case("finetune-accumulate", dtype=torch.float32), reference)


def test_bf16_autocast_trains_close_to_fp32(reference):
    got = worker.run_case("finetune-bf16", dtype=torch.float32)
    bf16 = eps(torch.bfloat16)  # 2^-7: bf16 keeps 8 significant bits
    for step_got, step_want in zip(got["steps"], reference["steps"]):
        assert step_got["task"] == pytest.approx(step_want["task"], rel=2.5 * bf16)  # a few bf16 ulps of the loss
    moved = max(float((reference["params"][n] - p).abs().max()) for n, p in got["params"].items())
    # bf16 rounding, not a different step: products off by 2^-8 each, accumulated over 64-wide sums
    # (sqrt(64) for independent roundings), in 4 passes: within a quarter of the update
    assert 0 < moved < 4 * math.sqrt(64) * bf16 * update_size(reference)


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
    from continual.clip.backbone import enable_grad_checkpointing
    from continual.errors import UserError

    with pytest.raises(UserError, match="train.grad_checkpointing"):
        enable_grad_checkpointing(torch.nn.Linear(2, 2))
