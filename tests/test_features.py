"""Model inputs are computed once: the on-disk feature cache."""

from __future__ import annotations

import numpy as np
import torch

from continual.clip import features
from continual.clip.extract import image_features
from continual.clip.features import image_inputs, text_inputs
from streams.datasets import LabelledImages


class CountingTrunk(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.calls = torch.nn.Linear(3, 4), 0

    def forward(self, x):
        self.calls += 1
        return self.lin(x.mean(dim=(2, 3)))


def pixels(img):
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255


def test_image_features_are_computed_once_and_reloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_CACHE", str(tmp_path))
    computed = []  # the datasets whose features were computed (not read from the cache)
    monkeypatch.setattr(features, "image_features", lambda trunk, images, *a: computed.append(images) or
                        image_features(trunk, images, *a))
    ds = LabelledImages(np.random.default_rng(0).integers(0, 255, (5, 6, 6), dtype=np.uint8), [0, 1, 0, 1, 0], ["a", "b"])
    trunk = CountingTrunk()
    first = image_inputs(ds, "toy", pixels, trunk, "fp1", batch_size=2)
    again = image_inputs(ds, "toy", pixels, trunk, "fp1")
    assert len(computed) == 1 and torch.equal(first, again)
    with torch.no_grad():
        assert torch.allclose(first, trunk(torch.stack([pixels(ds[i][0]) for i in range(5)])))
    image_inputs(ds, "toy", pixels, trunk, "fp2")  # other weights: another entry
    assert len(computed) == 2


def test_damaged_cache_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_CACHE", str(tmp_path))
    ds = LabelledImages(np.zeros((2, 4, 4), dtype=np.uint8), [0, 1], ["a", "b"])
    trunk = CountingTrunk()
    first = image_inputs(ds, "toy", pixels, trunk, "fp")
    (entry,) = (tmp_path / "features").glob("image-*.safetensors")
    entry.write_bytes(entry.read_bytes()[:20])
    assert torch.equal(image_inputs(ds, "toy", pixels, trunk, "fp"), first)
    assert not list((tmp_path / "features").glob("*.tmp"))


def test_without_trunk_inputs_are_lazy_pixels():
    ds = LabelledImages(np.zeros((2, 4, 4), dtype=np.uint8), [0, 1], ["a", "b"])
    inputs = image_inputs(ds, "toy", pixels, None, "fp")
    assert len(inputs) == 2 and inputs[0].shape == (3, 4, 4)


def test_text_without_trunk_is_tokens():
    tokens = text_inputs(["a b"], lambda texts: torch.ones(len(texts), 7, dtype=torch.long), None, "fp")
    assert tokens.shape == (1, 7)
