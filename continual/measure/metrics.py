"""Continual-learning metrics (METHODS.md section 5). Pure numpy.

Accuracy matrix convention
--------------------------
``R[i, j]`` is the accuracy on session j's test data after training session i.
Sessions are numbered 1..T. Row 0 (when present) is the model before any
training (zero-shot). Every session is evaluated on every session's test data,
so the matrix has T columns, future sessions included.

The runner calls :func:`summarize` after every session with the rows completed
so far, so every function accepts a *partial* matrix: with ``initial_row=True``
R has k+1 rows (row 0, then sessions 1..k); with ``initial_row=False`` it has k
rows (sessions 1..k). In both cases it has T columns and k <= T.

Docstrings use 1-based session indices (``R[i, j]``, i = session, j = session);
the code maps them onto 0-based arrays through the small helpers below.
A metric that is undefined for the rows available (e.g. forgetting after one
session) is NaN.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "summarize",
    "accuracy_on_seen",
    "performance_drop",
    "retention",
    "load_matrix_csv",
    "matrix_layout",
    "format_summary",
    "retrieval_metrics",
]

NAN = float("nan")


# --------------------------------------------------------------------------- #
# Accuracy-matrix metrics
# --------------------------------------------------------------------------- #
class _Matrix:
    """1-based view of an accuracy matrix: ``m.r(i, j)`` = R[i, j], i = 0..k, j = 1..T."""

    def __init__(self, R: np.ndarray, initial_row: bool):
        R = np.asarray(R, dtype=float)
        if R.ndim != 2:
            raise ValueError(f"accuracy matrix must be 2-D, got shape {R.shape}")
        self.T = R.shape[1]
        self.has_row0 = bool(initial_row)
        self.k = R.shape[0] - 1 if self.has_row0 else R.shape[0]
        if self.k < 0 or self.k > self.T:
            expected = "1..T+1" if self.has_row0 else "0..T"
            raise ValueError(
                f"matrix is {R.shape[0]} x {R.shape[1]}: expected {expected} rows "
                f"(initial_row={self.has_row0})"
            )
        self.R = R

    def row(self, i: int) -> np.ndarray:
        """Row of session i (i = 0 is the zero-shot row; needs has_row0)."""
        if i == 0 and not self.has_row0:
            raise ValueError("row 0 requested but the matrix has no initial row")
        return self.R[i if self.has_row0 else i - 1]

    def r(self, i: int, j: int) -> float:
        return float(self.row(i)[j - 1])


def _mean(values: Sequence[float]) -> float:
    """Mean of a list, NaN when empty."""
    return float(np.mean(values)) if len(values) else NAN


def _weights(weights: Sequence[float] | None, T: int) -> np.ndarray:
    if weights is None:
        return np.ones(T)
    w = np.asarray(weights, dtype=float)
    if w.shape != (T,):
        raise ValueError(f"weights must have one entry per session (T={T}), got shape {w.shape}")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    return w


def accuracy_on_seen(
    R: np.ndarray, initial_row: bool = True, weights: Sequence[float] | None = None
) -> np.ndarray:
    """Accuracy on all sessions seen so far, after each trained session.

    acc_seen(i) = sum_{j<=i} w_j R[i, j] / sum_{j<=i} w_j,  for i = 1..k

    ``weights[j-1]`` = w_j, e.g. the number of test examples of session j (this
    is the sample-weighted accuracy on all classes seen so far); equal weights
    if None. Returns an array of length k (element i-1 is acc_seen(i)).
    """
    m = _Matrix(R, initial_row)
    w = _weights(weights, m.T)
    out = np.empty(m.k)
    for i in range(1, m.k + 1):
        wi = w[:i]
        # a session whose seen weights are all 0 has no defined accuracy
        out[i - 1] = np.dot(wi, m.row(i)[:i]) / wi.sum() if wi.sum() > 0 else NAN
    return out


def performance_drop(
    R: np.ndarray, initial_row: bool = True, weights: Sequence[float] | None = None
) -> float:
    """Performance drop (FSCIL papers' A_base - A_last).

    PD = acc_seen(1) - acc_seen(k), with acc_seen from :func:`accuracy_on_seen`.
    0 after one session, NaN before any.
    """
    seen = accuracy_on_seen(R, initial_row, weights)
    return float(seen[0] - seen[-1]) if len(seen) else NAN


def summarize(
    R: np.ndarray, initial_row: bool = True, weights: Sequence[float] | None = None
) -> dict[str, float]:
    """All matrix metrics after session k (k = number of trained rows of R).

    1-based: R[i, j], i = 0 (before training), 1..k; j = 1..T.

    - ``avg_acc``     = mean_{j=1..k} R[k, j]
    - ``avg_inc_acc`` = mean_{i=1..k} acc_seen(i)       (see :func:`accuracy_on_seen`)
    - ``forgetting``  = mean_{j=1..k-1} [ max_{l=j..k-1} R[l, j] - R[k, j] ]   (Chaudhry;
      row 0 is not part of the max)
    - ``bwt``         = mean_{j=1..k-1} [ R[k, j] - R[j, j] ]
    - ``fwt``         = mean_{j=2..min(k+1, T)} [ R[j-1, j] - R[0, j] ]   (CLIP form;
      needs row 0; R[k, k+1] exists because future columns are evaluated)
    - ``pd``          = acc_seen(1) - acc_seen(k)
    - MTIL (ZSCL), rows 1..k only (row 0 excluded):
        ``transfer`` = mean_{j=2..T} [ mean_{i=1..min(j-1, k)} R[i, j] ]
        ``avg``      = mean_{j=1..T} [ mean_{i=1..k} R[i, j] ]
        ``last``     = mean_{j=1..T} R[k, j]

    Undefined values are NaN (e.g. forgetting/bwt when k < 2, fwt without
    row 0 or when T < 2, everything when k = 0).
    """
    m = _Matrix(R, initial_row)
    k, T = m.k, m.T
    seen = accuracy_on_seen(R, initial_row, weights)

    out: dict[str, float] = {}
    out["avg_acc"] = _mean([m.r(k, j) for j in range(1, k + 1)])
    out["avg_inc_acc"] = _mean(list(seen))
    out["forgetting"] = _mean(
        [max(m.r(l, j) for l in range(j, k)) - m.r(k, j) for j in range(1, k)]
    )
    out["bwt"] = _mean([m.r(k, j) - m.r(j, j) for j in range(1, k)])
    if m.has_row0 and k >= 1:
        out["fwt"] = _mean([m.r(j - 1, j) - m.r(0, j) for j in range(2, min(k + 1, T) + 1)])
    else:
        out["fwt"] = NAN
    out["pd"] = float(seen[0] - seen[-1]) if k >= 1 else NAN

    # MTIL: trained rows only
    if k >= 1:
        trained = np.stack([m.row(i) for i in range(1, k + 1)])  # k x T, row i-1 = session i
        out["transfer"] = _mean(
            [float(trained[: min(j - 1, k), j - 1].mean()) for j in range(2, T + 1)]
        )
        out["avg"] = float(trained.mean(axis=0).mean())
        out["last"] = float(trained[-1].mean())
    else:
        out["transfer"] = out["avg"] = out["last"] = NAN
    return out


def retention(control_now: float, control_initial: float) -> dict[str, float]:
    """Zero-shot retention on control data never trained on.

    absolute = control_now;  relative = control_now / control_initial
    (NaN when control_initial is 0).
    """
    now, initial = float(control_now), float(control_initial)
    return {"absolute": now, "relative": now / initial if initial != 0 else NAN}


# --------------------------------------------------------------------------- #
# Matrix files
# --------------------------------------------------------------------------- #
def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def load_matrix_csv(path: str | Path) -> np.ndarray:
    """Load an accuracy matrix from a plain numeric CSV file.

    Tolerated extras (an empty cell counts as not a number):
    - a header row: the first non-blank line is a header when any cell after
      its first is not a number, or its first cell is empty, or its first cell
      is not a number while some later line starts with a number. A first line
      like ``session,1,2`` above a label column is ambiguous and is read as a
      labelled data row (a complete matrix then gets a loud shape error from
      :func:`matrix_layout` instead of silently losing a row);
    - a label column: the first column is dropped when none of its data cells
      is a number, or when the header's first cell is empty (pandas
      ``to_csv`` writes ``,0,1,2`` over an integer index).

    Blank lines are skipped. Raises ValueError (one line, naming the file) when
    the file has no data rows, rows of different lengths, a non-numeric cell, or
    a value outside 0..100 (infinities included; NaN passes: a cell not
    evaluated), reported with its 1-based line and column in the file.
    """
    path = Path(path)
    with open(path, newline="") as f:
        rows = [
            (lineno, [c.strip() for c in row])
            for lineno, row in enumerate(csv.reader(f), start=1)
            if any(c.strip() for c in row)
        ]
    if not rows:
        raise ValueError(f"{path}: empty file, no matrix rows")

    first_row = rows[0][1]
    is_header = (
        not all(_is_number(c) for c in first_row[1:])
        or first_row[0] == ""
        or (not _is_number(first_row[0]) and any(_is_number(r[0]) for _, r in rows[1:]))
    )
    header_first_cell_empty = is_header and first_row[0] == ""
    if is_header:
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{path}: only a header row, no matrix rows")

    width = len(rows[0][1])
    for lineno, cells in rows:
        if len(cells) != width:
            raise ValueError(
                f"{path}: non-rectangular, line {lineno} has {len(cells)} cells, "
                f"expected {width} (as on line {rows[0][0]})"
            )

    # a partly non-numeric first column is reported as an error below, not dropped
    has_labels = header_first_cell_empty or not any(_is_number(cells[0]) for _, cells in rows)
    first = 1 if has_labels else 0
    if first >= width:
        raise ValueError(f"{path}: only a label column, no numeric columns")

    data = np.empty((len(rows), width - first))
    for r, (lineno, cells) in enumerate(rows):
        for c in range(first, width):
            try:
                data[r, c - first] = float(cells[c])
            except ValueError:
                raise ValueError(
                    f"{path}: non-numeric cell {cells[c]!r} at line {lineno}, column {c + 1}"
                ) from None
            if not 0 <= data[r, c - first] <= 100 and not math.isnan(data[r, c - first]):
                raise ValueError(
                    f"{path}: cell {cells[c]!r} at line {lineno}, column {c + 1} is not an accuracy "
                    f"(0..100 in %, or 0..1)"
                )
    return data


def matrix_layout(R: np.ndarray) -> bool:
    """Decide ``initial_row`` from the shape of a complete matrix.

    T x T -> False (rows are sessions 1..T); (T+1) x T -> True (row 0 = before
    training). Any other shape raises ValueError.
    """
    shape = np.shape(R)
    if len(shape) != 2:
        raise ValueError(f"matrix has shape {shape}: expected a 2-D matrix")
    rows, cols = shape
    if cols >= 1 and rows == cols:
        return False
    if cols >= 1 and rows == cols + 1:
        return True
    raise ValueError(
        f"matrix is {rows} x {cols}: expected T x T (rows after sessions 1..T) "
        f"or (T+1) x T (first row = before training)"
    )


def format_summary(metrics: dict[str, float]) -> str:
    """Aligned two-column text table: name left, value right with 2 decimals.

    NaN and None are shown as "-".
    """
    if not metrics:
        return ""

    def fmt(v: float | None) -> str:
        if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
            return "-"
        return f"{float(v):.2f}"

    values = {name: fmt(v) for name, v in metrics.items()}
    w_name = max(len(str(n)) for n in values)
    w_val = max(len(v) for v in values.values())
    return "\n".join(f"{str(n):<{w_name}}  {v:>{w_val}}" for n, v in values.items())


# --------------------------------------------------------------------------- #
# Retrieval
# --------------------------------------------------------------------------- #
def retrieval_metrics(
    sim: np.ndarray, caption_image: np.ndarray, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Image-text retrieval recall@K and median rank.

    ``sim[i, c]`` = similarity of image i and caption c; ``caption_image[c]`` =
    the image caption c describes (several captions per image allowed).

    Ranks are 1-based; ties count against the query (pessimistic, deterministic):
    - text-to-image, caption c with image g = caption_image[c]:
        rank(c) = 1 + #{images i != g : sim[i, c] >= sim[g, c]}
    - image-to-text, image i with captions C_i and best score s_i = max_{c in C_i} sim[i, c]:
        rank(i) = 1 + #{captions c not in C_i : sim[i, c] >= s_i}
      i.e. the rank of the best-ranked of its captions; the image's own other
      captions never push it down. Images with no caption are skipped.

    R@K = 100 * fraction of queries with rank <= K. Returns ``i2t_r{K}``,
    ``t2i_r{K}`` for each K, ``i2t_median_rank`` and ``t2i_median_rank``.
    """
    sim = np.asarray(sim, dtype=float)
    caption_image = np.asarray(caption_image)
    if sim.ndim != 2:
        raise ValueError(f"sim must be [n_images, n_captions], got shape {sim.shape}")
    n_img, n_cap = sim.shape
    if caption_image.shape != (n_cap,):
        raise ValueError(
            f"caption_image must have one entry per caption ({n_cap}), got shape {caption_image.shape}"
        )
    if n_cap == 0:
        raise ValueError("no captions")
    if not np.issubdtype(caption_image.dtype, np.integer):
        raise ValueError("caption_image must hold integer image indices")
    if caption_image.min() < 0 or caption_image.max() >= n_img:
        raise ValueError(f"caption_image holds indices outside 0..{n_img - 1}")
    if not np.all(np.isfinite(sim)):
        raise ValueError("sim contains NaN or infinite values")

    # owns[i, c]: caption c describes image i
    owns = caption_image[None, :] == np.arange(n_img)[:, None]

    # text -> image: the correct score itself is counted by >=, so the count is the rank
    correct = sim[caption_image, np.arange(n_cap)]
    t2i_rank = (sim >= correct[None, :]).sum(axis=0)

    # image -> text: best score among the image's own captions, beaten by other captions
    has_cap = owns.any(axis=1)
    best = np.where(owns, sim, -np.inf).max(axis=1)
    i2t_rank = 1 + ((sim >= best[:, None]) & ~owns).sum(axis=1)
    i2t_rank = i2t_rank[has_cap]

    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = float(100.0 * np.mean(i2t_rank <= k))
    for k in ks:
        out[f"t2i_r{k}"] = float(100.0 * np.mean(t2i_rank <= k))
    out["i2t_median_rank"] = float(np.median(i2t_rank))
    out["t2i_median_rank"] = float(np.median(t2i_rank))
    return out
