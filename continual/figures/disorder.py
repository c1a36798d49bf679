"""Figures of the spatial-disorder diagnostics (:mod:`continual.run.probes`): the angle
distributions per session, and a 2-D view of a few probe items before and after.

Drawn in the drawing process (:mod:`continual.figures.drawing`): numpy and matplotlib only, no torch."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def probe_view(old: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray], pairs: Sequence[tuple[int, int]],
               labels: Sequence[str], title: str) -> Figure:
    """A 2-D view (the top two principal components of all probe features, both models and
    both modalities) of a few probe pairs: each image (circle) and its text (square) before
    (hollow) and after (filled), an arrow for each move. ``old``/``new`` are (image features,
    text features); ``pairs`` are (image index, text index)."""
    feats = [_unit(f) for f in (*old, *new)]
    stacked = np.concatenate(feats)
    mean = stacked.mean(axis=0)
    _, s, vh = np.linalg.svd(stacked - mean, full_matrices=False)
    share = (s[:2] ** 2).sum() / (s ** 2).sum()
    oi, ot, ni, nt = ((f - mean) @ vh[:2].T for f in feats)
    fig = Figure(figsize=(8.6, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(*np.concatenate([oi, ot]).T, s=4, color="0.8", label="all probe items, before")
    ax.scatter(*np.concatenate([ni, nt]).T, s=4, color="0.55", label="all probe items, after")
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
