"""Mod-X: maintain the old model's image-text similarity distribution (Ni et al., ICML 2023).

On a batch of B image-caption pairs, the student's and the frozen teacher's raw cosine
similarity matrices (B x B, no logit scale: temperature 1):

    S = f_I(x) f_T(t)^T,    S_old = f_I^old(x) f_T^old(t)^T
    keep_i = [the old model retrieves row i correctly]     (argmax_j S_old[i, j] is i's caption)
    L_i2t = sum_{i: keep_i} KL(softmax(S_old[i]) || softmax(S[i]))
    L_t2i = the same on the transposes (rows of S^T, filtered by S_old^T)
    L = L_task + alpha * (L_i2t + L_t2i) / 2

Whole rows are distilled, diagonal included, despite the "off-diagonal" name. The official code
replaces a wrong row of S_old by the student's row, which is the same as dropping it (a KL of a
distribution with itself is 0 with zero gradient). Its reduction is a SUM over rows (the default
here), so alpha's effect grows with the batch: alpha = 20 was tuned at batch 280; the option
``reduction="mean"`` divides by B (dropped rows count as zero, like the official replacement).

Classification batches (this module's strategy): the caption of image i is its class prompt;
its features are the classifier's class text feature, the normalised mean over templates of
f_T(template(class)) (the same as the single prompt with one template; free, since the
classifier computes it anyway). Several images of one class share a caption, so "the old model
is right on row i" means the argmax caption has row i's LABEL (a duplicate of i's caption is
correct); on image-text streams the labels are the pair indices and this is argmax == i.
The task loss is the strategy's cross-entropy; ``contrastive_weight`` adds the symmetric
InfoNCE of the batch's pairs (Mod-X's own task loss, L_CLIP, on image-text data).
When the logit scale trains it is clamped to [0, ln 100] after every step.

Under data parallelism the matrices are global: the plugin gathers both models' image features
from all ranks (the student's with gradient, the teacher's without) and the labels, then calls
these functions unchanged (see ``continual.system.distributed``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

from continual.system import distributed
from continual.clip.heads import MAX_LOGIT_SCALE, ClipClassifier, logit_scale
from strategies import declarations as declared
from strategies.base import ClipStrategy, record_term
from strategies.declarations import REDUCTIONS, TEACHERS, ModXParams  # noqa: F401  (ours to import)
from strategies.distill import Teacher



# -- the loss: pure functions of tensors ----------------------------------------------------------
def similarity(image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """S = f_I f_T^T: raw cosines [B_images, B_texts] (features are normalised here)."""
    return F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()


def old_model_correct(s_old: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """keep_i = [labels[argmax_j S_old[i, j]] == labels[i]]: the old model retrieves row i's own
    caption (or a duplicate of it). ``labels`` of the columns/rows, default arange(B) (pairs)."""
    if labels is None:
        labels = torch.arange(s_old.shape[0], device=s_old.device)
    return labels[s_old.argmax(dim=1)] == labels


def filtered_kl(s: torch.Tensor, s_old: torch.Tensor, keep: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """sum_{i: keep_i} KL(softmax(S_old[i]) || softmax(S[i])) over rows (temperature 1);
    ``reduction="mean"`` divides that sum by the number of rows B (kept or not)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got '{reduction}'")
    log_p = F.log_softmax(s_old.detach(), dim=-1)
    log_q = F.log_softmax(s, dim=-1)
    rows = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
    total = rows[keep].sum()
    return total / s.shape[0] if reduction == "mean" else total


