"""The strategy base: CLIP classification trained session by session on Avalanche's template.

``ClipStrategy`` is an Avalanche ``SupervisedTemplate`` whose model is a
:class:`continual.heads.ClipClassifier` (logits = s * f_I(x) W^T over the stream's class names)
and whose task loss is label-smoothed cross-entropy over the configured label space, or, on
image-text streams (batches of (image, caption id)), CLIP's symmetric contrastive loss over the
batch's pairs:

    L_task = CE(restrict(logits, label space), y; smoothing)                      (task_loss="ce")
    L_task = (CE(s S, I; smoothing) + CE(s S^T, I; smoothing)) / 2, S = f_I(x) f_T(t_y)^T  ("contrastive")

The forward keeps f_I(x) (normalised) as ``mb_image_features`` so that methods reuse it.

Methods add behaviour the Avalanche way: as plugins (callbacks that add loss terms in
``before_backward`` or act after an experience), or by overriding ``criterion``; a method's
hyper-parameters are a ``Params`` dataclass validated from the config's ``strategy`` section.
A fresh optimizer is built for every session over the trainable parameters only (with the
session's own learning rate where one is given), with a cosine (or constant) learning-rate
schedule and optional linear warm-up, restarting each session; a session lasts train.epochs
passes or exactly train.iterations iterations.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from continual.context import StrategyContext
from continual.errors import UserError
from continual.heads import ClipClassifier, restrict


TASK_LOSSES = ("ce", "contrastive")


def build_optimizer(params: list[torch.nn.Parameter], cfg: Any, lr: Optional[float] = None) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum) over ``params`` with ``lr`` (default ``cfg.lr``) and ``cfg.weight_decay``."""
    lr = cfg.lr if lr is None else lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)


