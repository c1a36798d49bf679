"""What a person reads of a run in MLflow: its name, its one-line description, its labels.

Runs are told apart by name (``{strategy}-{stream}-s{seed}``, made unique by the logger when
taken) and by their description (MLflow's ``mlflow.note.content``), which states the result after
every session with its units: accuracies and recalls in percent, forgetting in percentage points,
retention as a ratio of the value before training.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from omegaconf import DictConfig

from continual.tracking import names as N


def default_run_name(cfg: DictConfig) -> str:
    """``{strategy}-{stream}-s{seed}``, e.g. ``vrlwf-fashion-mnist-s0``."""
    return f"{cfg.strategy.name}-{cfg.stream.name}-s{cfg.seed}"


def _number(metrics: Mapping[str, float], key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def run_description(cfg: DictConfig, metrics: Mapping[str, float], session: int, n_sessions: int) -> str:
    """The run's result so far, in one line with units, from the metrics logged after ``session``."""
    head = f"{cfg.strategy.name} on {cfg.stream.name}, seed {cfg.seed}, "
    head += "before training" if session == 0 else f"after session {session} of {n_sessions}"
    parts = []
    for prefix, what in ((N.ACC, "accuracy"), (N.I2T, "image-to-text R@1"), (N.T2I, "text-to-image R@1")):
        if session == 0:
            cells = [v for k, v in metrics.items() if k.startswith(N.cell_prefix(prefix))]
            if cells:
                parts.append(f"zero-shot {what} {sum(cells) / len(cells):.1f}%")
            continue
        seen, forgetting = _number(metrics, N.seen(prefix)), _number(metrics, N.cl("forgetting", prefix))
        if seen is not None:
            parts.append(f"{what} on seen sessions {seen:.1f}%")
        if forgetting is not None:
            parts.append(f"forgetting {forgetting:.1f} pts")
    r1, retention = _number(metrics, N.CONTROL_R1_MEAN), _number(metrics, N.RETENTION_RELATIVE)
    if r1 is not None:
        parts.append(f"control R@1 {r1:.1f}%" + (f" (retention {retention:.2f}x)" if retention is not None else ""))
    return head + ": " + "; ".join(parts)


def session_labels(stream: Any, max_classes: int = 3) -> list[str]:
    """A column label per session: its name, or its classes (``S2: Coat, Shirt``; a count when
    there are more than ``max_classes``)."""
    labels = []
    for s in stream.sessions:
        if s.name or stream.kind != "classification":
            labels.append(s.name or f"session {s.index}")
            continue
        names = [stream.class_names[c] for c in s.classes]
        shown = ", ".join(names) if len(names) <= max_classes else f"{len(names)} classes"
        labels.append(f"S{s.index}: {shown}")
    return labels


def chance_levels(stream: Any, label_space: str) -> list[float]:
    """Chance level (%) of each session's test score: 100 / the classes it is classified among
    (all the stream's classes, or the session's own), or 100 / the captions of its test pairs."""
    if stream.kind == "pairs":
        return [100.0 / max(1, len(test.text_inputs)) for test in stream.tests]
    n_all = len(stream.class_names)
    return [100.0 / (len(s.classes) if label_space == "session" else n_all) for s in stream.sessions]


def row_labels(rows: int) -> list[str]:
    """``before training``, ``after session 1``, ... for the first ``rows`` rows."""
    return ["before training"] + [f"after session {k}" for k in range(1, rows)]
