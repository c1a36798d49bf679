"""Images read from files (image folders, manifests, FSCIL datasets), and what to do with the
ones that cannot be read; your own image folders as labelled datasets.

The check decodes every image once before anything trains: ``on_corrupt="error"`` stops with
one line naming the first bad file; ``"skip"`` leaves the bad ones out and reports how many.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from continual.errors import UserError
from streams.datasets import DataNotFoundError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class CorruptImageError(UserError):
    """An image file cannot be decoded (and ``stream.on_corrupt`` is ``error``)."""


def load_image(path: str | Path) -> Image.Image:
    """The file as a PIL RGB image, fully decoded (so truncation shows here, not later)."""
    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


@dataclass
class CheckedFiles:
    """The readable files of a list (their positions in it) and the skipped ones."""

    kept: list[int]
    skipped: list[str] = field(default_factory=list)

    def note(self) -> list[str]:
        if not self.skipped:
            return []
        shown = ", ".join(self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
        return [f"skipped {len(self.skipped)} unreadable images (stream.on_corrupt=skip): {shown}"]


def check_images(paths: Sequence[str | Path], on_corrupt: str = "error") -> CheckedFiles:
    """Decode every file; keep the readable ones, or raise on the first bad one."""
    kept, skipped = [], []
    for i, path in enumerate(paths):
        try:
            load_image(path)
        except FileNotFoundError:
            raise CorruptImageError(f"image file not found: {path} (fix the path in the manifest or folder)") from None
        except Exception as exc:  # PIL raises several types for undecodable data
            if on_corrupt != "skip":
                raise CorruptImageError(
                    f"cannot read image {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}); "
                    "fix or remove it, or set stream.on_corrupt=skip to leave unreadable images out") from None
            skipped.append(str(path))
            continue
        kept.append(i)
    return CheckedFiles(kept, skipped)


class ImageFiles(torch.utils.data.Dataset):
    """Image files with integer labels; items are ``(PIL RGB image, label)``.

    ``targets`` is a plain attribute (Avalanche's generators read it); ``ids`` names each item
    (its path relative to the data root), which official split lists refer to.
    """

    def __init__(self, paths: Sequence[str | Path], targets: Sequence[int], classes: Sequence[str],
                 ids: Sequence[str] | None = None, transform: Callable[[Image.Image], Any] | None = None) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [str(p) for p in paths]
        self.targets: list[int] = [int(t) for t in targets]
        self.classes: list[str] = list(classes)
        self.ids: list[str] = list(ids) if ids is not None else list(self.paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = load_image(self.paths[index])
        return (self.transform(image) if self.transform else image), self.targets[index]

    def subset(self, indices: Sequence[int]) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in indices], [self.targets[i] for i in indices], self.classes,
                          [self.ids[i] for i in indices], self.transform)

    def checked(self, on_corrupt: str) -> tuple["ImageFiles", list[str]]:
        """The readable items (see :func:`check_images`) and the plan notes about skipped ones."""
        result = check_images(self.paths, on_corrupt)
        return (self if not result.skipped else self.subset(result.kept)), result.note()

    def fingerprint(self) -> str:
        """Identifies the content (ids, labels, file sizes and modification times) for the
        feature cache without reading the images."""
        h = hashlib.blake2b(digest_size=12)
        for item, path, label in zip(self.ids, self.paths, self.targets):
            st = os.stat(path)
            h.update(f"{item}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


# --- your own images: a folder per class ------------------------------------------------------
FOLDER_LAYOUT = "one sub-folder of images per class (ROOT/<class>/*.jpg), or ROOT/train/<class> and ROOT/test/<class>"


def image_folder(root: str | Path, test_fraction: float, seed: int) -> tuple[ImageFiles, ImageFiles]:
    """Train and test sets from ``root``: ROOT/train/<class> (+ ROOT/test/<class>), else ROOT/<class>.

    Without a test folder a seeded, stratified ``test_fraction`` of each class is held out for
    testing. Classes are the folder names in sorted order (underscores read as spaces); item ids
    are paths relative to ``root`` (split lists refer to them). Nothing is decoded here.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder not found: {root} (set stream.root to a folder with {FOLDER_LAYOUT})")
    top = root / "train" if (root / "train").is_dir() else root
    folders = _class_folders(top)
    names = [f.name.replace("_", " ") for f in folders]
    train = _files(root, folders, names)
    if (root / "test").is_dir() and top != root:
        tests = {f.name: f for f in _class_folders(root / "test")}
        unknown = sorted(set(tests) - {f.name for f in folders})
        if unknown:
            raise DataNotFoundError(f"{root / 'test' / unknown[0]} has no training folder {top / unknown[0]}; "
                                    "every test class needs one")
        absent = [f.name for f in folders if f.name not in tests]
        if absent:
            raise DataNotFoundError(f"class '{absent[0]}' has no test folder {root / 'test' / absent[0]}; add its "
                                    "test images, or remove ROOT/test to hold out stream.test_fraction of each class")
        return train, _files(root, [tests[f.name] for f in folders], names)
    return _stratified_split(train, test_fraction, seed)


def _class_folders(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataNotFoundError(f"no class folders in {folder}: give {FOLDER_LAYOUT}")
    return found


def _files(root: Path, folders: Sequence[Path], names: list[str]) -> ImageFiles:
    paths, targets = [], []
    for label, folder in enumerate(folders):
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not p.name.startswith("."))
        if not found:
            raise DataNotFoundError(f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}); "
                                    "add some or remove the folder")
        paths += found
        targets += [label] * len(found)
    return ImageFiles(paths, targets, names, ids=[p.relative_to(root).as_posix() for p in paths])


def _stratified_split(ds: ImageFiles, test_fraction: float, seed: int) -> tuple[ImageFiles, ImageFiles]:
    """Hold out round(test_fraction * n) images of each class (at least one, and one kept for training)."""
    rng = np.random.default_rng(seed)
    targets = np.asarray(ds.targets)
    test: list[int] = []
    for label, name in enumerate(ds.classes):
        idx = np.flatnonzero(targets == label)
        if len(idx) < 2:
            raise DataNotFoundError(f"class '{name}' has only {len(idx)} image; a class needs at least 2 "
                                    "(one to train on, one to test)")
        n_test = min(len(idx) - 1, max(1, round(test_fraction * len(idx))))
        test += rng.choice(idx, size=n_test, replace=False).tolist()
    held = set(test)
    return ds.subset([i for i in range(len(ds)) if i not in held]), ds.subset(sorted(held))
