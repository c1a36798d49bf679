"""Figures of a run's session matrices: a heatmap and one curve per session's test data.

Matrix convention (the runner's): row 0 is the model before training, row i the model after
session i; column j is session j+1's test data. A cell (i, j) with j >= i is a session the model
has not trained on yet (zero-shot on future data): the heatmap sets those cells apart.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

PERCENT = (0.0, 100.0)


def _value_format(R: np.ndarray) -> str:
    finite = R[np.isfinite(R)]
    # Accuracies in [0, 1] need 3 decimals to show small forgetting; percentages need 1.
    return "{:.3f}" if finite.size == 0 or np.abs(finite).max() <= 1.0 else "{:.1f}"


def chance_note(chance: Optional[float | Sequence[float]]) -> str:
    """"chance 10%" (one level), "chance 3-10%" (per column), or "" when unknown."""
    if chance is None:
        return ""
    levels = np.atleast_1d(np.asarray(chance, dtype=float))
    low, high = float(levels.min()), float(levels.max())
    return f"chance {low:.3g}%" if np.isclose(low, high) else f"chance {low:.3g}-{high:.3g}%"


def tick_labels(labels: Sequence[Any], width: int = 18) -> list[str]:
    """Labels wrapped onto lines of at most ``width`` characters: a session named by its groups
    ("People & Body, Symbols, animals, ...") would otherwise squeeze the matrix to nothing."""
    return ["\n".join(textwrap.wrap(str(c), width)) or str(c) for c in labels]


def _label_lines(labels: Sequence[str]) -> int:
    return max((label.count("\n") + 1 for label in labels), default=1)


def heatmap(
    R: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str,
    scale: Optional[tuple[float, float]] = PERCENT, std: Optional[np.ndarray] = None,
    chance: Optional[float | Sequence[float]] = None, value_label: str = "accuracy (%)",
    staircase: bool = True,
) -> Figure:
    """Every cell's value on a fixed colour ``scale`` (0-100 for percentages, so that colours
    compare across runs; None: the data's range), ``± std`` under it when given (a mean over
    seeds), the chance level in the colour bar's label, and, with ``staircase``, the cells of
    sessions not yet trained hatched and fenced off by a line."""
    rows, cols = R.shape
    extra = 0.16 * (_label_lines(tick_labels(col_labels)) - 1)  # room for wrapped column labels
    size = (max(4.5, 1.2 * cols + 3.0), max(3.2, (0.75 if std is not None else 0.55) * rows + 2.0) + extra)
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    _draw_heatmap(fig, fig.add_subplot(), R, row_labels, col_labels, title, scale, std, chance, value_label, staircase)
    return fig


def matrix_grid(matrices: Sequence[tuple[str, Any]], columns: int = 2) -> Optional[Figure]:
    """One heatmap per group (``(label, m)`` with ``m.mean``, ``m.std``, ``m.n``, ``m.rows``,
    ``m.columns``: a session matrix averaged over seeds), mean ± std in every cell."""
    if not matrices:
        return None
    rows = math.ceil(len(matrices) / columns)
    first = matrices[0][1]
    width = max(4.5, 1.2 * len(first.columns) + 3.0)
    height = max(3.2, 0.75 * len(first.rows) + 2.0) + 0.16 * (_label_lines(tick_labels(first.columns)) - 1)
    fig = Figure(figsize=(width * min(columns, len(matrices)), height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    for k, (label, m) in enumerate(matrices):
        ax = fig.add_subplot(rows, min(columns, len(matrices)), k + 1)
        _draw_heatmap(fig, ax, m.mean, m.rows, m.columns, f"{label}: mean ± std over {m.n} seeds", PERCENT, m.std,
                      None, "accuracy or R@1 (%)", True)
    return fig


def _draw_heatmap(fig: Figure, ax: Any, R: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                  title: str, scale: Optional[tuple[float, float]], std: Optional[np.ndarray],
                  chance: Optional[float | Sequence[float]], value_label: str, staircase: bool) -> None:
    rows, cols = R.shape
    finite = R[np.isfinite(R)]
    if scale is None:
        scale = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    vmin, vmax = scale
    image = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    note = chance_note(chance)
    fig.colorbar(image, ax=ax, label=value_label + (f"\n{note}" if note else ""))
    fmt = _value_format(R)
    fontsize = 9 if cols <= 8 else 7
    for i in range(rows):
        for j in range(cols):
            v = R[i, j]
            if not np.isfinite(v):
                ax.text(j, i, "-", ha="center", va="center", fontsize=fontsize, color="gray")
                continue
            dark = (v - vmin) / ((vmax - vmin) or 1.0) < 0.6  # viridis is dark below ~0.6
            text = fmt.format(v) + (f"\n± {fmt.format(std[i, j])}" if std is not None and np.isfinite(std[i, j]) else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
    if staircase:
        for i in range(rows):  # row i has trained on sessions 1..i: columns j >= i are still ahead
            for j in range(min(i, cols), cols):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="white",
                                       linewidth=0, alpha=0.35))
        steps_x, steps_y = [-0.5], [0.5]
        for i in range(1, rows):
            steps_x += [min(i, cols) - 0.5, min(i, cols) - 0.5]
            steps_y += [i - 0.5, i + 0.5]
        ax.plot(steps_x, steps_y, color="white", linewidth=2)
    labels = tick_labels(col_labels)
    slanted = cols > 5  # wrapped labels side by side fit up to 5 columns
    ax.set_xticks(range(cols), labels, rotation=35 if slanted else 0, ha="right" if slanted else "center",
                  fontsize=8 if _label_lines(labels) > 1 else None)
    ax.set_yticks(range(rows), [str(r) for r in row_labels])
    ax.set_xlabel("test data of" + ("   (hatched: not trained on yet)" if staircase else ""))
    ax.set_ylabel("model")
    ax.set_title(title)


def bands(groups: Sequence[tuple[str, Mapping[str, Mapping[int, Any]]]], metric: str, title: str) -> Figure:
    """``metric`` after every session, one line per group (its mean over seeds) inside a band of
    ± one std; ``groups`` holds (label, {metric: {session: Summary}})."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, aggregates in groups:
        by_step = aggregates.get(metric)
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = np.array([by_step[s].mean for s in steps])
        std = np.nan_to_num(np.array([by_step[s].std for s in steps]))
        n = max(by_step[s].n for s in steps)
        (line,) = ax.plot(steps, mean, marker="o", label=f"{label} (n={n})")
        ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("after session (0 = before training)")
    ax.set_ylabel(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(f"{title}: mean over seeds, band ± 1 std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def curves(
    R: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str, value_label: str,
    chance: Optional[float | Sequence[float]] = None,
) -> Figure:
    """One line per column (a session's test data) against the rows (training progress)."""
    rows, cols = R.shape
    fig = Figure(figsize=(max(5.5, 0.7 * rows + 3.5), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(rows)
    for j in range(cols):
        ax.plot(x, R[:, j], marker="o", label=tick_labels([col_labels[j]], 30)[0])
    if chance is not None and np.ndim(chance) == 0:
        ax.axhline(float(chance), color="gray", linestyle=":", linewidth=1, label=chance_note(chance))
    slanted = rows > 4  # "after session 10" labels overlap unless slanted
    ax.set_xticks(x, [str(r) for r in row_labels],
                  rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_xlabel("training progress")
    ax.set_ylabel(f"{value_label} on test data")
    ax.set_ylim(0, 100 if np.nanmax(np.where(np.isfinite(R), R, 0)) > 1 else 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="test data of", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
