"""The zero-shot head: logits, the text-feature cache, and label-space restriction."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from continual.clip.backbone import set_trainable, split_frozen_trunks
from continual.clip.heads import ClipClassifier, prompts, restrict


class CountingText(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def make_classifier(lit_model, trainable: str):
    model, _, tokenizer = lit_model
    model = copy.deepcopy(model)
    set_trainable(model, trainable)
    image_trunk, text_trunk = split_frozen_trunks(model)
    names = ["cat", "dog", "bag"]
    templates = ["a photo of a {}.", "a {}."]
    with torch.no_grad():
        text_inputs = text_trunk(tokenizer(prompts(names, templates)))
    model.text = CountingText(model.text)
    return ClipClassifier(model, names, text_inputs, len(templates))


def test_logits_are_scaled_cosines_against_the_template_mean(lit_model):
    clf = make_classifier(lit_model, "projections").eval()
    x = torch.randn(4, 1280)
    with torch.no_grad():
        text = F.normalize(clf.model.encode_text(clf.text_inputs), dim=-1).view(3, 2, -1).mean(1)
        expected = clf.model.logit_scale.exp().clamp(max=100) * F.normalize(clf.model.encode_image(x), dim=-1) @ F.normalize(text, dim=-1).t()
        torch.testing.assert_close(clf(x), expected)


def test_frozen_text_features_are_computed_once(lit_model):
    clf = make_classifier(lit_model, "image").train()  # text side frozen
    clf.model.visual.trunk = torch.nn.Identity()  # the image trunk trains here; feed features for speed
    x = torch.randn(2, 1280)
    for mode in (True, True, False, False, True):
        clf.train(mode)
        clf(x)
    assert clf.model.text.calls == 1


def test_trainable_text_is_recomputed_with_gradient_in_training(lit_model):
    clf = make_classifier(lit_model, "projections").train()
    x = torch.randn(2, 1280)
    loss = clf(x).sum() + clf(x).sum()
    loss.backward()
    assert clf.model.text.calls == 2
    assert clf.model.text.inner.proj.weight.grad is not None
    clf.eval()
    with torch.no_grad():
        clf(x), clf(x)
    assert clf.model.text.calls == 3  # eval: once, then cached


def test_restrict_selects_columns_and_reindexes_targets():
    logits = torch.arange(12.0).view(2, 6)
    sub, y = restrict(logits, torch.tensor([4, 1]), [1, 4])
    assert sub.tolist() == [[1.0, 4.0], [7.0, 10.0]] and y.tolist() == [1, 0]
    with pytest.raises(ValueError):
        restrict(logits, torch.tensor([0]), [1, 4])
