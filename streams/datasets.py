"""Labelled image datasets that work offline: Fashion-MNIST and scikit-learn's digits.

Every dataset returns PIL RGB images; the model's own preprocess is applied later as
``transform``. Where the data is missing a ``DataNotFoundError`` names the path and the
install step in one line.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from continual.errors import UserError

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # torchvision's names, so the text encoder sees the same words everywhere
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DEFAULT_DOWNLOAD_ROOT = Path.home() / ".cache" / "continual" / "data"  # beside the feature cache


class DataNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are absent; the message is one line naming the path and the install step."""


class LabelledImages(torch.utils.data.Dataset):
    """Images in memory with integer labels and class names.

    ``targets`` is a plain attribute because Avalanche's ``class_incremental_benchmark`` reads it.
    """

    def __init__(
        self,
        images: np.ndarray,
        targets: Sequence[int],
        classes: Sequence[str],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        """Hold ``images`` (uint8, N x H x W grey or N x H x W x 3 RGB) with one label each."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be uint8 N x H x W (x 3), got {images.dtype} {images.shape}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """Return ``(image, label)``: the PIL RGB image after ``transform``."""
        image = Image.fromarray(self.images[index]).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def subset(self, indices: Sequence[int]) -> LabelledImages:
        """A new dataset with the given items, in the given order, sharing classes and transform."""
        indices = np.asarray(indices, dtype=np.int64)
        return LabelledImages(
            self.images[indices], [self.targets[i] for i in indices], self.classes, self.transform
        )


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed or not) of unsigned bytes into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:3] != b"\x00\x00\x08":  # two zero bytes, then type 0x08 = unsigned byte
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    """The IDX file ``stem`` in ``folder``, compressed or not, if present."""
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist(train: bool, root: str | os.PathLike | None = None, download: bool = False) -> LabelledImages:
    """Fashion-MNIST (60,000 train / 10,000 test, 28x28 grey, 10 named classes).

    Looks in ``root/FashionMNIST/raw`` and ``root`` when ``root`` is given, else in the Debian
    package's folder; failing that, downloads with torchvision when ``download`` is true.
    """
    prefix = "train" if train else "t10k"
    folders = [Path(root) / "FashionMNIST" / "raw", Path(root)] if root is not None else [FASHION_MNIST_SYSTEM_DIR]
    for folder in folders:
        images_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        labels_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if images_path and labels_path:
            return LabelledImages(_read_idx(images_path), _read_idx(labels_path).tolist(), FASHION_MNIST_CLASSES)

    if download:
        from torchvision.datasets import FashionMNIST  # imported late: only this path needs it

        ds = FashionMNIST(str(root or DEFAULT_DOWNLOAD_ROOT), train=train, download=True)
        return LabelledImages(ds.data.numpy(), ds.targets.tolist(), FASHION_MNIST_CLASSES)

    raise DataNotFoundError(
        f"Fashion-MNIST {prefix} IDX files not found in {' or '.join(str(f) for f in folders)}: "
        "apt-get install dataset-fashion-mnist, or set stream.root to a folder with FashionMNIST/raw"
        " (or download with internet)"
    )


def digits(train: bool, seed: int = 0, test_fraction: float = 0.3) -> LabelledImages:
    """scikit-learn's 1,797 handwritten digits (8x8), split stratified and seeded into train/test.

    Class names are the digit words ("zero".."nine") so a text encoder can read them.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # values 0-16 -> 0-255
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=test_fraction, stratify=bunch.target, random_state=seed
    )
    indices = np.sort(train_idx if train else test_idx)  # stable order; the split itself is seeded
    return LabelledImages(images[indices], bunch.target[indices].tolist(), DIGIT_CLASSES)


def per_class_subset(ds: LabelledImages, n_per_class: int, seed: int) -> LabelledImages:
    """A seeded sample of at most ``n_per_class`` items of each class (0 = all), in the original order."""
    if n_per_class <= 0:
        return ds.subset(range(len(ds)))
    rng = np.random.default_rng(seed)
    targets = np.asarray(ds.targets)
    chosen = []
    for label in np.unique(targets):  # sorted, so the draws are the same on every run
        idx = np.flatnonzero(targets == label)
        if len(idx) > n_per_class:
            idx = rng.choice(idx, size=n_per_class, replace=False)
        chosen.append(idx)
    return ds.subset(np.sort(np.concatenate(chosen)) if chosen else [])


def sample_per_class(ds: Any, limits: dict[int, int], seed: int) -> Any:
    """A seeded sample of at most ``limits[label]`` items of each class in ``limits`` (0 = all of
    it); classes not in ``limits`` are left out. Items keep their original order.

    Works on any dataset with ``targets`` and ``subset`` (:class:`LabelledImages`, image files).
    With the same limit for every class it draws exactly what :func:`per_class_subset` draws.
    """
    rng = np.random.default_rng(seed)
    targets = np.asarray(ds.targets)
    chosen = []
    for label in np.unique(targets):  # sorted, so the draws are the same on every run
        if int(label) not in limits:
            continue
        idx = np.flatnonzero(targets == label)
        limit = limits[int(label)]
        if 0 < limit < len(idx):
            idx = rng.choice(idx, size=limit, replace=False)
        chosen.append(idx)
    return ds.subset(np.sort(np.concatenate(chosen)).tolist() if chosen else [])
