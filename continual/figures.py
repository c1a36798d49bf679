"""Figures of a run: its session matrices (a heatmap, one curve per session's test data) and its
spatial-disorder diagnostics (angle distributions per session, a 2-D view of probe items)."""

from __future__ import annotations

from typing import Any, Sequence

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


# -- spatial-disorder diagnostics (continual.probe_diagnostics) ---------------------------------
def angle_distributions(history: dict[str, np.ndarray], where: str) -> Figure:
    """Per modality, for every session so far: the distribution over the probe items of the
    angle each item rotated since before training, and of the angle left after the best
    rotation of the whole space (``history["image/rotation"]`` is sessions x items, ...)."""
    sessions = next(iter(history.values())).shape[0]
    fig = Figure(figsize=(max(7.0, 1.4 * sessions + 4.0), 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    x = np.arange(1, sessions + 1)
    kinds = (("rotation", "C0", "rotation since before training"),
             ("residual", "C1", "left after the best rotation (Procrustes)"))
    for ax, modality in zip(axes, ("image", "text")):
        for offset, (kind, colour, label) in zip((-0.2, 0.2), kinds):
            data = history[f"{modality}/{kind}"]
            parts = ax.violinplot(list(data), positions=x + offset, widths=0.36, showmeans=True, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(colour)
                body.set_alpha(0.55)
            parts["cmeans"].set_color(colour)
            ax.plot([], [], color=colour, lw=6, alpha=0.55, label=label)  # legend entry
        ax.set_xticks(x, [f"after {s}" for s in x])
        ax.set_xlabel("session")
        ax.set_title(f"{modality} features")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("angle per probe item (degrees)")
    axes[0].set_ylim(bottom=0)
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Rotation of each probe item since before training (line: mean)\n{where}", fontsize=10)
    return fig


def probe_view(old: Any, new: Any, pairs: Sequence[tuple[int, int]], labels: Sequence[str], title: str) -> Figure:
    """A 2-D view (the top two principal components of all probe features, both models and
    both modalities) of a few probe pairs: each image (circle) and its text (square) before
    (hollow) and after (filled), an arrow for each move. ``old``/``new`` have ``images`` and
    ``texts`` (unit rows); ``pairs`` are (image index, text index)."""
    import torch

    feats = [torch.nn.functional.normalize(t.double(), dim=-1) for t in (old.images, old.texts, new.images, new.texts)]
    stacked = torch.cat(feats)
    mean = stacked.mean(dim=0)
    _, s, vh = torch.linalg.svd(stacked - mean, full_matrices=False)
    share = (s[:2] ** 2).sum() / (s ** 2).sum()
    oi, ot, ni, nt = ((f - mean) @ vh[:2].T for f in feats)
    fig = Figure(figsize=(8.6, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(*torch.cat([oi, ot]).T, s=4, color="0.8", label="all probe items, before")
    ax.scatter(*torch.cat([ni, nt]).T, s=4, color="0.55", label="all probe items, after")
    for k, ((a, b), label) in enumerate(zip(pairs, labels)):
        colour = f"C{k % 10}"
        for before, after, marker in ((oi[a], ni[a], "o"), (ot[b], nt[b], "s")):
            ax.annotate("", xy=after.tolist(), xytext=before.tolist(),
                        arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.3})
            ax.scatter(*before, s=60, marker=marker, facecolors="none", edgecolors=colour, linewidths=1.5)
            ax.scatter(*after, s=60, marker=marker, color=colour)
        ax.plot([], [], color=colour, lw=3, label=label if len(label) <= 32 else label[:29] + "...")
    for marker, what in (("o", "image"), ("s", "text")):  # the marker key
        ax.scatter([], [], s=60, marker=marker, facecolors="none", edgecolors="k", label=f"{what}, before")
        ax.scatter([], [], s=60, marker=marker, color="k", label=f"{what}, after")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_title(f"{title}\n(2-D projection: {100 * float(share):.0f}% of the features' variance)", fontsize=10)
    return fig
