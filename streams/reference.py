"""Reference data for ZSCL's distillation: images and sentences that are neither a session's nor
the control's.

ZSCL distils the initial model on ImageNet training images (test preprocessing) scored against
Conceptual Captions validation captions. Here either side is configurable (``strategy.*``):

- images (``ref_images``): a folder (every image below it, sorted by path; an ImageNet
  ``train/`` folder of class folders works as it is), a manifest (``.csv``, ``.jsonl``,
  Karpathy ``.json``: its training images) or ``torchvision:NAME``, a torchvision dataset read
  from ``ref_root`` (its training split, e.g. ``torchvision:ImageNet``);
- sentences (``ref_sentences``): a text file, one sentence per line, or a ``.csv`` / ``.tsv``
  file's column ``ref_column`` (a header name, or a 0-based index for a file without a header:
  Conceptual Captions' ``Validation_GCC-1.1.0-Validation.tsv`` is "caption<TAB>url" lines, column
  ``0``); a manifest given as ``ref_images`` supplies its own captions otherwise.

Without either, the reference pairs are the run's default: the complement of the control set
(the offline emoji / Tux Paint pairs the base trained on).

This module is the ``files`` reference set (:data:`continual.registry.REFERENCES`, registered in
``streams/__init__.py``; it provides :class:`continual.stream.ReferenceSource`): a strategy
looks it up by name instead of importing it.
"""

from __future__ import annotations

import csv
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from continual.errors import ConfigError
from continual.stream import ControlSet, ImageEncoder, TextEncoder
from streams.captions import PairDataset
from streams.datasets import DataNotFoundError
from streams.files import IMAGE_SUFFIXES, ImageFiles
from streams.manifests import is_manifest, read_manifest

TORCHVISION = "torchvision:"
TEXT_SUFFIXES = (".txt", ".csv", ".tsv")


def describe(images: Optional[str], sentences: Optional[str]) -> str:
    """One line: where the reference images and sentences come from."""
    return (f"reference images: {images or 'the reference pairs (the control set complement)'}; "
            f"sentences: {sentences or ('the manifest captions' if images and is_manifest(images) else 'the reference pairs captions')}")


def complete(images: Optional[str], sentences: Optional[str]) -> bool:
    """The configured data supplies both sides (images, and sentences or a manifest's captions)."""
    return bool(images and (sentences or is_manifest(images)))


def missing(images: Optional[str], sentences: Optional[str], root: Optional[str] = None) -> Optional[str]:
    """The one line a run stops with when configured reference data is absent (None if present)."""
    if images:
        if images.startswith(TORCHVISION):
            folder = Path(root) if root else None
            if folder is None or not folder.is_dir():
                return (f"strategy.ref_images={images} needs strategy.ref_root, the folder torchvision reads "
                        f"{images[len(TORCHVISION):]} from (not found: {folder})")
        elif not Path(images).exists():
            return (f"reference images not found: {images} (strategy.ref_images: a folder of images, a manifest, or "
                    "torchvision:NAME with strategy.ref_root; ZSCL uses ImageNet's training images)")
    if sentences and not Path(sentences).is_file():
        return (f"reference sentences not found: {sentences} (strategy.ref_sentences: a text file, one sentence per "
                "line, or a CSV/TSV column; ZSCL uses Conceptual Captions' validation captions)")
    return None


def check_options(images: Optional[str], sentences: Optional[str], column: str, ref_texts: str) -> None:
    """One-line ConfigErrors for options that cannot work together (before any data is read)."""
    if images and not images.startswith(TORCHVISION) and not is_manifest(images) and Path(images).suffix:
        raise ConfigError(f"strategy.ref_images: '{images}' is neither a folder, a manifest (.csv, .jsonl, .json) "
                          "nor torchvision:NAME")
    if images and not sentences and not is_manifest(images):
        raise ConfigError("strategy.ref_images names images without captions: give strategy.ref_sentences "
                          "(a text file or a CSV/TSV column of sentences)")
    if sentences and Path(sentences).suffix.lower() not in TEXT_SUFFIXES:
        raise ConfigError(f"strategy.ref_sentences: '{sentences}' must be a .txt, .csv or .tsv file")
    if sentences and ref_texts == "batch":
        raise ConfigError("strategy.ref_texts=batch needs each reference image's own captions; with "
                          "strategy.ref_sentences use ref_texts=all")
    if not column:
        raise ConfigError("strategy.ref_column must name a column (a header name or a 0-based index)")


