"""Turning raw data into model inputs, once.

Preprocessing is deterministic (no augmentation), and a frozen trunk maps an input to the same
features forever, so both are applied once per item and cached: in memory for the run, and on
disk (content-addressed by the data's key, the preprocessing and the trunk's weights) so that a
second run, a test or the next session starts from the features. Without a frozen trunk the
inputs are the preprocessed pixels, produced lazily.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from continual.system.atomic import atomic_write
from continual.clip.extract import BATCH_SIZE, TEXT_BATCH_SIZE, image_features, pad_token, text_features


def cache_dir() -> Path:
    """Where features and built bases are cached: $CONTINUAL_CACHE or ~/.cache/continual."""
    return Path(os.environ.get("CONTINUAL_CACHE", Path.home() / ".cache" / "continual"))


class Transformed(Dataset):
    """``dataset`` with ``transform`` applied to the first element of each item."""

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.dataset[i][0])


def image_inputs(dataset: Dataset, key: str, preprocess: Callable, trunk: Optional[nn.Module],
                 fingerprint: str, batch_size: int = BATCH_SIZE) -> Dataset | torch.Tensor:
    """The model's image inputs for every item of ``dataset`` (items are ``(PIL image, ...)``).

    With a frozen ``trunk``: a tensor of trunk features (computed by
    :func:`continual.clip.extract.image_features`), cached on disk under ``key`` (which must identify
    the data: name, split and item indices) and the trunk/preprocess ``fingerprint``.
    Without: a lazy dataset of preprocessed pixels.
    """
    if trunk is None:
        return Transformed(dataset, preprocess)
    path = _cache_path("image", key, fingerprint)
    cached = _load(path)
    if cached is not None:
        return cached
    feats = image_features(trunk, Transformed(dataset, preprocess), batch_size)
    _save(path, feats)
    return feats


def text_inputs(texts: Sequence[str], tokenizer: Callable, trunk: Optional[nn.Module],
                fingerprint: str, batch_size: int = TEXT_BATCH_SIZE) -> torch.Tensor:
    """Token ids for ``texts``, or, with a frozen text trunk, its features (cached on disk)."""
    tokens = tokenizer(list(texts))
    if trunk is None:
        return tokens
    key = hashlib.blake2b("\n".join(texts).encode(), digest_size=12).hexdigest()
    path = _cache_path("text", key, fingerprint)
    cached = _load(path)
    if cached is not None:
        return cached
    pad = pad_token(trunk)
    if pad is None:
        with torch.inference_mode():
            feats = torch.cat([trunk(t) for t in tokens.split(batch_size)]) if len(texts) else torch.empty(0)
        feats = feats.clone()
    else:
        feats = text_features(trunk, tokens, pad, batch_size)
    _save(path, feats)
    return feats


def _cache_path(kind: str, key: str, fingerprint: str) -> Path:
    digest = hashlib.blake2b(f"{kind}|{key}|{fingerprint}".encode(), digest_size=16).hexdigest()
    return cache_dir() / "features" / f"{kind}-{digest}.safetensors"


def _load(path: Path) -> Optional[torch.Tensor]:
    """The cached features, or None if absent or damaged (a damaged entry is removed)."""
    from safetensors.torch import load_file

    if not path.exists():
        return None
    try:
        return load_file(str(path))["features"]
    except Exception:  # never trust a damaged entry: recompute it
        path.unlink(missing_ok=True)
        return None


def _save(path: Path, feats: torch.Tensor) -> None:
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp))
