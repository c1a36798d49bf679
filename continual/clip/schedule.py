"""The learning-rate schedule of a session: linear warm-up, then cosine decay to 0 (or constant).

Shared by the strategies (restarted every session) and ``continual pretrain``.
"""

from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine") -> float:
    """Multiplier of the base lr at ``step`` (0-based) of ``total``: linear warm-up over
    ``warmup`` steps ((step + 1) / warmup), then cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_steps(total: int, steps: int, fraction: float) -> int:
    """Warm-up steps of a session of ``total`` steps: ``int(fraction * total)`` when a fraction
    is given (Mod-X: 20% of each phase), else ``steps``."""
    return int(fraction * total) if fraction > 0 else steps