def read_sentences(path: str | Path, column: str = "caption") -> list[str]:
    """Sentences of a text file (one per line) or of a CSV/TSV column; blank ones dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(missing(None, str(path)))
    if path.suffix.lower() == ".txt":
        rows = path.read_text(encoding="utf-8").splitlines()
    else:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            table = list(reader)
        if column.isdigit():
            index = int(column)
        else:
            header = table[0] if table else []
            if column not in header:
                raise ConfigError(f"{path}: no column '{column}' in its header ({', '.join(header)}); set "
                                  "strategy.ref_column to a header name, or to a 0-based index for a file without one")
            index, table = header.index(column), table[1:]
        bad = next((n for n, row in enumerate(table, 1) if len(row) <= index), None)
        if bad is not None:
            raise ConfigError(f"{path}: row {bad} has no column {index} (strategy.ref_column)")
        rows = [row[index] for row in table]
    sentences = [" ".join(r.split()) for r in rows if r.strip()]
    if not sentences:
        raise ConfigError(f"{path}: no sentences")
    return sentences


def _image_source(images: str, root: Optional[str]) -> tuple[Any, str, list[str], Optional[torch.Tensor]]:
    """(dataset of (PIL image, ...) items, cache key, captions, their images) of the reference
    images; a manifest's captions, none otherwise."""
    if images.startswith(TORCHVISION):
        import torchvision.datasets

        name = images[len(TORCHVISION):]
        make = getattr(torchvision.datasets, name, None)
        if make is None:
            raise ConfigError(f"strategy.ref_images: torchvision has no dataset '{name}'")
        try:
            dataset = make(str(root), split="train")
        except TypeError:  # datasets with a train flag instead of a split
            dataset = make(str(root), train=True)
        except (RuntimeError, OSError, ValueError) as exc:
            raise DataNotFoundError(f"{name} not found or incomplete in {root} ({str(exc).splitlines()[0]})") from None
        return dataset, f"ref-{name}-{root}-{len(dataset)}", [], None
    if is_manifest(images):
        pairs = [p for p in read_manifest(images) if p.split != "test"]
        unique = list(OrderedDict((p.key, p) for p in pairs).values())
        position = {p.key: i for i, p in enumerate(unique)}
        key = hashlib.blake2b("\n".join(position).encode(), digest_size=12).hexdigest()
        return (PairDataset(unique), f"ref-pairs-{len(unique)}-{key}", [p.caption for p in pairs],
                torch.tensor([position[p.key] for p in pairs]))
    folder = Path(images)
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not p.name.startswith("."))
    if not paths:
        raise DataNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) below {folder} (strategy.ref_images)")
    files = ImageFiles(paths, [0] * len(paths), ["reference"], ids=[p.relative_to(folder).as_posix() for p in paths])
    return files, f"ref-folder-{len(files)}-{files.fingerprint()}", [], None


def reference_set(images: Optional[str], sentences: Optional[str], column: str, root: Optional[str],
                  encode_images: ImageEncoder, encode_texts: TextEncoder,
                  default: Optional[Callable[[], ControlSet]] = None) -> ControlSet:
    """The reference images and sentences as model inputs. Sentences not tied to images (a text
    file) score every image (``caption_image`` is -1 for them); ``default`` gives the pairs used
    for whatever side is not configured."""
    if not images and not sentences:
        if default is None:
            raise ConfigError("zscl needs reference pairs: set control.name, or strategy.ref_images and ref_sentences")
        return default()
    absent = missing(images, sentences, root)
    if absent:
        raise DataNotFoundError(absent)
    base = default() if (not images or not sentences) and default is not None else None
    captions, owners = [], None
    if images:
        dataset, key, captions, owners = _image_source(images, root)
        image_inputs, image_keys = encode_images(dataset, key), [str(i) for i in range(len(dataset))]
    elif base is not None:
        image_inputs, image_keys = base.image_inputs, base.keys
    else:
        raise ConfigError("zscl needs reference images: set strategy.ref_images or control.name")
    if sentences:
        texts = read_sentences(sentences, column)
        return ControlSet("reference", image_inputs, encode_texts(texts), torch.full((len(texts),), -1), image_keys)
    if captions:  # a manifest's own pairs
        return ControlSet("reference", image_inputs, encode_texts(captions), owners, image_keys)
    if base is None:
        raise ConfigError("zscl needs reference sentences: set strategy.ref_sentences or control.name")
    return ControlSet("reference", image_inputs, base.text_inputs, torch.full((len(base.text_inputs),), -1), image_keys)
