"""What a strategy may need beyond its classifier, handed over by the runner.

Kept separate from the classifier so that methods can reuse it outside our runner (an
Avalanche experiment builds one with :func:`from_backbone`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from continual.stream import ControlSet


@dataclass
class StrategyContext:
    """Text encoding for the model's inputs, and reference pairs.

    - ``encode_texts(texts)``: the model's text inputs for sentences (tokens, or frozen-trunk
      features when the text trunk was split off).
    - ``tokenizer``: the open_clip tokenizer (for methods that build token sequences directly).
    - ``text_trunk``: the frozen text trunk, or None when the text tower takes tokens.
    - ``reference()``: image-caption pairs that are neither a session's data nor the control's
      (the base's own training pairs), built on first call; None when there are none.
    - ``encode_images(dataset, key)``: the model's image inputs for a dataset of (PIL image, ...)
      items (for data a method reads itself, e.g. ZSCL's configured reference images).
    """

    encode_texts: Callable[[list], torch.Tensor]
    tokenizer: Callable
    text_trunk: Optional[nn.Module] = None
    reference: Optional[Callable[[], ControlSet]] = None
    encode_images: Optional[Callable] = None

    @torch.no_grad()
    def tokens_to_inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Model text inputs for token ids (applies the frozen text trunk when there is one)."""
        return tokens if self.text_trunk is None else self.text_trunk(tokens)


def from_backbone(backbone, reference: Optional[Callable[[], ControlSet]] = None) -> StrategyContext:
    """The context of a :class:`continual.clip.backbone.Backbone` (uncached text encoding)."""
    from continual.clip.features import image_inputs, text_inputs

    def encode(texts):
        return text_inputs(texts, backbone.tokenizer, backbone.text_trunk, backbone.fingerprint("text"))

    def encode_images(dataset, key):
        return image_inputs(dataset, key, backbone.preprocess, backbone.image_trunk, backbone.fingerprint("image"))

    return StrategyContext(encode, backbone.tokenizer, backbone.text_trunk, reference, encode_images)
