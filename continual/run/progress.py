"""A progress bar per training session (loss and examples/s), as an Avalanche plugin."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

from avalanche.core import SupervisedPlugin
from tqdm import tqdm

from continual.system import distributed


class ProgressBar(SupervisedPlugin, supports_distributed=True):
    """tqdm bar over a session's iterations, showing the running loss and examples/s."""

    def __init__(self, disable: bool = False) -> None:
        super().__init__()
        self.disable = disable
        self.bar: Optional[tqdm] = None
        self.examples = 0
        self.started = 0.0
        self.loss = 0.0

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        index = strategy.experience.current_experience + 1
        self.bar = tqdm(total=len(strategy.dataloader) * strategy.train_epochs, desc=f"session {index}",
                        unit="it", file=sys.stderr, dynamic_ncols=True, leave=True, disable=self.disable,
                        mininterval=0.5)
        self.examples, self.started, self.loss = 0, time.perf_counter(), 0.0

    def after_training_iteration(self, strategy: Any, **kwargs: Any) -> None:
        self.examples += len(strategy.mb_y) * distributed.world_size()  # all processes' examples
        # exponential moving average: a readable loss on a noisy per-batch signal
        loss = strategy.loss.item()
        self.loss = loss if self.bar.n == 0 else 0.9 * self.loss + 0.1 * loss
        rate = self.examples / max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"loss {self.loss:.3f}, {rate:,.0f} ex/s", refresh=False)
        self.bar.update(1)

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
