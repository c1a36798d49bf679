"""Control data never trained on: held-out image-caption pairs, evaluated by retrieval.

- ``heldout-captions``: emoji / Tux Paint pairs; the split is the same function and seed that
  ``continual pretrain`` uses to hold concepts out of a base, so the control pairs are concepts
  the base never saw (the runner checks this against the keys stored with the base).
- ``manifest-test``: the test split of image-caption manifests (``control.sources``), e.g.
  COCO's 5K Karpathy test, which Mod-X scores after every Flickr30K phase; its complement (the
  ``control.train_splits`` images) is what ``configs/pretrain-modx-coco.yaml`` trains on.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from continual.config.schema import ControlConfig
from continual.errors import ConfigError
from continual.stream import ControlSet, ImageEncoder, TextEncoder
from streams.captions import Pair, PairDataset, concept_key, load_pairs, split_by_concept
from streams.files import check_images
from streams.manifests import NOMINAL, is_manifest, missing_manifest, nominal_images, read_manifest


def heldout_captions(cfg: ControlConfig, encode_images: Optional[ImageEncoder] = None,
                     encode_texts: Optional[TextEncoder] = None, complement: bool = False) -> ControlSet:
    """Held-out emoji / Tux Paint pairs (one caption each), as model inputs when encoders are
    given. ``complement=True`` gives the other side of the split: the pairs a base trains on."""
    train, heldout = split_by_concept(load_pairs(list(cfg.sources)), cfg.heldout_fraction, cfg.split_seed)
    if complement:
        heldout = train
    keys = [p.key for p in heldout]
    captions = [p.caption for p in heldout]
    images = texts = None
    if encode_images is not None and encode_texts is not None:
        key = hashlib.blake2b("\n".join(keys).encode(), digest_size=12).hexdigest()
        images = encode_images(PairDataset(heldout), f"pairs-{len(keys)}-{key}")
        texts = encode_texts(captions)
    return ControlSet("heldout-captions" if not complement else "training-captions", images, texts,
                      torch.arange(len(captions)), keys, [concept_key(p) for p in heldout])


@dataclass
class NominalPairs(ControlSet):
    """The plan of a standard manifest's split that is absent: its published size."""

    missing: str = ""
    n_images: int = 0
    per_image: int = 0

    def plan(self) -> list[str]:
        return [f"control {self.name}: data absent, nominal {self.n_images} images, {self.n_images * self.per_image} "
                f"captions (retrieval R@1/5/10): {self.missing}"]


def manifest_test(cfg: ControlConfig, encode_images: Optional[ImageEncoder] = None,
                  encode_texts: Optional[TextEncoder] = None, complement: bool = False) -> ControlSet:
    """The test pairs of the manifests in ``cfg.sources`` (images relative to each manifest's
    folder), as model inputs when encoders are given; ``complement=True``: their training pairs
    (Karpathy files: the ``cfg.train_splits`` images). Without encoders an absent standard
    manifest gives a nominal plan; with them it stops the run, naming the file and the fix."""
    wanted = "train" if complement else "test"
    name = "manifest-train" if complement else "manifest-test"
    pairs: list[Pair] = []
    for source in cfg.sources:
        if not is_manifest(source):
            raise ConfigError(f"control.sources: '{source}' is not a manifest file (.csv, .jsonl, Karpathy .json), "
                              "which control.name=manifest-test reads")
        path = Path(source)
        if not path.is_file():
            if encode_images is None and path.name in NOMINAL:
                splits = list(cfg.train_splits) if complement else ["test"]
                return NominalPairs(name, None, None, torch.empty(0, dtype=torch.long), [], missing=str(missing_manifest(path)),
                                    n_images=nominal_images(path.name, splits), per_image=NOMINAL[path.name][1])
            raise missing_manifest(path)
        pairs += [p for p in read_manifest(path, None, cfg.train_splits) if p.split == wanted]
    if not pairs:
        raise ConfigError(f"control.sources {list(cfg.sources)}: no {wanted} pairs (a manifest's split column or "
                          "Karpathy split must mark them)")
    images = list(OrderedDict((p.key, p) for p in pairs).values())
    position = {p.key: i for i, p in enumerate(images)}
    image_inputs = text_inputs = None
    if encode_images is not None and encode_texts is not None:
        check_images([p.ref for p in images])  # one line naming an unreadable file, before training
        key = hashlib.blake2b("\n".join(position).encode(), digest_size=12).hexdigest()
        image_inputs = encode_images(PairDataset(images), f"pairs-{len(images)}-{key}")
        text_inputs = encode_texts([p.caption for p in pairs])
    return ControlSet(name, image_inputs, text_inputs, torch.tensor([position[p.key] for p in pairs]),
                      list(position), [concept_key(p) for p in images])
