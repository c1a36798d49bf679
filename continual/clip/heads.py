"""Zero-shot classifier head: class names and prompt templates turned into CLIP logits.

logits = s * f_I(x) W^T, with W[c] the L2-normalised mean over templates of the normalised text
features of template(class c), and s = exp(logit_scale) clamped to at most 100. Classes may
have different templates (each MTIL dataset its own). The class text features are computed once
and cached while the text side cannot change (text tower frozen, or the model in eval mode);
they are recomputed with gradient when the text side trains, for the classes asked only.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from continual.clip.backbone import is_image_param
from continual.clip.text_context import encode_text

MAX_LOGIT_SCALE = math.log(100.0)


def prompts(class_names: Sequence[str], templates: Sequence[str] | Sequence[Sequence[str]]) -> list[str]:
    """Class-major list: all templates of class 0, then of class 1, ... ``templates`` is one
    list for every class, or one list per class."""
    return [t.format(name) for name, ts in zip(class_names, per_class(templates, len(class_names))) for t in ts]


def per_class(templates: Sequence[str] | Sequence[Sequence[str]], n_classes: int) -> list[list[str]]:
    """Templates of each class: the same list for all, or the per-class lists as given."""
    if templates and not isinstance(templates[0], str):
        if len(templates) != n_classes:
            raise ValueError(f"{len(templates)} template lists for {n_classes} classes")
        return [list(t) for t in templates]
    return [list(templates)] * n_classes


def logit_scale(model: nn.Module) -> torch.Tensor:
    """s = exp(logit_scale), clamped to at most 100 as CLIP does."""
    return model.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()


class ClipClassifier(nn.Module):
    """Wraps a CLIP model (``encode_image``/``encode_text``) as a classifier over named classes.

    ``text_inputs`` are the model's text inputs (tokens or frozen-trunk features) for
    ``prompts(class_names, templates)``; ``n_templates`` is the number of templates of every
    class, or a list with each class's number. ``forward`` returns logits over all classes in
    label order; restricting to a label space is the loss's job (see ``restrict``).
    ``train_templates="first"``: in training mode W uses each class's first template only (ZSCL
    trains so); in eval mode always the mean over all templates.
    """

    def __init__(self, model: nn.Module, class_names: Sequence[str], text_inputs: torch.Tensor,
                 n_templates: int | Sequence[int], train_templates: str = "all") -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        counts = [n_templates] * len(self.class_names) if isinstance(n_templates, int) else list(n_templates)
        if len(counts) != len(self.class_names) or sum(counts) != len(text_inputs):
            raise ValueError(f"{len(text_inputs)} prompts do not match {len(self.class_names)} classes' template counts")
        self.n_templates = n_templates
        # prompt rows of class c: starts[c] .. starts[c] + counts[c] - 1
        self.register_buffer("counts", torch.tensor(counts, dtype=torch.long), persistent=False)
        self.register_buffer("starts", torch.cumsum(self.counts, 0) - self.counts, persistent=False)
        self.register_buffer("text_inputs", text_inputs, persistent=False)
        self.train_templates = train_templates
        self._cache: dict[str, torch.Tensor] = {}  # W by templates used ("all" | "first")

    def prompt_rows(self, classes: Sequence[int]) -> list[int]:
        """Rows of ``text_inputs`` holding the prompts of ``classes`` (class-major)."""
        return [int(self.starts[c]) + k for c in classes for k in range(int(self.counts[c]))]

    def text_trainable(self) -> bool:
        return any(p.requires_grad for n, p in self.model.named_parameters()
                   if not is_image_param(n) and n not in ("logit_scale", "logit_bias"))

    def class_embeddings(self, classes: Optional[torch.Tensor | Sequence[int]] = None,
                         templates: Optional[str] = None) -> torch.Tensor:
        """W: [n_classes, dim] (or the rows of ``classes``, repeats allowed), normalised.

        ``templates``: "all" | "first"; default: ``train_templates`` while training, else "all".
        Cached unless the text side is being trained; then only ``classes`` are encoded (an
        image-text batch encodes its own captions, not the whole stream's)."""
        if templates is None:
            templates = self.train_templates if self.training else "all"
        needs_grad = self.training and torch.is_grad_enabled() and self.text_trainable()
        if not needs_grad:
            if templates not in self._cache:
                with torch.no_grad():
                    self._cache[templates] = self._embed(torch.arange(len(self.class_names)), templates)
            cached = self._cache[templates]
            return cached if classes is None else cached[torch.as_tensor(classes, dtype=torch.long)]
        if classes is None:
            return self._embed(torch.arange(len(self.class_names)), templates)
        wanted = torch.as_tensor(classes, dtype=torch.long)
        unique, inverse = torch.unique(wanted, return_inverse=True)
        return self._embed(unique, templates)[inverse]

    def _embed(self, classes: torch.Tensor, templates: str = "all", chunk: int = 1024) -> torch.Tensor:
        """Normalised mean over each class's templates (or its first) of its normalised prompt
        features (without gradient, ``chunk`` prompts at a time: an image-text stream has a class
        per caption)."""
        if templates == "first":
            counts = torch.ones_like(self.counts[classes])
            rows = self.starts[classes].to(self.text_inputs.device)
        else:
            counts = self.counts[classes]
            rows = torch.tensor(self.prompt_rows(classes.tolist()), dtype=torch.long, device=self.text_inputs.device)
        parts = [rows] if torch.is_grad_enabled() else rows.split(chunk)
        feats = F.normalize(torch.cat([encode_text(self.model, self.text_inputs[part]) for part in parts]), dim=-1)  # padding cut
        owner = torch.repeat_interleave(torch.arange(len(classes), device=feats.device), counts.to(feats.device))
        sums = torch.zeros(len(classes), feats.shape[1], dtype=feats.dtype, device=feats.device).index_add(0, owner, feats)
        return F.normalize(sums / counts.to(feats.device, feats.dtype)[:, None], dim=-1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """f_I(x), normalised."""
        return F.normalize(self.model.encode_image(images), dim=-1)

    def train(self, mode: bool = True) -> "ClipClassifier":
        if self.text_trainable():  # text features may change while training
            self._cache = {}
        return super().train(mode)

    def invalidate(self) -> None:
        """Drop cached class features (call after changing text weights outside training)."""
        self._cache = {}

    def logits(self, image_features: torch.Tensor, classes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """s * f_I(x) W^T over all classes (or the columns of ``classes``)."""
        return logit_scale(self.model) * image_features @ self.class_embeddings(classes).t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(self.encode_images(images))


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
