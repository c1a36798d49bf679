"""The optimizer every training loop builds (strategies' sessions and base pre-training alike).

AdamW or SGD with momentum, fused where torch has a kernel for the parameters' device: one
kernel over all parameters instead of a loop of small operations per parameter.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch


def fused_available(params: Sequence[torch.Tensor]) -> bool:
    """Whether torch has fused optimizer kernels (AdamW, SGD: one kernel over all parameters
    instead of a loop of small operations per parameter) for these parameters' devices."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    devices = set(_get_fused_kernels_supported_devices())
    return bool(params) and all(p.device.type in devices and p.is_floating_point() for p in params)


def build_optimizer(params: list[torch.nn.Parameter], cfg: Any, lr: Optional[float] = None) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum) over ``params`` with ``lr`` (default ``cfg.lr``) and
    ``cfg.weight_decay``; fused (``cfg.fused``) where torch has the kernels for the device."""
    lr = cfg.lr if lr is None else lr
    fused = bool(getattr(cfg, "fused", True)) and fused_available(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               fused=fused or None)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay, fused=fused or None)
