"""Class prompts read only up to their end token (continual.clip.text_context): the text tower's
features and gradients, for less work."""

from __future__ import annotations

import copy

import pytest
import torch

from continual.clip.backbone import create_model, set_trainable
from continual.clip.heads import ClipClassifier, prompts
from continual.clip.text_context import causal_text_tower, encode_text

NAMES = ["T-shirt/top", "Trouser", "Ankle boot"]
TEMPLATES = ["a photo of a {}.", "a low resolution photo of the {}, a type of clothing."]


@pytest.fixture(scope="module")
def tiny():
    model, _, tokenizer = create_model("tiny-vit")  # open_clip CLIP, causal text tower, argmax pooling
    return model, tokenizer(prompts(NAMES, TEMPLATES))


def largest(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def test_the_tower_reads_only_up_to_the_longest_prompt(tiny):
    model, tokens = tiny
    seen = []
    hook = model.transformer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        encode_text(model, tokens)
    finally:
        hook.remove()
    assert seen == [int(tokens.argmax(-1).max()) + 1] and seen[0] < tokens.shape[1]


def test_cut_prompts_give_the_towers_features_and_gradients(tiny):
    """Under the causal mask the cut positions add exact zeros to every softmax at or before the
    end token; what changes is the shape of the matrix products, so their summation order: the
    cut features are as far from the exact (float64) ones as the full context's are, 4 times at
    most; the same holds for the gradients of a loss on them."""
    model, tokens = tiny
    model = copy.deepcopy(model)
    set_trainable(model, "all")
    exact_model = copy.deepcopy(model).double()

    def features_and_grad(m, encode):
        m.zero_grad()
        feats = encode(m, tokens)
        feats.pow(2).sum().backward()
        return feats.detach(), m.transformer.resblocks[0].mlp.c_fc.weight.grad.clone()

    want = features_and_grad(exact_model, lambda m, t: m.encode_text(t))
    full = features_and_grad(model, lambda m, t: m.encode_text(t))
    cut = features_and_grad(model, encode_text)
    for k in (0, 1):  # features, then a weight's gradient
        assert largest(full[k], want[k]) > 0
        assert largest(cut[k], want[k]) <= 4 * largest(full[k], want[k])


def test_towers_that_are_not_causal_at_the_end_token_run_whole(lit_model, tiny):
    model, tokens = tiny
    assert causal_text_tower(lit_model[0]) is None  # LiT: a Hugging Face tower (pooled by mean)
    bidirectional = copy.deepcopy(model)
    bidirectional.attn_mask = None  # e.g. SigLIP's text tower
    assert causal_text_tower(bidirectional) is None
    last = copy.deepcopy(model)
    last.text_pool_type = "last"  # the feature at the last position: the padding matters
    assert causal_text_tower(last) is None
    with torch.no_grad():
        assert torch.equal(encode_text(last, tokens), last.encode_text(tokens))


def test_the_classifier_uses_the_cut_prompts(tiny):
    model, tokens = tiny
    classifier = ClipClassifier(model, NAMES, tokens, len(TEMPLATES)).eval()

    def class_means(m):  # W: each class's templates' normalised features, averaged, normalised
        feats = torch.nn.functional.normalize(m.encode_text(tokens), dim=-1)
        return torch.nn.functional.normalize(feats.view(len(NAMES), len(TEMPLATES), -1).mean(1), dim=-1)

    with torch.no_grad():
        want, full, got = class_means(copy.deepcopy(model).double()), class_means(model), classifier.class_embeddings()
    assert largest(got, want) <= 4 * largest(full, want)  # as close to exact as the full context's
