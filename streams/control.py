"""Control data never trained on: held-out image-caption pairs, evaluated by retrieval.

The split is the same function and seed that ``continual pretrain`` uses to hold concepts out
of a base, so the control pairs are concepts the base never saw (the runner checks this
against the keys stored with the base).
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from continual.config import ControlConfig
from continual.stream import ControlSet, ImageEncoder, TextEncoder
from streams.captions import PairDataset, concept_key, load_pairs, split_by_concept


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
