"""Zero-shot classifier head: class names and prompt templates turned into CLIP logits.

logits = s * f_I(x) W^T, with W[c] the L2-normalised mean over templates of the normalised text
features of template(class c), and s = exp(logit_scale) clamped to at most 100. The class text
features are computed once and cached while the text side cannot change (text tower frozen, or
the model in eval mode); they are recomputed with gradient when the text side trains.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from continual.backbone import is_image_param

MAX_LOGIT_SCALE = math.log(100.0)


def prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Class-major list: all templates of class 0, then of class 1, ..."""
    return [t.format(name) for name in class_names for t in templates]


def logit_scale(model: nn.Module) -> torch.Tensor:
    """s = exp(logit_scale), clamped to at most 100 as CLIP does."""
    return model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


class ClipClassifier(nn.Module):
    """Wraps a CLIP model (``encode_image``/``encode_text``) as a classifier over named classes.

    ``text_inputs`` are the model's text inputs (tokens or frozen-trunk features) for
    ``prompts(class_names, templates)``. ``forward`` returns logits over all classes in label
    order; restricting to a label space is the loss's job (see ``restrict``).
    """

    def __init__(self, model: nn.Module, class_names: Sequence[str], text_inputs: torch.Tensor,
                 n_templates: int) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.n_templates = n_templates
        self.register_buffer("text_inputs", text_inputs, persistent=False)
        self._cache: Optional[torch.Tensor] = None

    def text_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.model.named_parameters()
                   if not is_image_param(n) and n not in ("logit_scale", "logit_bias"))

    def class_embeddings(self) -> torch.Tensor:
        """W: [n_classes, dim], normalised. Cached unless the text side is being trained."""
        needs_grad = self.training and torch.is_grad_enabled() and self.text_trainable()
        if not needs_grad and self._cache is not None:
            return self._cache
        feats = F.normalize(self.model.encode_text(self.text_inputs), dim=-1)
        feats = feats.view(len(self.class_names), self.n_templates, -1).mean(dim=1)
        weights = F.normalize(feats, dim=-1)
        if not needs_grad:
            self._cache = weights.detach()
        return weights

    def train(self, mode: bool = True) -> "ClipClassifier":
        if self.text_trainable():  # text features may change while training
            self._cache = None
        return super().train(mode)

    def invalidate(self) -> None:
        """Drop cached class features (call after changing text weights outside training)."""
        self._cache = None

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """f_I(x), normalised: [B, dim]."""
        return F.normalize(self.model.encode_image(images), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return logit_scale(self.model) * self.encode_images(images) @ self.class_embeddings().t()


def restrict(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only the columns of ``classes`` and re-index ``targets`` into them.

    Selecting columns (rather than masking with -inf) keeps label smoothing finite.
    """
    index = torch.as_tensor(list(classes), device=logits.device)
    lookup = torch.full((logits.shape[1],), -1, dtype=torch.long, device=logits.device)
    lookup[index] = torch.arange(len(index), device=logits.device)
    mapped = lookup[targets]
    if (mapped < 0).any():
        raise ValueError("a target class is outside the label space")
    return logits[:, index], mapped
