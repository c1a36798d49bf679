"""Figures of a run's session matrices: a heatmap and one curve per session's test data."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

def _value_format(R: np.ndarray) -> str:
    finite = R[np.isfinite(R)]
    # Accuracies in [0, 1] need 3 decimals to show small forgetting; percentages need 1.
    return "{:.3f}" if finite.size == 0 or np.abs(finite).max() <= 1.0 else "{:.1f}"


def heatmap(
    R: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str
) -> Figure:
    rows, cols = R.shape
    size = (max(4.0, 1.0 * cols + 2.5), max(3.0, 0.55 * rows + 1.8))
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    finite = R[np.isfinite(R)]
    in_unit = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
    # A fixed 0..1 scale keeps colours comparable across runs; otherwise use the data range.
    vmin, vmax = (0.0, 1.0) if in_unit else (float(finite.min()), float(finite.max()))
    image = ax.imshow(np.ma.masked_invalid(R), cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax)
    fmt = _value_format(R)
    fontsize = 9 if cols <= 10 else 7
    for i in range(rows):
        for j in range(cols):
            v = R[i, j]
            if np.isfinite(v):
                dark = (v - vmin) / ((vmax - vmin) or 1.0) < 0.6  # viridis is dark below ~0.6
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=fontsize,
                        color="white" if dark else "black")
            else:
                ax.text(j, i, "-", ha="center", va="center", fontsize=fontsize, color="gray")
    slanted = cols > 6  # long label rows overlap unless slanted
    ax.set_xticks(range(cols), [str(c) for c in col_labels],
                  rotation=45 if slanted else 0, ha="right" if slanted else "center")
    ax.set_yticks(range(rows), [str(r) for r in row_labels])
    ax.set_xlabel("test data of")
    ax.set_ylabel("model")
    ax.set_title(title)
    return fig


def curves(
    R: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], title: str, value_label: str
) -> Figure:
    rows, cols = R.shape
    fig = Figure(figsize=(max(5.0, 0.7 * rows + 3.0), 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(rows)
    for j in range(cols):
        ax.plot(x, R[:, j], marker="o", label=str(col_labels[j]))
    slanted = rows > 4  # "after session 10" labels overlap unless slanted
    ax.set_xticks(x, [str(r) for r in row_labels],
                  rotation=30 if slanted else 0, ha="right" if slanted else "center")
    ax.set_xlabel("training progress")
    ax.set_ylabel(f"{value_label} on test data")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(title="test data of", fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig
