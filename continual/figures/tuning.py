"""Figures of a ``continual tune`` study, from plain numbers (the study itself stays in
``continual.compare.tune``): the objective over trials with the running best, each tuned
parameter's importance, and the objective against each tuned parameter."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


@dataclass(frozen=True)
class TrialPoint:
    """One trial as the figures need it: its objective (a pruned trial's last reported value)
    and the values it tried."""

    number: int
    value: float
    pruned: bool
    params: Mapping[str, Any] = field(default_factory=dict)


def objective_by_trial(points: Sequence[TrialPoint], objective: str, maximize: bool, title: str) -> Figure:
    """Every trial's objective, pruned ones as crosses, and the best complete value so far."""
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    complete = [p for p in points if not p.pruned]
    pruned = [p for p in points if p.pruned]
    ax.scatter([p.number for p in complete], [p.value for p in complete], label="complete", zorder=3)
    if pruned:
        ax.scatter([p.number for p in pruned], [p.value for p in pruned], marker="x", color="grey",
                   label="pruned (its value when stopped, at an earlier session)")
    best, running = None, []
    for p in complete:
        best = p.value if best is None else (max if maximize else min)(best, p.value)
        running.append(best)
    if complete:
        ax.step([p.number for p in complete], running, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def importance(values: Mapping[str, float], title: str) -> Figure:
    """Each tuned parameter's share of the objective's variance (fANOVA), largest on top."""
    names = sorted(values, key=values.get)
    fig = Figure(figsize=(6, 0.8 + 0.4 * len(names)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(names, [values[n] for n in names])
    ax.set_xlabel("importance (fANOVA share of the objective's variance)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def objective_by_param(points: Sequence[TrialPoint], space: Mapping[str, tuple[str, Sequence[Any]]],
                       objective: str) -> Figure:
    """The objective of the complete trials against each tuned parameter; ``space`` maps a key
    to its kind (log | float | int | choice) and, for a choice, its choices."""
    complete = [p for p in points if not p.pruned]
    fig = Figure(figsize=(3.2 * max(1, len(space)), 3))
    FigureCanvasAgg(fig)
    for i, (key, (kind, choices)) in enumerate(space.items()):
        ax = fig.add_subplot(1, len(space), i + 1)
        values = [p.params.get(key) for p in complete]
        ys = [p.value for p in complete]
        if kind == "choice":
            labels = [str(c) for c in choices]
            ax.scatter([labels.index(str(v)) for v in values], ys)
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter(values, ys)
            if kind == "log":
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
    fig.tight_layout()
    return fig


def save_all(points: Sequence[TrialPoint], importances: Mapping[str, float],
             space: Mapping[str, tuple[str, Sequence[Any]]], objective: str, maximize: bool, title: str,
             folder: str) -> list[str]:
    """Draw the study's figures into ``folder``; returns the file names written."""
    figures = {"objective_by_trial.png": objective_by_trial(points, objective, maximize, title)}
    if importances:
        figures["param_importance.png"] = importance(importances, f"what {objective} depends on")
    if space and any(not p.pruned for p in points):
        figures["objective_by_param.png"] = objective_by_param(points, space, objective)
    for name, fig in figures.items():
        fig.savefig(Path(folder, name), dpi=110)
    return list(figures)
