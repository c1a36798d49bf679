"""Zero-shot CLIP: no training at all; every row of the accuracy matrix equals row 0.

The reference point for transfer and retention: a method that forgets nothing but learns
nothing scores exactly this.
"""

from __future__ import annotations

from typing import Any, Sequence

from continual.clip.heads import ClipClassifier
from strategies import declarations as declared


class ZeroShot(declared.ZeroShot):
    """Zero-shot classification with class-name prompts; ``train`` leaves the model untouched."""

    def __init__(self, *, classifier: ClipClassifier, train: Any, params: Any = None, context: Any = None,
                 plugins: Sequence[Any] = (), device: str = "cpu", eval_batch_size: int = 256,
                 evaluator: Any = None, **kwargs: Any) -> None:
        self.model = classifier
        self.seen_classes: list[int] = []
        self.examples_seen = 0

    def resume_state(self) -> dict:
        return {"seen_classes": self.seen_classes}

    def load_resume_state(self, state: dict) -> None:
        self.seen_classes = list(state["seen_classes"])

    def train(self, experience: Any, **kwargs: Any) -> dict:
        self.seen_classes = sorted(set(self.seen_classes) | set(experience.classes_in_this_experience))
        return {}
