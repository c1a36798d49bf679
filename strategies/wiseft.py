"""WiSE-FT: robust fine-tuning by weight-space ensembling (Wortsman et al., CVPR 2022),
applied after every session.

Each session fine-tunes as usual (the task loss alone); after it, every trainable parameter is
interpolated with the anchor weights:

    theta <- (1 - alpha) * theta_0 + alpha * theta_session,     alpha = 0.5

theta_0 is the pre-trained model (``anchor: initial``, the default: METHODS.md and WiSE-FT's
own recipe). ZSCL's MTIL WiSE-FT baseline anchors to the model at the start of the session
instead (``anchor: previous``) with alpha = 0.8. Avalanche has no weight interpolation; the
merge is :func:`wise_ft`, a pure function of state dicts.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from avalanche.core import SupervisedPlugin

from strategies import declarations as declared
from strategies.base import ClipStrategy
from strategies.declarations import WiSEFTParams


def wise_ft(theta_0: Mapping[str, torch.Tensor], theta_1: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """theta[k] = (1 - alpha) * theta_0[k] + alpha * theta_1[k] for every key of ``theta_1``
    (alpha = 0: the anchor, alpha = 1: the fine-tuned weights, exactly)."""
    return {k: (1 - alpha) * theta_0[k] + alpha * v for k, v in theta_1.items()}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters that train."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


class WiSEFTPlugin(SupervisedPlugin, supports_distributed=True):
    """Interpolates the trainable weights (names as in ``strategy.model.named_parameters()``)
    with the anchor after each training experience. Works with any Avalanche strategy; a model
    with ``invalidate()`` (a ClipClassifier) has its cached class features dropped after the
    weights change."""

    def __init__(self, alpha: float = 0.5, anchor: str = "initial",
                 theta_0: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        super().__init__()
        WiSEFTParams(alpha, anchor)  # validate
        self.alpha, self.anchor = alpha, anchor
        # The pre-trained weights: given, or taken when the first experience starts.
        self.theta_0 = dict(theta_0) if theta_0 is not None else None

    def before_training_exp(self, strategy, **kwargs) -> None:
        if self.theta_0 is None or self.anchor == "previous":
            self.theta_0 = trainable_state(strategy.model)

    def after_training_exp(self, strategy, **kwargs) -> None:
        params = dict(strategy.model.named_parameters())
        self.theta_0 = {n: v.to(params[n].device) for n, v in self.theta_0.items()}
        trained = {n: params[n].detach() for n in self.theta_0}
        merged = wise_ft(self.theta_0, trained, self.alpha)
        with torch.no_grad():
            for name, value in merged.items():
                params[name].copy_(value)
        if hasattr(strategy.model, "invalidate"):
            strategy.model.invalidate()


class WiSEFT(declared.WiSEFT, ClipStrategy):
    """WiSE-FT: interpolate weights with the pre-trained model after each session."""

    def __init__(self, *, classifier: torch.nn.Module, **kwargs: Any) -> None:
        # theta_0 taken here, from the model as built: still the pre-trained weights when a run
        # resumes from a checkpoint (restored after construction).
        self.theta_0 = trainable_state(classifier)
        super().__init__(classifier=classifier, **kwargs)

    def method_plugins(self, classifier: torch.nn.Module) -> list[SupervisedPlugin]:
        return [WiSEFTPlugin(**vars(self.params), theta_0=self.theta_0)]
