"""Figures of a ``continual tune`` study (matplotlib, Agg): the objective over trials with the
running best, parameter importance (optuna.importance; needs two finished trials or more), and
the objective against each tuned parameter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _finished(study: Any) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values]


def save_all(study: Any, plan: Any, folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    saved = []
    trials = _finished(study)
    if not trials:
        return saved
    objective, sign = plan.objectives[0], (1 if plan.directions[0] == "maximize" else -1)
    where = "oracle (tuned on test data)" if plan.protocol == "oracle" else "validation data"
    # objective over trials, with the running best
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = [t.number for t in trials]
    ys = [t.values[0] for t in trials]
    best, running = -math.inf, []
    for y in ys:
        best = max(best, sign * y)
        running.append(sign * best)
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    ax.scatter(xs, ys, label="complete", zorder=3)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="grey", label="pruned (last report)")
    ax.step(xs, running, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.set_title(f"{plan.strategy}: {objective} ({where})", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(folder, "objective_by_trial.png"), dpi=110)
    plt.close(fig)
    saved.append("objective_by_trial.png")
    # importance
    if len(trials) >= 2 and len(plan.space) >= 1:
        try:
            import optuna

            importance = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if len(plan.objectives) > 1 else None)
        except Exception:  # e.g. every value the same
            importance = {}
        if importance:
            fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(importance)))
            names = list(importance)[::-1]
            ax.barh(names, [importance[n] for n in names])
            ax.set_xlabel("importance (fANOVA)")
            ax.set_title(f"{plan.strategy}: what {objective} depends on", fontsize=10)
            fig.tight_layout()
            fig.savefig(Path(folder, "param_importance.png"), dpi=110)
            plt.close(fig)
            saved.append("param_importance.png")
    # objective against each parameter
    keys = list(plan.space)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        dim = plan.space[key]
        values = [t.params.get(key) for t in trials]
        if dim.kind == "choice":
            labels = [str(c) for c in dim.choices]
            ax.scatter([labels.index(str(v)) for v in values], ys)
            ax.set_xticks(range(len(labels)), labels)
        else:
            ax.scatter(values, ys)
            if dim.kind == "log":
                ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
    fig.tight_layout()
    fig.savefig(Path(folder, "objective_by_param.png"), dpi=110)
    plt.close(fig)
    saved.append("objective_by_param.png")
    return saved
