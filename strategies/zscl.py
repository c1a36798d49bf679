"""ZSCL: Zero-Shot Continual Learning (Zheng et al., ICCV 2023, "Preventing Zero-Shot Transfer
Degradation in Continual Learning of Vision-Language Models"; official code Thunderbeee/ZSCL).

Distillation in feature space from the INITIAL (pre-trained) model on reference data that is
neither a session's nor the control's, plus weight ensembling in parameter space.

Per step, with a reference batch of images x_r (sampled, seeded) and reference texts t_r:

    u_t = f_I^0(x_r), v_t = f_T^0(t_r)               (initial model, no grad; normalised)
    u_s = f_I(x_r),   v_s = v_t                       (student; ``text_features: teacher``)
    Z_t = s * u_t v_t^T,  Z_s = s * u_s v_s^T
    L_ZSCL = KD(Z_t, Z_s; T) + KD(Z_t^T, Z_s^T; T)    (image-to-text + text-to-image, T = 2)
    L = L_task + weight * L_ZSCL + l2 * sum ||theta - theta_start||^2

KD is :func:`strategies.lwf.kd_loss`. theta_start are the weights at the start of the session.
Weight ensembling (WE): the mean of snapshots of the trainable weights: theta_start, the weights
after every ``we_interval``-th optimizer step (after steps 1, k + 1, 2k + 1, ...), and the
session's final weights (unless the last step was itself a snapshot); at the end of the session
the model takes the mean (and the next session starts from it). With the authors' 1000 steps and
k = 100 that is 12 models, as the official code averages: it runs 1001 steps, the last at lr 0
(a step that changes nothing), and snapshots after steps 1, 101, ..., 1001.

What the official MTIL code does, and the choices exposed here (defaults = the code):
- The student's reference logits use the INITIAL model's text features (``text_features:
  teacher``): only the student's image encoder is distilled; ``student`` scores against the
  student's own text features instead (both towers distilled).
- The reference texts are one fixed set of sentences (Conceptual Captions) scored against every
  reference image batch (``ref_texts: all``); ``batch`` uses only the sampled images' captions.
- The reference data (the "files" reference set, :data:`continual.registry.REFERENCES`; the
  ``streams`` package provides it): by default ``context.reference()``, the
  complement of the control set (offline: the emoji / Tux Paint pairs the base trained on);
  ``ref_images`` (an image folder such as ImageNet's ``train/``, a manifest, or
  ``torchvision:NAME`` under ``ref_root``) and ``ref_sentences`` (a text file, or a CSV/TSV
  column ``ref_column``, e.g. Conceptual Captions' validation TSV, column 0) point elsewhere; the
  ``mtil`` preset names ZSCL's own (ImageNet train images, Conceptual Captions validation
  captions) at data/imagenet/train and data/conceptual_captions/. The reference images are
  encoded like any image (test preprocessing, as ZSCL); the order of their batches restarts
  from the seed every session (the official code runs one seeded process per task).
- One logit scale s (the student's, not trained) for both logit matrices.
- Weights: 1 per direction in MTIL (``weight``; the class-incremental configs use 5), T = 2,
  L2 to the session-start weights with weight 1 (``--l2 1``: sum of squared differences),
  WE every 100 iterations of 1000 (``--avg_freq 100``; 10 in the class-incremental configs),
  reference batch = training batch (64).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn
from torch.optim.swa_utils import AveragedModel

from continual.errors import ConfigError
from continual.clip.extract import encode_all
from continual.clip.heads import logit_scale
from continual.stream import ControlSet
from strategies import declarations as declared
from strategies.base import ClipStrategy, record_term
from strategies.declarations import ZSCLParams, reference_files
from strategies.distill import frozen_copy, kd, kl_of


def zscl_loss(student_image: torch.Tensor, student_text: torch.Tensor, teacher_image: torch.Tensor,
              teacher_text: torch.Tensor, scale: Union[torch.Tensor, float], temperature: float = 2.0) -> torch.Tensor:
    """L_ZSCL = KD(Z_t, Z_s; T) + KD(Z_t^T, Z_s^T; T) with Z_t = s * teacher_image teacher_text^T
    and Z_s = s * student_image student_text^T (all features L2-normalised; rows of the
    transposes are texts, distilled over the batch of images).

    The official code passes ``student_text = teacher_text``. At student = teacher the value is
    T^2 times the two mean entropies and the gradient is zero.
    """
    z_t = scale * teacher_image @ teacher_text.t()
    z_s = scale * student_image @ student_text.t()
    return kd(z_t, z_s, temperature) + kd(z_t.t(), z_s.t(), temperature)


def l2_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over parameters of ||theta - theta_anchor||^2 (ZSCL's ``l2_loss``: MSE, reduction sum)."""
    return sum(((p - a.detach()) ** 2).sum() for p, a in zip(params, anchors))


