"""Image-caption manifests: your own pairs, or the standard Karpathy splits of COCO / Flickr30K.

Formats (one row per (image, caption); an image with several captions has several rows):
- ``.csv`` with a header: ``image``, ``caption``, optional ``group`` and ``split`` columns;
- ``.jsonl``: one object per line with the same keys;
- ``.json`` in Karpathy's format (``dataset_coco.json``, ``dataset_flickr30k.json``):
  ``{"images": [{"filepath", "filename", "split", "sentences": [{"raw"}]}]}``; ``test`` images
  are test data, and the splits in ``train_splits`` training data (default ``train`` and
  ``restval``, the usual practice; Mod-X also trains Flickr30K's ``val``, its COCO model COCO's
  ``train`` alone); the other images are left out.
Image paths are relative to the images root (``stream.root``, default: the manifest's folder).
Every image is its own concept; the source is the manifest's file name.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional, Sequence

from continual.errors import ConfigError
from streams.captions import Pair
from streams.datasets import DataNotFoundError

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
KARPATHY_TRAIN = ("train", "restval")  # the splits trained on by default
KARPATHY_URL = "https://cs.stanford.edu/people/karpathy/deepimagesent/ (caption_datasets.zip)"

# Nominal sizes of the standard manifests, for plans made while the data is absent: images per
# Karpathy split, and captions per image.
NOMINAL = {"dataset_coco.json": ({"train": 82_783, "restval": 30_504, "val": 5_000, "test": 5_000}, 5),
           "dataset_flickr30k.json": ({"train": 29_000, "val": 1_014, "test": 1_000}, 5)}


def nominal_images(name: str, splits: Sequence[str]) -> int:
    """Images of the standard manifest ``name`` in ``splits``, from its published sizes."""
    return sum(NOMINAL[name][0].get(split, 0) for split in splits)
IMAGES_HINT = {"dataset_coco.json": "COCO 2014 train/val images (cocodataset.org) under the images root "
                                     "(stream.root, else the manifest's folder)",
               "dataset_flickr30k.json": "Flickr30K images (shannon.cs.illinois.edu/DenotationGraph) under the images "
                                         "root (stream.root, else the manifest's folder)"}


def is_manifest(source: str) -> bool:
    return source.lower().endswith(MANIFEST_SUFFIXES)


def missing_manifest(path: Path) -> DataNotFoundError:
    how = (f"get Karpathy's splits from {KARPATHY_URL} and the {IMAGES_HINT[path.name]}" if path.name in NOMINAL
           else "write a CSV (image,caption[,group,split]) or JSONL manifest, or fix stream.sources")
    return DataNotFoundError(f"manifest not found: {path}: {how}")


def read_manifest(path: str | Path, images_root: Optional[str] = None,
                  train_splits: Sequence[str] = KARPATHY_TRAIN) -> list[Pair]:
    """The manifest's pairs, in file order (Karpathy files: ``train_splits`` and ``test``)."""
    path = Path(path)
    if not path.is_file():
        raise missing_manifest(path)
    root = Path(images_root) if images_root else path.parent
    if path.suffix.lower() == ".json":
        return _karpathy(path, root, train_splits)
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    pairs = []
    for n, row in enumerate(rows, start=2 if path.suffix.lower() == ".csv" else 1):
        image, caption = (row.get("image") or "").strip(), " ".join((row.get("caption") or "").split())
        if not image or not caption:
            raise ConfigError(f"{path}:{n}: every row needs an 'image' and a 'caption' (got {row})")
        split = (row.get("split") or "").strip().lower()
        if split not in ("", "train", "test"):
            raise ConfigError(f"{path}:{n}: split must be train, test or empty, got '{split}'")
        file = Path(image) if Path(image).is_absolute() else root / image
        pairs.append(Pair(source=path.name, key=str(file), caption=caption, concept=str(file),
                          group=str(row.get("group") or "").strip(), ref=str(file), split=split))
    if not pairs:
        raise ConfigError(f"{path}: the manifest has no rows")
    return pairs


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise ConfigError(f"{path}: the header lacks the column(s) {', '.join(sorted(missing))}; "
                              f"expected image,caption[,group,split], found {','.join(reader.fieldnames or [])}")
        return list(reader)


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg}); each line must be one object") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{n}: each line must be a JSON object with image and caption")
        rows.append(row)
    return rows


def _karpathy(path: Path, root: Path, train_splits: Sequence[str]) -> list[Pair]:
    try:
        images = json.loads(path.read_text(encoding="utf-8"))["images"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a Karpathy-split file (expected {{\"images\": [...]}} with sentences)") from None
    pairs = []
    for item in images:
        split = item.get("split", "")
        if split != "test" and split not in train_splits:
            continue
        split = "test" if split == "test" else "train"
        file = root / item.get("filepath", "") / item["filename"]
        for sentence in item["sentences"]:
            caption = " ".join(sentence["raw"].split())
            pairs.append(Pair(source=path.name, key=str(file), caption=caption, concept=str(file),
                              group="", ref=str(file), split=split))
    return pairs
