"""Distillation pieces shared by LwF, VR-LwF, Mod-X and ZSCL: the frozen teacher f^old and KD.

The teacher is a deep copy of the CLIP model (``classifier.model``), in eval mode, with every
parameter's ``requires_grad`` off; methods call it under ``torch.no_grad()``. Which model it
copies:

- ``"previous"``: the model as it is at the start of each session, i.e. at the end of the
  previous one (the pre-trained model for the first session). Refreshed every session.
- ``"initial"``: the model before any training, copied once (at construction when the model is
  given, otherwise at the first session's start, which is the same model).

At most one frozen copy is alive: the old copy is released before the new one is made.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from strategies.declarations import TEACHERS



def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode that never trains (no gradient is kept)."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
        p.grad = None
    return teacher


def kd(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """KD(a, b; T) = T^2 * mean_i sum_j -softmax(a_i / T)_j * log softmax(b_i / T)_j.

    The cross-entropy of the student's tempered distribution against the teacher's, averaged over
    rows; the teacher side carries no gradient. At a = b the value is T^2 times the teacher's mean
    entropy and the gradient with respect to b is zero.
    """
    p = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    return -(p * log_q).sum(dim=-1).mean() * temperature ** 2


def kl_of(term: torch.Tensor, at_teacher: torch.Tensor) -> torch.Tensor:
    """A cross-entropy distillation term as a KL divergence: the term minus its value at
    student = teacher (the teacher's entropy, T^2-scaled), which is what the student has moved
    away from the teacher; 0 when they are equal. For reporting: the loss keeps ``term``."""
    return term.detach() - at_teacher.detach()


def _device(model: nn.Module) -> Optional[torch.device]:
    param = next(model.parameters(), None)
    return None if param is None else param.device


class Teacher:
    """Holds the frozen old model for ``which`` in :data:`TEACHERS`."""

    def __init__(self, which: str = "previous", model: Optional[nn.Module] = None) -> None:
        if which not in TEACHERS:
            raise ValueError(f"teacher must be one of {', '.join(TEACHERS)}, got '{which}'")
        self.which = which
        self.model: Optional[nn.Module] = None
        if which == "initial" and model is not None:
            self.model = frozen_copy(model)

    def refresh(self, model: nn.Module) -> bool:
        """Call at the start of every session with the model about to train; returns True when
        the teacher was (re)made, False when it stays (the initial model)."""
        if self.which == "initial" and self.model is not None:
            device = _device(model)
            if device is not None:  # the student may have moved since the copy was made
                self.model.to(device)
            return False
        self.model = None  # release the old copy first: never two copies alive
        self.model = frozen_copy(model)
        return True

    def __call__(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("the teacher is made at the start of the first session (before_training_exp)")
        return self.model
