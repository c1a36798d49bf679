"""What a stream hands the runner: sessions of classes, their data as model inputs, a plan.

Streams (in ``streams/``) build these; the runner consumes them without knowing which stream
made them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch.utils.data import Dataset

# (dataset of (PIL image, ...) items, cache key identifying its content) -> model inputs
ImageEncoder = Callable[[Dataset, str], Any]
# texts -> model text inputs
TextEncoder = Callable[[list], torch.Tensor]


@dataclass
class Session:
    index: int  # 1-based
    classes: list[int]
    n_train: int
    n_test: int


@dataclass
class ClassificationStream:
    """A class-incremental stream: ``benchmark`` is an Avalanche scenario over model inputs
    (None when only the plan was built, e.g. for ``--dry-run``)."""

    name: str
    class_names: list[str]
    sessions: list[Session]
    benchmark: Optional[Any] = None
    notes: list[str] = field(default_factory=list)

    def plan(self) -> list[str]:
        lines = [f"stream {self.name}: {len(self.sessions)} sessions, {len(self.class_names)} classes"]
        lines += [f"  {note}" for note in self.notes]
        for s in self.sessions:
            names = ", ".join(self.class_names[c] for c in s.classes)
            lines.append(f"  session {s.index}: {len(s.classes)} classes [{names}]: {s.n_train} train / {s.n_test} test examples")
        return lines


@dataclass
class ControlSet:
    """Image-caption pairs never trained on; evaluated by retrieval after every session."""

    name: str
    image_inputs: Any
    text_inputs: torch.Tensor
    caption_image: torch.Tensor  # caption c describes image caption_image[c]
    keys: list[str]  # stable ids of the images, to check they were held out of the base

    def plan(self) -> list[str]:
        return [f"control {self.name}: {len(self.keys)} images, {len(self.caption_image)} captions (retrieval R@1/5/10)"]


class InputsDataset(Dataset):
    """Model inputs with integer labels; ``targets`` is what Avalanche's generators read."""

    def __init__(self, inputs: Any, targets: list[int]) -> None:
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
        self.inputs, self.targets = inputs, list(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.inputs[i], self.targets[i]
