"""Fast frozen-trunk features (continual.clip.extract) are the trunk's features: BatchNorm folded only
where that changes nothing but rounding, decoding workers changing nothing at all, texts cut
after their last token and returned in their order. Their speed is measured by continual bench."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from continual.clip.backbone import load_backbone
from continual.clip.extract import fold_batchnorm, image_features, inference_copy, text_features, torch_threads
from continual.clip.features import Transformed
from streams.captions import emoji_pairs, tux_pairs
from streams.datasets import fashion_mnist, per_class_subset


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("lit-effnet-minilm", "", "projections")


@pytest.fixture(scope="module")
def images(backbone):
    return Transformed(per_class_subset(fashion_mnist(False), 3, 0), backbone.preprocess)  # 30 real images


def exact(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The module's output in float64: exact to float32's eyes."""
    with torch.no_grad():
        return copy.deepcopy(module).double()(*(x.double() if x.is_floating_point() else x for x in inputs))


def largest_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).abs().max())


def test_folded_trunk_gives_the_trunks_features_up_to_rounding(backbone, images):
    """Folding turns (w x) * s + b into (w * s) x + b': per output the same sums and one rounding
    per weight more (w * s), which perturbs each product by as much as the sum's own rounding does
    at most. So the folded features' distance from the exact ones is of the order of what the
    unfolded float32 trunk carries itself; 4 times that largest error, measured on the same
    images, bounds it (the folded and channels-last kernels sum in other orders)."""
    trunk = backbone.image_trunk
    x = torch.stack([images[i] for i in range(len(images))])
    want = exact(trunk, x)
    with torch.no_grad():
        plain = trunk(x)
    ours = image_features(trunk, images, batch_size=8, workers=0)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inference_copy(trunk, x[:2]).modules())  # all folded
    assert largest_error(ours, want) <= 4 * largest_error(plain, want)
    assert largest_error(plain, want) > 0  # float32 rounding is there to measure


def test_decoding_workers_change_nothing(backbone, images):
    # the same preprocessed batches reach the same kernels (on one thread: another number of
    # threads splits a convolution's sums otherwise): bit for bit
    with torch_threads(1):
        assert torch.equal(image_features(backbone.image_trunk, images, 8, workers=0),
                           image_features(backbone.image_trunk, images, 8, workers=2))


class NormFirst(nn.Module):
    """A norm registered after a convolution but applied before it: folding it would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3)
        self.norm = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.norm.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
            self.norm.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


def test_a_fold_that_changes_the_output_is_not_used():
    model, probe = NormFirst().eval(), torch.randn(4, 3, 8, 8)
    folded = fold_batchnorm(model)
    with torch.no_grad():  # folding by registration order is wrong here ...
        assert largest_error(folded(probe), exact(model, probe)) > 0.1
    fast = inference_copy(model, probe)  # ... so the check keeps the norm
    assert any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    with torch.inference_mode():
        out = fast(probe.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        assert largest_error(out, exact(model, probe)) <= 4 * largest_error(model(probe), exact(model, probe)) + 1e-30


def test_text_features_cut_padding_and_keep_the_order(backbone):
    """Cutting padding only changes the shapes of the matrix products (their summation order):
    the masked positions add exact zeros to the attention's softmax and to the mean pooling. So
    the result is within 4 times the float32 rounding the padded computation carries itself."""
    captions = [p.caption for p in emoji_pairs()[::97] + tux_pairs()[::47]]  # short and long ones, mixed
    tokens = backbone.tokenizer(captions)
    pad = backbone.text_trunk.pad_token_id
    lengths = (tokens != pad).sum(1)
    assert int(lengths.max()) < tokens.shape[1] and int(lengths.min()) < int(lengths.max())  # padding to cut
    want = exact(backbone.text_trunk, tokens)
    with torch.no_grad():
        plain = backbone.text_trunk(tokens)
    ours = text_features(backbone.text_trunk, tokens, pad, batch_size=4)
    assert largest_error(ours, want) <= 4 * largest_error(plain, want)
    assert largest_error(plain, want) > 0
