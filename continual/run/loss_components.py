"""Training curves logged while a session trains: the loss, and each of its components.

Avalanche's own epoch loss (the total being minimised), and :class:`LossComponents`: the epoch
mean of every term a strategy records in ``strategy.loss_terms`` (the task loss, each method's
weighted term). A distillation term is recorded as its KL divergence from the teacher (the term
minus its value at student = teacher), so that its curve reads 0 when the student equals the
teacher and shows how far the student has moved; the total still holds the term as minimised.
"""

from __future__ import annotations

from typing import Any, Dict

from avalanche.evaluation import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics import loss_metrics
from avalanche.training.plugins import EvaluationPlugin

from continual.tracking import names as N


class LossComponents(PluginMetric[Dict[str, float]]):
    """Epoch means of ``strategy.loss_terms``, emitted as ``loss/<term>`` at the epoch's end
    (x = Avalanche's global training iteration, as its own loss metric)."""

    def __init__(self) -> None:
        super().__init__()
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def reset(self) -> None:
        self._sums, self._counts = {}, {}

    def update(self, terms: Dict[str, float]) -> None:
        for name, value in terms.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def result(self) -> Dict[str, float]:
        return {name: total / self._counts[name] for name, total in self._sums.items()}

    def before_training_epoch(self, strategy: Any) -> None:
        self.reset()

    def after_training_iteration(self, strategy: Any) -> None:
        self.update(getattr(strategy, "loss_terms", {}))

    def after_training_epoch(self, strategy: Any) -> list[MetricValue]:
        x = strategy.clock.train_iterations
        return [MetricValue(self, N.loss(name), value, x) for name, value in sorted(self.result().items())]

    def __str__(self) -> str:
        return "LossComponents"


def training_curves(logger: Any) -> EvaluationPlugin:
    """An Avalanche evaluation plugin sending the epoch loss and its components to ``logger``."""
    return EvaluationPlugin(loss_metrics(epoch=True), LossComponents(), loggers=[logger])