def alignment_loss(s: torch.Tensor, s_old: torch.Tensor, labels: Optional[torch.Tensor] = None,
                   reduction: str = "sum") -> torch.Tensor:
    """(L_i2t + L_t2i) / 2: :func:`filtered_kl` on the rows of S (filter from S_old) and on the
    rows of S^T (filter from S_old^T). ``labels``: identities of the pairs (default arange(B))."""
    i2t = filtered_kl(s, s_old, old_model_correct(s_old, labels), reduction)
    t2i = filtered_kl(s.t(), s_old.t(), old_model_correct(s_old.t(), labels), reduction)
    return (i2t + t2i) / 2


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          scale: torch.Tensor | float) -> torch.Tensor:
    """L_CLIP = (CE(s S, I) + CE(s S^T, I)) / 2 with S = f_I f_T^T: pair i is the positive of row i.

    On classification batches several images share their class caption; the duplicate columns
    (rows of S^T) are identical, so this equals the loss with targets spread over same-class
    pairs: no label-aware variant is needed.
    """
    logits = scale * similarity(image_features, text_features)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def clamp_logit_scale(model: nn.Module) -> None:
    """logit_scale <- clamp(logit_scale, 0, ln 100), as CLIP does after every step."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


# -- the method ---------------------------------------------------------------------------------
class ModXPlugin(SupervisedPlugin, supports_distributed=True):
    """Adds alpha * (L_i2t + L_t2i) / 2 on classification batches in ``before_backward``; usable
    in any Avalanche strategy whose model is a :class:`continual.clip.heads.ClipClassifier`.

    ``model``: the CLIP model before training, copied now when ``teacher="initial"``. Inspect
    ``last_value`` (the unweighted term of the last batch) and ``last_kept`` (rows kept i2t, t2i).
    """

    def __init__(self, params: Optional[ModXParams] = None, model: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.params = params or ModXParams()
        self.teacher = Teacher(self.params.teacher, model)
        self.old_class_features: Optional[torch.Tensor] = None
        self.old_image: Optional[torch.Tensor] = None  # f_I^old of the global batch, from before_forward
        self.last_value: Optional[float] = None
        self.last_kept: tuple[int, int] = (0, 0)

    def before_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        classifier: ClipClassifier = strategy.model
        self.teacher.refresh(classifier.model)
        old = ClipClassifier(self.teacher(), classifier.class_names, classifier.text_inputs, classifier.n_templates)
        with torch.no_grad():  # f_T^old of every class caption, once per session
            self.old_class_features = old.eval().class_embeddings(templates=classifier.train_templates)

    @torch.no_grad()
    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        """f_I^old(x) of every process's rows, normalised like the student's (so that student =
        teacher gives the same rows bit for bit)."""
        return distributed.gather(F.normalize(self.teacher().encode_image(x), dim=-1))

    def before_forward(self, strategy: Any, **kwargs: Any) -> None:
        # before the student's activations exist: at the step's peak a teacher costs its weights only
        self.old_image = self.teacher_features(strategy.mb_x)

    def before_backward(self, strategy: Any, **kwargs: Any) -> None:
        classifier: ClipClassifier = strategy.model
        x = strategy.mb_x
        # f_I(x), and f_T of each row's caption, as ClipStrategy's forward kept them; other
        # Avalanche strategies encode again
        image = getattr(strategy, "mb_image_features", None)
        image = classifier.encode_images(x) if image is None else image
        text = getattr(strategy, "mb_text_features", None)
        if text is None:
            classes = getattr(strategy, "mb_class_features", None)
            text = (classifier.class_embeddings() if classes is None else classes)[strategy.mb_y]
        old_image = self.old_image if self.old_image is not None else self.teacher_features(x)
        self.old_image = None
        # the global batch: every process's rows (one process: the identity)
        y = distributed.gather(strategy.mb_y)
        image = distributed.gather(image, with_grad=True)
        text = distributed.gather(text, with_grad=True)
        s_old = similarity(old_image, self.old_class_features[y])
        s = similarity(image, text)
        term = alignment_loss(s, s_old, y, self.params.reduction)
        self.last_value = float(term.detach())
        self.last_kept = (int(old_model_correct(s_old, y).sum()), int(old_model_correct(s_old.t(), y).sum()))
        weighted = self.params.alpha * term
        record_term(strategy, "modx", weighted)  # a KL already: 0 at student = teacher
        strategy.loss = strategy.loss + weighted
        if self.params.contrastive_weight > 0:
            contrastive = self.params.contrastive_weight * clip_contrastive_loss(
                image, text, logit_scale(classifier.model))
            record_term(strategy, "contrastive", contrastive)
            strategy.loss = strategy.loss + contrastive

    def after_update(self, strategy: Any, **kwargs: Any) -> None:
        model = strategy.model.model
        if model.logit_scale.requires_grad:
            clamp_logit_scale(model)


class ModX(declared.ModX, ClipStrategy):
    """Mod-X: keep the previous model's image-text similarity rows where it was right (KL, both ways)."""

    def method_plugins(self, classifier: ClipClassifier) -> list[SupervisedPlugin]:
        return [ModXPlugin(self.params, model=classifier.model)]
