"""MLflow: the only writer to the tracking store (logger, store, server, params, run labels).

``from continual.tracking import MLflowLogger`` works, as it did before the wing existed (Avalanche
users pass it to ``EvaluationPlugin(loggers=[...])``). It is imported on first use, so that
``continual.tracking.names`` and the other light modules do not pay for mlflow.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "MLflowLogger":
        from continual.tracking.logger import MLflowLogger

        return MLflowLogger
    raise AttributeError(f"module 'continual.tracking' has no attribute {name!r}")