def _take(inputs: Any, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` of a tensor, or the stacked items of a dataset of tensors."""
    if torch.is_tensor(inputs):
        return inputs[index]
    return torch.stack([inputs[int(i)] for i in index])


class ZSCLPlugin(SupervisedPlugin, supports_distributed=True):
    """Adds ``weight * L_ZSCL + l2 * ||theta - theta_start||^2`` in ``before_backward`` and does
    the weight ensembling. Works in any Avalanche strategy whose model is a
    :class:`continual.clip.heads.ClipClassifier`.

    ``reference``: a :class:`ControlSet` of image-caption pairs (model inputs), or a callable
    returning one (loaded on first use). ``initial_model``: the frozen CLIP model to distil
    (None: a copy of the model when the first experience starts). ``seed`` fixes the order of
    the reference batches (None: ``torch.initial_seed()`` at construction, the run's seed); the order restarts
    every experience.
    """

    def __init__(self, reference: Union[ControlSet, Callable[[], ControlSet]], initial_model: Optional[nn.Module] = None,
                 weight: float = 1.0, temperature: float = 2.0, ref_batch_size: int = 64, ref_texts: str = "all",
                 text_features: str = "teacher", we: bool = True, we_interval: int = 100, l2: float = 1.0,
                 seed: Optional[int] = None) -> None:
        super().__init__()
        self.p = ZSCLParams(weight, temperature, ref_batch_size, ref_texts, text_features, we, we_interval, l2)
        self._reference = reference
        self.reference: Optional[ControlSet] = None
        self.initial = initial_model
        self.seed = torch.initial_seed() if seed is None else seed
        self.generator = torch.Generator()
        self._order = torch.empty(0, dtype=torch.long)  # a shuffled pass over the reference images
        self._teacher_texts: Optional[torch.Tensor] = None  # v_t for ref_texts = all, computed once
        self.last_indices: Optional[torch.Tensor] = None  # the reference images of the last step
        self.step = 0
        self.anchor: list[torch.Tensor] = []
        self.average: Optional[AveragedModel] = None

    # -- data ----------------------------------------------------------------------------------
    def next_indices(self) -> torch.Tensor:
        """The next reference batch: consecutive slices of seeded permutations (a shuffled
        loader that restarts when exhausted, as the official code's reference iterator)."""
        n = len(self.reference.keys)
        size = min(self.p.ref_batch_size, n)
        if len(self._order) < size:
            self._order = torch.cat([self._order, torch.randperm(n, generator=self.generator)])
        index, self._order = self._order[:size], self._order[size:]
        return index

    def _texts_for(self, index: torch.Tensor) -> torch.Tensor:
        if self.p.ref_texts == "all":
            return torch.arange(len(self.reference.caption_image))
        return torch.nonzero(torch.isin(self.reference.caption_image, index)).flatten()

    # -- hooks ---------------------------------------------------------------------------------
    def before_training_exp(self, strategy, **kwargs) -> None:
        clip = strategy.model.model
        if self.initial is None:
            self.initial = frozen_copy(clip)
        self.initial.to(strategy.device)
        if self.reference is None:
            self.reference = self._reference() if callable(self._reference) else self._reference
            if self.reference is None or len(self.reference.keys) == 0:
                raise ConfigError("zscl needs reference pairs: set control.name")
        if self.p.ref_texts == "all" and self._teacher_texts is None:  # once: the initial model is frozen
            self._teacher_texts = encode_all(self.initial.encode_text, self.reference.text_inputs, 256, strategy.device)
        # Each session restarts the reference order from the seed, as the official code does (one
        # seeded process per task); so nothing needs carrying across a resumed run.
        self.generator.manual_seed(self.seed)
        self._order = torch.empty(0, dtype=torch.long)
        self.anchor = [p.detach().clone() for p in clip.parameters() if p.requires_grad]
        self.step = 0
        if self.p.we:
            self.average = AveragedModel(clip)
            self.average.update_parameters(clip)  # theta_start counts once, as in the official code

    def before_backward(self, strategy, **kwargs) -> None:
        clip = strategy.model.model
        index = self.next_indices()
        self.last_indices = index
        images = _take(self.reference.image_inputs, index).to(strategy.device)
        text_index = self._texts_for(index)
        with torch.no_grad():
            teacher_image = F.normalize(self.initial.encode_image(images), dim=-1)
            if self._teacher_texts is not None:
                teacher_text = self._teacher_texts
            else:
                texts = self.reference.text_inputs[text_index].to(strategy.device)
                teacher_text = F.normalize(self.initial.encode_text(texts), dim=-1)
        student_image = F.normalize(clip.encode_image(images), dim=-1)
        if self.p.text_features == "teacher":
            student_text = teacher_text
        else:
            texts = self.reference.text_inputs[text_index].to(strategy.device)
            student_text = F.normalize(clip.encode_text(texts), dim=-1)
        scale = logit_scale(clip)
        distill = zscl_loss(student_image, student_text, teacher_image, teacher_text, scale, self.p.temperature)
        loss = self.p.weight * distill
        with torch.no_grad():  # the term's value at student = teacher: the teacher's entropies
            at_teacher = zscl_loss(teacher_image, teacher_text, teacher_image, teacher_text, scale, self.p.temperature)
        record_term(strategy, "zscl", loss, reported=self.p.weight * kl_of(distill, at_teacher))
        if self.p.l2 > 0:
            l2 = self.p.l2 * l2_penalty([p for p in clip.parameters() if p.requires_grad], self.anchor)
            record_term(strategy, "l2", l2)
            loss = loss + l2
        strategy.loss = strategy.loss + loss

    def after_update(self, strategy, **kwargs) -> None:
        if self.p.we and self.step % self.p.we_interval == 0:
            self.average.update_parameters(strategy.model.model)
        self.step += 1

    def after_training_exp(self, strategy, **kwargs) -> None:
        if not self.p.we:
            return
        if self.step > 0 and (self.step - 1) % self.p.we_interval != 0:  # the final weights, once
            self.average.update_parameters(strategy.model.model)
        averaged = dict(self.average.module.named_parameters())
        with torch.no_grad():
            for name, p in strategy.model.model.named_parameters():
                if p.requires_grad:
                    p.copy_(averaged[name])
        self.average = None
        strategy.model.invalidate()


class ZSCL(declared.ZSCL, ClipStrategy):
    """ZSCL: distil the initial model on reference pairs, plus weight ensembling (Zheng et al. 2023)."""

    def __init__(self, *, classifier: Any, context: Any = None, params: Optional[ZSCLParams] = None, **kwargs: Any) -> None:
        params = params or ZSCLParams()
        if context is None or (context.reference is None and not reference_files().complete(params.ref_images, params.ref_sentences)):
            raise ConfigError("zscl needs reference pairs: set control.name (its complement), or strategy.ref_images "
                              "and strategy.ref_sentences")
        self.initial_model = frozen_copy(classifier.model)  # the model before any session
        super().__init__(classifier=classifier, context=context, params=params, **kwargs)

    def method_plugins(self, classifier: torch.nn.Module) -> list[SupervisedPlugin]:
        p, context = self.params, self.context
        reference = context.reference
        if p.configured_reference():
            def reference() -> ControlSet:
                return reference_files().reference_set(p.ref_images, p.ref_sentences, p.ref_column, p.ref_root,
                                                       context.encode_images, context.encode_texts, context.reference)
        loss = {k: getattr(p, k) for k in ("weight", "temperature", "ref_batch_size", "ref_texts", "text_features",
                                           "we", "we_interval", "l2")}
        return [ZSCLPlugin(reference, self.initial_model, **loss)]