def contrastive_task_loss(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """(CE(Z, I) + CE(Z^T, I)) / 2 for Z = s f_I(x) f_T(t)^T [B, B]: pair i is the positive of row
    and column i (CLIP's symmetric InfoNCE)."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.t(), targets, label_smoothing=label_smoothing)) / 2


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base lr at ``step`` (0-based) of ``total``: linear warm-up over
    ``warmup`` steps, then cosine decay to 0 (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class LRSchedule(SupervisedPlugin):
    """Sets each iteration's learning rate from :func:`lr_factor`; restarts every session."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    def before_training_iteration(self, strategy: "ClipStrategy", **kwargs) -> None:
        total = strategy.session_iterations()
        factor = lr_factor(strategy.clock.train_exp_iterations, total, self.cfg.warmup_steps, self.cfg.scheduler)
        for group in strategy.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", self.cfg.lr) * factor


class NonFiniteLossError(UserError):
    """Training diverged: a loss term became NaN or infinite."""


class FiniteLossGuard(SupervisedPlugin):
    """Stops a session at the first non-finite loss, naming the step and the term.

    Terms are those recorded in ``strategy.loss_terms`` (the task loss, and each method's
    regulariser); the run is then marked FAILED and the last good checkpoint kept.
    """

    def before_backward(self, strategy: "ClipStrategy", **kwargs) -> None:
        if torch.isfinite(strategy.loss).all():
            return
        bad = [name for name, value in strategy.loss_terms.items() if not math.isfinite(value)] or ["total"]
        session = strategy.experience.current_experience + 1
        raise NonFiniteLossError(
            f"training diverged: loss is {float(strategy.loss):g} at session {session}, iteration "
            f"{strategy.clock.train_exp_iterations + 1} (non-finite term: {', '.join(bad)}); "
            "lower train.lr or the method's loss weight")


def _silent_evaluator() -> EvaluationPlugin:
    """No Avalanche metrics: the runner evaluates and logs (this also avoids its warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return EvaluationPlugin(loggers=[])


class ClipStrategy(SupervisedTemplate):
    """Fine-tuning of a CLIP classifier with cross-entropy over the label space (the baseline
    every method builds on). Subclasses set ``Params`` and add plugins or loss terms."""

    Params: ClassVar[Optional[type]] = None
    # Which backbone parameters train; None = the config's model.trainable.
    backbone_trainable: ClassVar[Optional[str]] = None
    # The kinds of stream the method is defined on (the runner refuses others before training).
    stream_kinds: ClassVar[tuple[str, ...]] = ("classification", "pairs")

    def __init__(self, *, classifier: ClipClassifier, train: Any, params: Any = None,
                 context: Optional[StrategyContext] = None, plugins: Sequence[SupervisedPlugin] = (),
                 device: str = "cpu", eval_batch_size: int = 256,
                 evaluator: Optional[EvaluationPlugin] = None, task_loss: str = "ce",
                 session_lr: Optional[dict[int, float]] = None) -> None:
        if task_loss not in TASK_LOSSES:
            raise ValueError(f"task_loss must be one of {TASK_LOSSES}, got '{task_loss}'")
        self.task_loss = task_loss
        self.session_lr = dict(session_lr or {})  # experience index -> its learning rate
        self.mb_image_features: Optional[torch.Tensor] = None
        self.train_cfg = train
        self.params = params if params is not None or self.Params is None else self.Params()
        self.context = context
        self.seen_classes: list[int] = []
        self.current_classes: list[int] = []
        self.examples_seen = 0  # training examples processed, over all sessions
        self.loss_terms: dict[str, float] = {}  # this iteration's loss terms, by name
        super().__init__(
            model=classifier,
            optimizer=self._new_optimizer(classifier),
            train_mb_size=train.batch_size,
            train_epochs=train.epochs,
            eval_mb_size=eval_batch_size,
            device=device,
            plugins=[LRSchedule(train), *self.method_plugins(classifier), FiniteLossGuard(), *plugins],
            evaluator=evaluator or _silent_evaluator(),
        )

    # -- hooks for methods -------------------------------------------------------------------
    def method_plugins(self, classifier: ClipClassifier) -> list[SupervisedPlugin]:
        """Plugins that implement the method (none for plain fine-tuning); ``classifier`` is the
        model before any training (``self.model`` does not exist yet)."""
        return []

    def trainable(self, model: torch.nn.Module) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    # -- Avalanche template overrides --------------------------------------------------------
    def _new_optimizer(self, model: torch.nn.Module, lr: Optional[float] = None) -> torch.optim.Optimizer:
        params = self.trainable(model)
        if not params:
            raise ValueError(f"{type(self).__name__} has no trainable parameters (model.trainable is 'none'?)")
        optimizer = build_optimizer(params, self.train_cfg, lr)
        for group in optimizer.param_groups:
            group["initial_lr"] = group["lr"]
        return optimizer

    def make_optimizer(self, **kwargs) -> None:
        """A fresh optimizer (no state carried across sessions) over the trainable parameters."""
        self.optimizer = self._new_optimizer(self.model, self.session_lr.get(self.experience.current_experience))

    def make_train_dataloader(self, **kwargs) -> None:
        super().make_train_dataloader(**kwargs)
        if self.train_cfg.iterations:  # enough passes for the budget; IterationBudget stops on time
            self.train_epochs = math.ceil(self.train_cfg.iterations / max(1, len(self.dataloader)))

    def session_iterations(self) -> int:
        """Iterations of the current session (for the learning-rate schedule)."""
        return self.train_cfg.iterations or len(self.dataloader) * self.train_epochs

    def _after_training_iteration(self, **kwargs) -> None:
        self.examples_seen += len(self.mb_y)
        super()._after_training_iteration(**kwargs)
        if self.train_cfg.iterations and self.clock.train_exp_iterations >= self.train_cfg.iterations:
            self.stop_training()

    def _before_training_exp(self, **kwargs) -> None:
        self.current_classes = [int(c) for c in self.experience.classes_in_this_experience]
        self.seen_classes = sorted(set(self.seen_classes) | set(self.current_classes))
        super()._before_training_exp(**kwargs)

    def record_term(self, name: str, value: torch.Tensor) -> None:
        """Note a loss term's value (for the divergence guard and for inspection)."""
        self.loss_terms[name] = float(value.detach())

    def resume_state(self) -> dict:
        """What this strategy must carry across a crash besides the weights (JSON-able)."""
        clock = {k: v for k, v in vars(self.clock).items() if isinstance(v, int)}
        return {"seen_classes": self.seen_classes, "examples_seen": self.examples_seen, "clock": clock}

    def load_resume_state(self, state: dict) -> None:
        self.seen_classes = list(state["seen_classes"])
        self.examples_seen = int(state["examples_seen"])
        for key, value in state["clock"].items():
            setattr(self.clock, key, value)  # Avalanche's x_plot steps continue, not restart

    def label_space(self) -> list[int]:
        """The classes the training loss ranges over (train.label_space)."""
        space = self.train_cfg.label_space
        if space == "current":
            return self.current_classes
        if space == "all":
            return list(range(len(self.model.class_names)))
        return self.seen_classes

    def forward(self) -> torch.Tensor:
        """Logits of the batch: over the classes, or (contrastive loss, training) over the
        batch's own captions, [B, B]. Keeps f_I(x) in ``mb_image_features``."""
        self.mb_image_features = self.model.encode_images(self.mb_x)
        if self.is_training and self.task_loss == "contrastive":
            return self.model.logits(self.mb_image_features, self.mb_y)
        return self.model.logits(self.mb_image_features)

    def criterion(self) -> torch.Tensor:
        """L_task: CE over the label space, or the symmetric contrastive loss, with label smoothing."""
        if self.task_loss == "contrastive" and self.is_training:
            loss = contrastive_task_loss(self.mb_output, self.train_cfg.label_smoothing)
        else:
            logits, targets = restrict(self.mb_output, self.mb_y, self.label_space())
            loss = F.cross_entropy(logits, targets, label_smoothing=self.train_cfg.label_smoothing)
        self.loss_terms = {}
        self.record_term("task", loss)
        return loss
