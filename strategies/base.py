"""The strategy base: CLIP classification trained session by session on Avalanche's template.

``ClipStrategy`` is an Avalanche ``SupervisedTemplate`` whose model is a
:class:`continual.clip.heads.ClipClassifier` (logits = s * f_I(x) W^T over the stream's class names)
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

At scale (``train.precision``, ``accumulation_steps``, ``grad_checkpointing``, ``workers``, and
data parallelism under torchrun, see :mod:`continual.system.distributed`): ``train.batch_size`` is the
batch of one optimizer step over all processes and micro-batches; the model runs in
DistributedDataParallel; methods gather batch-direction features with
``continual.system.distributed.gather``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from continual.system import distributed
from continual.clip.backbone import enable_grad_checkpointing
from continual.context import StrategyContext
from continual.errors import UserError
from continual.strategy import StrategyDeclaration
from continual.clip.heads import ClipClassifier, logit_scale, restrict
from continual.clip.optimizer import build_optimizer
from continual.clip.schedule import lr_factor, warmup_steps


TASK_LOSSES = ("ce", "contrastive")


def record_term(strategy: Any, name: str, value: torch.Tensor, reported: Optional[torch.Tensor] = None) -> None:
    """Note a loss term as it enters the loss, on strategies that keep them (ClipStrategy; other
    Avalanche strategies ignore it): for the divergence guard and the loss curves. ``reported``:
    the value to log instead (a distillation's KL; see ``continual.run.loss_components``)."""
    if hasattr(strategy, "record_term"):
        strategy.record_term(name, value, reported)


def contrastive_task_loss(logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """(CE(Z, I) + CE(Z^T, I)) / 2 for Z = s f_I(x) f_T(t)^T [B, B]: pair i is the positive of row
    and column i (CLIP's symmetric InfoNCE)."""
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
            + F.cross_entropy(logits.t(), targets, label_smoothing=label_smoothing)) / 2


class LRSchedule(SupervisedPlugin, supports_distributed=True):
    """Sets each iteration's learning rate from :func:`lr_factor`; restarts every session. Steps
    are optimizer steps (``accumulation_steps`` micro-batches each); the warm-up is
    ``train.warmup_steps``, or ``train.warmup_fraction`` of the session's steps."""

    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.cfg = cfg

    def before_training_iteration(self, strategy: "ClipStrategy", **kwargs) -> None:
        k = getattr(self.cfg, "accumulation_steps", 1)  # steps are optimizer steps
        if self.cfg.iterations:
            step, total = strategy.clock.train_exp_iterations // k, math.ceil(self.cfg.iterations / k)
        else:
            per_epoch = math.ceil(len(strategy.dataloader) / k)
            step = strategy.clock.train_exp_epochs * per_epoch + strategy.clock.train_epoch_iterations // k
            total = per_epoch * strategy.train_epochs
        warmup = warmup_steps(total, self.cfg.warmup_steps, getattr(self.cfg, "warmup_fraction", 0.0))
        factor = lr_factor(step, total, warmup, self.cfg.scheduler)
        for group in strategy.optimizer.param_groups:
            group["lr"] = group.get("initial_lr", self.cfg.lr) * factor


class NonFiniteLossError(UserError):
    """Training diverged: a loss term became NaN or infinite."""


class FiniteLossGuard(SupervisedPlugin, supports_distributed=True):
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


class ClipStrategy(SupervisedTemplate, StrategyDeclaration):
    """Fine-tuning of a CLIP classifier with cross-entropy over the label space (the baseline
    every method builds on). Subclasses inherit their declaration (``Params``, ``stream_kinds``,
    ..., see :class:`continual.strategy.StrategyClass`) and add plugins or loss terms."""

    def __init__(self, *, classifier: ClipClassifier, train: Any, params: Any = None,
                 context: Optional[StrategyContext] = None, plugins: Sequence[SupervisedPlugin] = (),
                 device: str = "cpu", eval_batch_size: int = 256,
                 evaluator: Optional[EvaluationPlugin] = None, task_loss: str = "ce",
                 session_lr: Optional[dict[int, float]] = None) -> None:
        if task_loss not in TASK_LOSSES:
            raise ValueError(f"task_loss must be one of {TASK_LOSSES}, got '{task_loss}'")
        self.task_loss = task_loss
        self.session_lr = dict(session_lr or {})  # experience index -> its learning rate
        self.train_cfg = train
        self.params = params if params is not None or self.Params is None else self.Params()
        self.context = context
        self.seen_classes: list[int] = []
        self.current_classes: list[int] = []
        self.examples_seen = 0  # training examples processed, over all sessions
        self.loss_terms: dict[str, float] = {}  # this iteration's loss terms, by name
        # f_I(x) (normalised) and W of the current mini-batch, kept by forward() for the methods
        self.mb_image_features: Optional[torch.Tensor] = None
        self.mb_class_features: Optional[torch.Tensor] = None
        self.mb_text_features: Optional[torch.Tensor] = None  # f_T of each row's caption (pairs)
        if getattr(train, "grad_checkpointing", False):
            enable_grad_checkpointing(classifier.model)
        super().__init__(
            model=classifier,
            optimizer=self._new_optimizer(classifier),
            train_mb_size=self.micro_batch_size(train.batch_size),
            train_epochs=train.epochs,
            eval_mb_size=eval_batch_size,
            device=device,
            plugins=[LRSchedule(train), *self.method_plugins(classifier), FiniteLossGuard(), *plugins],
            evaluator=evaluator or _silent_evaluator(),
        )
        # DistributedDataParallel around the classifier under torchrun (None in a plain process)
        self.ddp = distributed.wrap(classifier.to(self.device), self.device)

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

    def _before_training_exp(self, **kwargs) -> None:
        self.current_classes = [int(c) for c in self.experience.classes_in_this_experience]
        self.seen_classes = sorted(set(self.seen_classes) | set(self.current_classes))
        super()._before_training_exp(**kwargs)

    def record_term(self, name: str, value: torch.Tensor, reported: Optional[torch.Tensor] = None) -> None:
        """Note a loss term as it enters the loss (for the divergence guard and the loss curves);
        ``reported`` is logged instead when given (a distillation's KL)."""
        self.loss_terms[name] = float((value if reported is None else reported).detach())

    def resume_state(self) -> dict:
        """What this strategy must carry across a crash besides the weights (JSON-able)."""
        clock = {k: v for k, v in vars(self.clock).items() if isinstance(v, int)}
        return {"seen_classes": self.seen_classes, "examples_seen": self.examples_seen, "clock": clock}

    def load_resume_state(self, state: dict) -> None:
        self.seen_classes = list(state["seen_classes"])
        self.examples_seen = int(state["examples_seen"])
        for key, value in state["clock"].items():
            setattr(self.clock, key, value)  # Avalanche's x_plot steps continue, not restart

    def _after_training_iteration(self, **kwargs) -> None:
        self.examples_seen += len(self.mb_y) * distributed.world_size()
        super()._after_training_iteration(**kwargs)
        if self.train_cfg.iterations and self.clock.train_exp_iterations >= self.train_cfg.iterations:
            self.stop_training()

    # -- scale: data parallelism, accumulation, bf16, workers -------------------------------------
    def micro_batch_size(self, batch_size: int, what: str = "train.batch_size") -> int:
        """Examples per process and forward pass when ``batch_size`` make one optimizer step."""
        return distributed.local_batch_size(batch_size, getattr(self.train_cfg, "accumulation_steps", 1), what)

    def call_model(self, method: str, *args: Any) -> Any:
        """``self.model.<method>(*args)``; while training under DDP, through DDP's forward, which
        readies the gradient all-reduce of the step (see ``continual.system.distributed._MethodCall``)."""
        if self.ddp is not None and self.model.training and torch.is_grad_enabled():
            return self.ddp(method, *args)
        return getattr(self.model, method)(*args)

    def forward(self) -> torch.Tensor:
        """Logits of the batch, keeping f_I(x) for the methods (``mb_image_features``): over the
        classes, keeping W (``mb_class_features``); or, for the contrastive loss while training,
        over the batch's own captions, keeping their f_T (``mb_text_features``), [B, B] (under
        torchrun the criterion builds the global matrix from them)."""
        self.mb_image_features = self.call_model("encode_images", self.mb_x)
        self.mb_class_features = self.mb_text_features = None
        scale = logit_scale(self.model.model)
        if self.is_training and self.task_loss == "contrastive":
            self.mb_text_features = self.model.class_embeddings(self.mb_y)
            return scale * self.mb_image_features @ self.mb_text_features.t()
        self.mb_class_features = self.model.class_embeddings()
        return scale * self.mb_image_features @ self.mb_class_features.t()

    def make_train_dataloader(self, **kwargs) -> None:
        """Avalanche's loader in a plain process; under DDP this process's shard
        (DistributedSampler, seeded with the run's seed). ``train.workers`` loader processes;
        ``train.drop_last`` drops each epoch's last partial batch."""
        workers = getattr(self.train_cfg, "workers", 0)
        drop_last = getattr(self.train_cfg, "drop_last", False)
        if distributed.is_distributed():
            self.dataloader = distributed.train_loader(self.adapted_dataset, self.train_mb_size, torch.initial_seed(),
                                                       workers, self.adapted_dataset.collate_fn, drop_last)
        else:
            super().make_train_dataloader(**{"num_workers": workers, "persistent_workers": workers > 0,
                                             "drop_last": drop_last, **kwargs})
        if self.train_cfg.iterations:  # enough passes for the budget; _after_training_iteration stops on time
            self.train_epochs = math.ceil(self.train_cfg.iterations / max(1, len(self.dataloader)))

    def _before_training_epoch(self, **kwargs) -> None:
        epoch = self.experience.current_experience * self.train_epochs + self.clock.train_exp_epochs
        distributed.set_epoch(self.dataloader, epoch)
        super()._before_training_epoch(**kwargs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        bf16 = getattr(self.train_cfg, "precision", "fp32") == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def training_epoch(self, **kwargs) -> None:
        """Avalanche's SGD iteration (``SGDUpdate.training_epoch``: the same callbacks in the same
        order), plus gradient accumulation over ``train.accumulation_steps`` micro-batches (DDP
        all-reduces on the last one only) and bf16 autocast of the forward pass and loss terms
        (not of the backward pass or the update). With one micro-batch per step and fp32 it does
        exactly what Avalanche's loop does."""
        k = getattr(self.train_cfg, "accumulation_steps", 1)
        n = len(self.dataloader)
        for i, self.mbatch in enumerate(self.dataloader):
            if self._stop_training:
                break
            self._unpack_minibatch()
            self._before_training_iteration(**kwargs)
            first = i - i % k
            self._micro_batches = min(k, n - first)  # the epoch's last step may have fewer
            last = i == first + self._micro_batches - 1
            if i == first:
                self.optimizer.zero_grad()
            self.loss = self._make_empty_loss()
            with distributed.sync_gradients(self.ddp, last), self._autocast():
                self._before_forward(**kwargs)
                self.mb_output = self.forward()
                self._after_forward(**kwargs)
                self.loss += self.criterion()
                self._before_backward(**kwargs)
            self.backward()
            self._after_backward(**kwargs)
            if last:
                self._before_update(**kwargs)
                self.optimizer_step()
                self._after_update(**kwargs)
            self._after_training_iteration(**kwargs)

    def backward(self) -> None:
        """Backward of the loss over the step's micro-batches: each adds its share (1/m)."""
        loss = self.loss / self._micro_batches if getattr(self, "_micro_batches", 1) > 1 else self.loss
        loss.backward(retain_graph=self.retain_graph)

    def label_space(self) -> list[int]:
        """The classes the training loss ranges over (train.label_space)."""
        space = self.train_cfg.label_space
        if space == "current":
            return self.current_classes
        if space == "all":
            return list(range(len(self.model.class_names)))
        return self.seen_classes

    def criterion(self) -> torch.Tensor:
        """L_task: CE over the label space, or the symmetric contrastive loss, with label smoothing."""
        if self.task_loss == "contrastive" and self.is_training:
            logits = self.mb_output
            if distributed.is_distributed():  # the global batch: every process's pairs
                logits = logit_scale(self.model.model) * (distributed.gather(self.mb_image_features, with_grad=True)
                                                          @ distributed.gather(self.mb_text_features, with_grad=True).t())
            loss = contrastive_task_loss(logits, self.train_cfg.label_smoothing)
        else:
            logits, targets = restrict(self.mb_output, self.mb_y, self.label_space())
            loss = F.cross_entropy(logits, targets, label_smoothing=self.train_cfg.label_smoothing)
        self.loss_terms = {}
        self.record_term("task", loss)
        return loss
