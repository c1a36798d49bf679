"""The fused optimizer kernels (on by default) take the same steps as torch's default loop, up to
float32 rounding; ``train.fused=false`` keeps the loop; devices without fused kernels fall back."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from numerics import adamw_rounding, sgd_momentum_rounding
from continual.config.schema import TrainConfig
from continual.config.load import load_config
from continual.errors import ConfigError
from continual.clip.optimizer import build_optimizer, fused_available

STEPS, LR, WEIGHT_DECAY, MOMENTUM = 6, 1e-2, 0.1, 0.9
GRAD_LOW, GRAD_HIGH = 0.5, 1.5  # |g| within these: Adam's denominator stays away from 0


def gradients(shapes: list[tuple[int, ...]]) -> list[list[torch.Tensor]]:
    """STEPS gradients per parameter, random signs, magnitudes in [GRAD_LOW, GRAD_HIGH]."""
    g = torch.Generator().manual_seed(0)
    def one(shape):
        size = GRAD_LOW + (GRAD_HIGH - GRAD_LOW) * torch.rand(shape, generator=g)
        return torch.where(torch.rand(shape, generator=g) < 0.5, -size, size)
    return [[one(s) for s in shapes] for _ in range(STEPS)]


def train(kind: str, fused: bool, dtype: torch.dtype, start: list[torch.Tensor],
          grads: list[list[torch.Tensor]]) -> tuple[list[torch.Tensor], torch.optim.Optimizer]:
    cfg = OmegaConf.structured(TrainConfig(optimizer=kind, lr=LR, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM,
                                           fused=fused))
    params = [torch.nn.Parameter(p.to(dtype, copy=True)) for p in start]
    optimizer = build_optimizer(params, cfg)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.to(dtype)
        optimizer.step()
    return [p.detach().to(torch.float64) for p in params], optimizer


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_fused_steps_agree_with_the_default_loop(kind):
    shapes = [(64, 33), (257,), (3, 5, 7)]
    start = [torch.empty(s).uniform_(-1, 1, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
    grads = gradients(shapes)
    exact, _ = train(kind, False, torch.float64, start, grads)  # float64: the exact steps, to float32's eyes
    fused, fused_opt = train(kind, True, torch.float32, start, grads)
    loop, loop_opt = train(kind, False, torch.float32, start, grads)
    assert fused_opt.defaults["fused"] and not loop_opt.defaults["fused"]
    magnitude = max(float(p.abs().max()) for p in start + exact)
    if kind == "adamw":
        bound = adamw_rounding(STEPS, GRAD_LOW, GRAD_HIGH, LR, magnitude)
    else:
        bound = sgd_momentum_rounding(STEPS, GRAD_HIGH, LR, MOMENTUM, WEIGHT_DECAY, magnitude)
    moved = max(float((e - s).abs().max()) for e, s in zip(exact, start))
    assert moved > 1000 * bound  # the steps move the parameters far more than rounding can
    for got in (fused, loop):  # each within float32 rounding of the exact steps, so of each other
        assert max(float((g - e).abs().max()) for g, e in zip(got, exact)) <= bound
    assert max(float((f - l).abs().max()) for f, l in zip(fused, loop)) <= 2 * bound


def test_fused_is_the_default_and_falls_back_where_torch_has_no_kernel():
    cpu = [torch.nn.Parameter(torch.zeros(3))]
    assert build_optimizer(cpu, OmegaConf.structured(TrainConfig())).defaults["fused"]
    meta = [torch.nn.Parameter(torch.zeros(3, device="meta"))]  # no fused kernels on the meta device
    assert not fused_available(meta)
    assert not build_optimizer(meta, OmegaConf.structured(TrainConfig())).defaults["fused"]


def test_train_fused_must_be_a_boolean():
    with pytest.raises(ConfigError, match="train.fused") as err:
        load_config(None, ["train.fused=sometimes"])
    assert "\n" not in str(err.value)
