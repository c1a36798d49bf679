"""An existing Avalanche class-incremental benchmark, used as a stream.

    from continual.registry import STREAMS
    from streams.avalanche_benchmark import avalanche_stream
    STREAMS.add("my-split", avalanche_stream(benchmark, class_names), "my benchmark")
    # then stream.name=my-split in a config, or continual.run.loop.run(cfg)

Its experiences keep their classes and examples; the images (PIL, or float tensors in [0, 1]
such as ``ToTensor`` gives) go through the CLIP model's own preprocess, and the runner builds
the model inputs and a class-incremental benchmark over them exactly as for our own streams.
Experiences must have disjoint classes (class-incremental), as the accuracy matrix assumes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image

from continual.config.schema import StreamConfig
from continual.errors import ConfigError
from continual.stream import ClassificationStream, ImageEncoder, InputsDataset, Session, TextEncoder


class _Images(torch.utils.data.Dataset):
    """The experiences' examples, concatenated, as ``(PIL image, label)``."""

    def __init__(self, datasets: Sequence[Any]) -> None:
        self.items = [(ds, i) for ds in datasets for i in range(len(ds))]
        self.targets = [int(ds.targets[i]) for ds in datasets for i in range(len(ds))]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        ds, i = self.items[index]
        return as_pil(ds[i][0]), self.targets[index]


def as_pil(x: Any) -> Image.Image:
    if isinstance(x, Image.Image):
        return x.convert("RGB")
    from torchvision.transforms.functional import to_pil_image

    return to_pil_image(torch.as_tensor(x).float().clamp(0, 1)).convert("RGB")


def _key(name: str, images: _Images) -> str:
    """Identifies the content (labels and pixels) for the feature cache."""
    h = hashlib.blake2b(digest_size=12)
    for index in range(len(images)):
        x = images.items[index][0][images.items[index][1]][0]
        h.update(torch.as_tensor(x).numpy().tobytes() if not isinstance(x, Image.Image) else x.tobytes())
    h.update(str(images.targets).encode())
    return f"avalanche-{name}-{len(images)}-{h.hexdigest()}"


def avalanche_stream(benchmark: Any, class_names: Sequence[str], name: str = "avalanche") -> Callable:
    """A stream builder (``(cfg, seed, encode, encode_texts) -> ClassificationStream``) over
    ``benchmark``'s train and test streams; ``class_names[label]`` names each label."""
    train, test = list(benchmark.train_stream), list(benchmark.test_stream)
    classes = [sorted(int(c) for c in e.classes_in_this_experience) for e in train]
    flat = [c for cs in classes for c in cs]
    if len(set(flat)) != len(flat):
        raise ConfigError(f"benchmark '{name}': experiences share classes; only class-incremental benchmarks "
                          "(disjoint classes per experience) can be used as a stream")
    if len(test) != len(train) or any(max(cs) >= len(class_names) for cs in classes):
        raise ConfigError(f"benchmark '{name}': needs one test experience per training experience and a name "
                          f"for every label (got {len(class_names)} names)")

    def build(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None,
              encode_texts: Optional[TextEncoder] = None) -> ClassificationStream:
        sessions = [Session(i + 1, cs, len(tr.dataset), len(te.dataset)) for i, (cs, tr, te) in enumerate(zip(classes, train, test))]
        stream = ClassificationStream(name, list(class_names), sessions, notes=[f"Avalanche benchmark {type(benchmark).__name__}"])
        if encode is not None:
            from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

            datasets = {}
            for split, experiences in (("train", train), ("test", test)):
                images = _Images([e.dataset for e in experiences])
                datasets[split] = InputsDataset(encode(images, _key(f"{name}-{split}", images)), images.targets)
            stream.benchmark = class_incremental_benchmark(datasets, class_order=flat,
                                                           num_classes_per_exp=[len(cs) for cs in classes])
        return stream

    return build
