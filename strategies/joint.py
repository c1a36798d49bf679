"""Joint training on the union of the sessions so far: the upper bound.

At session i the model trains (from where session i-1 left it) on D_1 u ... u D_i with the task
loss over every class seen so far:

    L = CE(s * f_I(x) f_T(prompt(c))^T restricted to C_1 u ... u C_i, y),  (x, y) in D_1 u ... u D_i

so the accuracy matrix fills row by row, and the last session is joint training on everything.
The union is read from the stream itself (the experience's ``origin_stream``) and joined with
Avalanche's ``concat_datasets``, as its ``Cumulative`` template does (the template to use in a
plain Avalanche experiment); unlike ``Cumulative`` it keeps no state, so a run resumed after a
crash trains on the same union.
"""

from __future__ import annotations

from typing import Any

from avalanche.benchmarks.utils import concat_datasets

from strategies import declarations as declared
from strategies.base import ClipStrategy


class Joint(declared.Joint, ClipStrategy):
    """Joint training on the union of the sessions so far (cumulative; the upper bound)."""

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        """D_1 u ... u D_i for session i."""
        stream = self.experience.origin_stream
        self.adapted_dataset = concat_datasets([stream[k].dataset for k in range(self.experience.current_experience + 1)])

    def label_space(self) -> list[int]:
        """All seen classes: the union's labels would fall outside 'current' (train.label_space
        'all' is kept)."""
        if self.train_cfg.label_space == "all":
            return list(range(len(self.model.class_names)))
        return self.seen_classes
