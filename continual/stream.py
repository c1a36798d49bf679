"""What a stream hands the runner: sessions of classes, their data as model inputs, a plan.

Streams (in ``streams/``) build these; the runner consumes them without knowing which stream
made them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import torch
from torch.utils.data import Dataset, Subset

# (dataset of (PIL image, ...) items, cache key identifying its content) -> model inputs; the
# runner's also takes ``train=True``: training images, through the training transform
# (stream.augment) where the inputs are not cached trunk features
ImageEncoder = Callable[[Dataset, str], Any]


def encode_images(encode: ImageEncoder, dataset: Dataset, key: str, train: bool = False) -> Any:
    """``encode(dataset, key)``, asking for the training transform when ``train`` (encoders
    that take no ``train`` argument are called as they are)."""
    if train and "train" in inspect.signature(encode).parameters:
        return encode(dataset, key, train=True)
    return encode(dataset, key)
# texts -> model text inputs
TextEncoder = Callable[[list], torch.Tensor]


@dataclass
class Session:
    index: int  # 1-based
    classes: list[int]  # labels trained in this session (image-text streams: caption ids)
    n_train: int
    n_test: int
    name: str = ""  # e.g. the dataset (MTIL) or the group (image-text) of the session
    shots: int = 0  # training examples per class when fixed (few-shot sessions), else 0

    def plan_line(self, class_names: list[str], limit: int = 12) -> str:
        title = f"session {self.index}" + (f" ({self.name})" if self.name else "")
        shots = f", {self.shots} shots each" if self.shots else ""
        names = ", ".join(class_names[c] for c in self.classes[:limit])
        names += f", ... (+{len(self.classes) - limit})" if len(self.classes) > limit else ""
        return f"{title}: {len(self.classes)} classes{shots} [{names}]: {self.n_train} train / {self.n_test} test examples"


@dataclass
class ClassificationStream:
    """A class-incremental stream: ``benchmark`` is an Avalanche scenario over model inputs
    (None when only the plan was built, e.g. for ``--dry-run``)."""

    name: str
    class_names: list[str]
    sessions: list[Session]
    benchmark: Optional[Any] = None
    notes: list[str] = field(default_factory=list)
    # Prompt templates per class (e.g. each MTIL dataset its own); None = model.templates.
    templates: Optional[list[list[str]]] = None
    # Set when the plan was made without the data (nominal counts): the one line a real run stops with.
    data_missing: Optional[str] = None

    kind = "classification"

    def plan(self) -> list[str]:
        lines = [f"stream {self.name}: {len(self.sessions)} sessions, {len(self.class_names)} classes"]
        lines += [f"  {note}" for note in self.notes]
        lines += [f"  {s.plan_line(self.class_names)}" for s in self.sessions]
        return lines


@dataclass
class PairSet:
    """Image-caption pairs scored by retrieval: a session's test pairs, or control data never
    trained on (evaluated after every session)."""

    name: str
    image_inputs: Any
    text_inputs: torch.Tensor
    caption_image: torch.Tensor  # caption c describes image caption_image[c]
    keys: list[str]  # stable ids of the images (control: checked to be held out of the base)
    concepts: list[str] = field(default_factory=list)  # per image, when known (overlap checks)

    def plan(self) -> list[str]:
        return [f"control {self.name}: {len(self.keys)} images, {len(self.caption_image)} captions (retrieval R@1/5/10)"]


ControlSet = PairSet



class ReferenceSource(Protocol):
    """Reference data a method reads beside the sessions (ZSCL's images and sentences), as a
    stream package provides it under a name in :data:`continual.registry.REFERENCES`: the
    arguments are the method's options (``images``: a folder, a manifest or ``torchvision:NAME``;
    ``sentences``: a text or CSV/TSV file; ``column`` of it; ``root`` for torchvision)."""

    def check_options(self, images: Optional[str], sentences: Optional[str], column: str, ref_texts: str) -> None:
        """Raise a one-line ConfigError for options that cannot work together (reads no data)."""

    def complete(self, images: Optional[str], sentences: Optional[str]) -> bool:
        """Whether the options supply both sides (images, and sentences or a manifest's captions)."""

    def missing(self, images: Optional[str], sentences: Optional[str], root: Optional[str] = None) -> Optional[str]:
        """The one line a run stops with when the data is absent (None if present)."""

    def describe(self, images: Optional[str], sentences: Optional[str]) -> str:
        """One line for the plan: where the images and sentences come from."""

    def reference_set(self, images: Optional[str], sentences: Optional[str], column: str, root: Optional[str],
                      encode_images: ImageEncoder, encode_texts: TextEncoder,
                      default: Optional[Callable[[], ControlSet]] = None) -> ControlSet:
        """The data as model inputs; ``default`` supplies the side the options leave out."""


@dataclass
class PairStream:
    """An image-text stream: sessions of (image, caption) pairs.

    Every training pair is its own "class" (caption id = its index in ``class_names``, the
    training captions), so the Avalanche benchmark's experiences are the sessions and a
    session's ``classes`` are its caption ids. ``tests[j]`` holds session j's test pairs (several
    captions per image allowed), scored by retrieval. ``benchmark``/``tests`` are None for a plan.
    """

    name: str
    class_names: list[str]
    sessions: list[Session]
    benchmark: Optional[Any] = None
    tests: Optional[list[PairSet]] = None
    notes: list[str] = field(default_factory=list)
    concepts: list[str] = field(default_factory=list)  # of the training pairs (control overlap)
    templates: Optional[list[list[str]]] = None  # captions are used as they are
    data_missing: Optional[str] = None  # as for ClassificationStream
    train_unit: str = "pairs"  # what a training example is: "pairs", or "images" (a caption drawn per visit)
    caption_keys: list[str] = field(default_factory=list)  # the image of each training caption (validation split by image)

    kind = "pairs"

    def plan(self) -> list[str]:
        n_train = sum(s.n_train for s in self.sessions)
        lines = [f"stream {self.name}: {len(self.sessions)} sessions of image-text pairs, {n_train} training {self.train_unit}"]
        lines += [f"  {note}" for note in self.notes]
        for s in self.sessions:
            title = f"session {s.index}" + (f" ({s.name})" if s.name else "")
            lines.append(f"  {title}: {s.n_train} train {self.train_unit} / {s.n_test} test pairs")
        return lines


def take(inputs: Any, index: Sequence[int]) -> Any:
    """Rows ``index`` of model inputs: a tensor's rows, or a lazy dataset's items (a Subset)."""
    if torch.is_tensor(inputs):
        return inputs[torch.as_tensor(list(index), dtype=torch.long)]
    return Subset(inputs, list(index))


class CaptionedImages(Dataset):
    """Images with several captions, one training example per image: item i is (the image's
    input, one of ``captions[i]`` drawn uniformly at every visit with torch's generator, so the
    run's seed fixes the draws; DataLoader workers get seeded generators of their own).

    ``targets`` (what Avalanche reads to cut experiences) is each image's first caption id.
    """

    def __init__(self, image_inputs: Any, captions: Sequence[Sequence[int]]) -> None:
        if len(image_inputs) != len(captions) or not all(captions):
            raise ValueError(f"{len(image_inputs)} images need one non-empty caption list each, got {len(captions)}")
        self.image_inputs, self.captions = image_inputs, [list(c) for c in captions]
        self.targets = [c[0] for c in self.captions]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        options = self.captions[i]
        caption = options[int(torch.randint(len(options), ()))] if len(options) > 1 else options[0]
        return self.image_inputs[i], caption


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
