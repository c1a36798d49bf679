"""Class-incremental streams from any labelled dataset, on Avalanche benchmark objects.

The class order is a seeded permutation (or given), split into sessions of nearly equal size
(the first sessions take one more class when the split is uneven); a seeded per-class sample
bounds the examples. Labels keep their original ids, so ``class_names[label]`` always holds.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import numpy as np

from continual.config import StreamConfig
from continual.errors import ConfigError
from continual.stream import ClassificationStream, ImageEncoder, InputsDataset, Session
from streams.datasets import LabelledImages, digits, fashion_mnist, per_class_subset


def class_order(n_classes: int, given: list[int], seed: int) -> list[int]:
    """``given`` if non-empty (must be a permutation of the labels), else a seeded permutation."""
    if given:
        if sorted(given) != list(range(n_classes)):
            raise ConfigError(f"stream.class_order must be a permutation of 0..{n_classes - 1}, got {list(given)}")
        return [int(c) for c in given]
    return np.random.default_rng(seed).permutation(n_classes).tolist()


def session_sizes(n_classes: int, n_sessions: int) -> list[int]:
    if not 1 <= n_sessions <= n_classes:
        raise ConfigError(f"stream.n_sessions must be between 1 and the number of classes ({n_classes}), got {n_sessions}")
    base, extra = divmod(n_classes, n_sessions)
    return [base + (i < extra) for i in range(n_sessions)]


def content_key(name: str, ds: LabelledImages) -> str:
    """Identifies a dataset's content (images and labels) for the feature cache."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(ds.images).tobytes())
    h.update(np.asarray(ds.targets, dtype=np.int64).tobytes())
    return f"{name}-{len(ds)}-{h.hexdigest()}"


def class_incremental(name: str, train: LabelledImages, test: LabelledImages, cfg: StreamConfig,
                      seed: int, encode: Optional[ImageEncoder] = None) -> ClassificationStream:
    """Split ``train``/``test`` into ``cfg.n_sessions`` sessions of new classes.

    With ``encode`` (dataset, key -> model inputs) the Avalanche benchmark is built over the
    model inputs; without it only the plan is made.
    """
    n_classes = len(train.classes)
    order = class_order(n_classes, list(cfg.class_order), seed)
    sizes = session_sizes(n_classes, cfg.n_sessions)
    train = per_class_subset(train, cfg.train_per_class, seed)
    test = per_class_subset(test, cfg.test_per_class, seed)
    train_counts = np.bincount(train.targets, minlength=n_classes)
    test_counts = np.bincount(test.targets, minlength=n_classes)
    sessions, start = [], 0
    for i, size in enumerate(sizes):
        classes = order[start:start + size]
        start += size
        sessions.append(Session(i + 1, classes, int(train_counts[classes].sum()), int(test_counts[classes].sum())))
    stream = ClassificationStream(name, list(train.classes), sessions,
                                  notes=[f"class order (seed {seed}): {order}"])
    if encode is not None:
        from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark

        datasets = {
            "train": InputsDataset(encode(train, content_key(f"{name}-train", train)), train.targets),
            "test": InputsDataset(encode(test, content_key(f"{name}-test", test)), test.targets),
        }
        stream.benchmark = class_incremental_benchmark(datasets, class_order=order, num_classes_per_exp=sizes)
    return stream


def fashion_mnist_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None) -> ClassificationStream:
    """Fashion-MNIST (10 clothing classes), from the Debian package or stream.root."""
    return class_incremental("fashion-mnist", fashion_mnist(True, cfg.root), fashion_mnist(False, cfg.root), cfg, seed, encode)


def digits_stream(cfg: StreamConfig, seed: int, encode: Optional[ImageEncoder] = None) -> ClassificationStream:
    """scikit-learn's 8x8 digits (10 classes, "zero".."nine"): small and fast, for tests."""
    return class_incremental("digits", digits(True, seed), digits(False, seed), cfg, seed, encode)
