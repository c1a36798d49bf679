"""LwF: Learning without Forgetting (Li & Hoiem, 2016) for a CLIP classifier.

The teacher is the model as it was at the start of the session (the end of the previous one;
the pre-trained model in session 1), frozen. On a batch x of the current session, over a set
of classes C:

    Z_t = s_old * f_I^old(x) W_old[C]^T            (no grad; W_old computed once per session)
    Z_s = s * f_I(x) W[C]^T                         (the student's own logits)
    KD(a, b; T) = T^2 * mean_i CE(softmax(a_i / T), softmax(b_i / T))
    L = L_task + alpha * KD(Z_t, Z_s; T),           alpha = 1, T = 2

W[c] is class c's normalised template-mean text feature (``continual.clip.heads``).

- ``classes``: ``current`` (default; METHODS.md, and ZSCL's LwF baseline: the current session's
  class texts) or ``seen_before`` (classic LwF: the outputs of the classes learnt in earlier
  sessions; nothing is distilled in session 1).
- ``text_features``: ``student`` (default; LwF distils the network's own outputs, so the text
  side is regularised too) or ``teacher`` (ZSCL's LwF code: the student's image features are
  scored against the TEACHER's class text features, Z_s = s * f_I(x) W_old[C]^T).
- ``symmetric``: also distil the class-to-image direction over the batch, KD(Z_t^T, Z_s^T; T)
  (ZSCL's LwF code does; off by default). Under data parallelism that direction is over the
  global batch: both logit matrices are gathered from every process (the student's with
  gradient, see ``continual.system.distributed``).

Avalanche's own ``LwFPlugin`` is not reused: it distils the KL divergence without the T^2
factor, only over the previously seen classes, and re-runs the whole classifier as teacher;
:func:`kd_loss` is the cross-entropy form (equal to the teacher's entropy, with zero gradient,
when student = teacher), as in the ZSCL code the published LwF numbers come from.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn

from continual.system import distributed
from continual.clip.heads import logit_scale
from strategies import declarations as declared
from strategies.base import ClipStrategy, record_term
from strategies.declarations import LwFParams
from strategies.distill import frozen_copy, kd, kl_of


class LwFPlugin(SupervisedPlugin, supports_distributed=True):
    """Adds ``alpha * KD(Z_t, Z_s; T)`` in ``before_backward``. Works in any Avalanche strategy
    whose model is a :class:`continual.clip.heads.ClipClassifier` (``mb_output`` = its logits)."""

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0, classes: str = "current",
                 text_features: str = "student", symmetric: bool = False) -> None:
        super().__init__()
        LwFParams(alpha, temperature, classes, text_features, symmetric)  # validate
        self.alpha, self.temperature, self.classes = alpha, temperature, classes
        self.text_features, self.symmetric = text_features, symmetric
        self.seen_before: set[int] = set()
        self.distilled: list[int] = []
        self.teacher: Optional[nn.Module] = None  # frozen copy of the ClipClassifier
        self.teacher_text: Optional[torch.Tensor] = None  # W_old[C], cached for the session
        self.at_teacher: Optional[torch.Tensor] = None  # the last term's value at student = teacher

    def before_training_exp(self, strategy, **kwargs) -> None:
        current = sorted(int(c) for c in strategy.experience.classes_in_this_experience)
        self.distilled = current if self.classes == "current" else sorted(self.seen_before)
        self.teacher = None  # release the previous session's teacher before copying
        self.teacher = frozen_copy(strategy.model)
        self.teacher.invalidate()
        with torch.no_grad():
            # the class texts the student trains with (model.train_templates: all, or the first)
            self.teacher_text = self.teacher.class_embeddings(templates=strategy.model.train_templates)[self.distilled]

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.seen_before |= {int(c) for c in strategy.experience.classes_in_this_experience}

    def before_backward(self, strategy, **kwargs) -> None:
        if not self.distilled:
            return
        term = self.term(strategy.model, strategy.mb_x, strategy.mb_output)
        weighted = self.alpha * term
        record_term(strategy, "lwf", weighted, reported=self.alpha * kl_of(term, self.at_teacher))
        strategy.loss = strategy.loss + weighted

    def term(self, student: nn.Module, x: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """KD(Z_t, Z_s; T) (+ the transposed direction) on the batch ``x``; ``student_logits``
        are the student classifier's logits over all classes."""
        with torch.no_grad():
            teacher_image = F.normalize(self.teacher.model.encode_image(x), dim=-1)
            z_t = logit_scale(self.teacher.model) * teacher_image @ self.teacher_text.t()
        if self.text_features == "student":
            z_s = student_logits[:, self.distilled]
        else:
            image = F.normalize(student.model.encode_image(x), dim=-1)
            z_s = logit_scale(student.model) * image @ self.teacher_text.t()
        loss = kd(z_t, z_s, self.temperature)
        self.at_teacher = kd(z_t, z_t, self.temperature)  # the term's value at student = teacher
        if self.symmetric:  # over the batch: every process's rows
            z_t, z_s = distributed.gather(z_t), distributed.gather(z_s, with_grad=True)
            loss = loss + kd(z_t.t(), z_s.t(), self.temperature)
            self.at_teacher = self.at_teacher + kd(z_t.t(), z_t.t(), self.temperature)
        return loss


class LwF(declared.LwF, ClipStrategy):
    """Learning without Forgetting: distil the previous model's logits over the current classes (T = 2)."""

    def method_plugins(self, classifier: torch.nn.Module) -> list[SupervisedPlugin]:
        self.lwf = LwFPlugin(**vars(self.params))
        return [self.lwf]

    def resume_state(self) -> dict:
        return dict(super().resume_state(), lwf_seen_before=sorted(self.lwf.seen_before))

    def load_resume_state(self, state: dict) -> None:
        super().load_resume_state(state)
        self.lwf.seen_before = set(state.get("lwf_seen_before", []))
