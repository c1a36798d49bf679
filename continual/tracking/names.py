"""The names a run writes to MLflow and the code reads back: metrics, their prefixes, tags and
the matrices' artifacts.

Every writer (the session loop, the probes, the training curves, the sweep) and every reader
(the run's description, the final report, grouping and the comparison table) takes its names
from here, so that a metric logged after every session is one edit here plus one where it is
computed. This module imports nothing heavy: the CLI and ``--dry-run`` read it.

After session i (step = i) a run logs, for each matrix of its kind of stream (:data:`MATRICES`):
the last row's cells (``acc/session_j``), the score on the sessions seen (``acc/seen``) and the
continual-learning summaries (``cl/*``, ``mtil/*``); accuracy keeps these historic names, the
retrieval matrices are prefixed (``i2t/session_j``, ``i2t/seen``, ``i2t/cl/*``). Then per-session
retrieval details (``retrieval/session_j/*``), the control data's retrieval (``control/*``) and
zero-shot retention (``retention/*``), the spatial-disorder diagnostics (``diag/*``) and the
session's timings and counts (``session/*``); once, at the end, ``total/*``.
"""

from __future__ import annotations

# -- tags -----------------------------------------------------------------------------------------
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
NOTE_TAG = "mlflow.note.content"  # a run's description in MLflow's UI
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the view MLflow opens an experiment in
FINGERPRINT_TAG = "config_fingerprint"  # a seed run's config: the same command finds its unfinished run
SEED_TAG = "seed"
SESSIONS_TAG = "sessions"  # the stream's number of sessions
ROLE_TAG = "continual.role"  # "sweep" (a sweep's parent run) | "group" (one group's aggregate run)
SWEEP_TAG = "sweep_fingerprint"  # a sweep's parent: the same grid finds it again
GROUP_TAG = "group_key"  # a sweep's group run: the group it aggregates

# -- the session matrices -------------------------------------------------------------------------
ACC, I2T, T2I = "acc", "i2t", "t2i"  # the metric prefix of each matrix
# The matrices of each kind of stream, with their metric prefixes.
MATRICES = {"classification": {"accuracy": ACC}, "pairs": {"i2t_r1": I2T, "t2i_r1": T2I}}
CELL = "/session_"  # in the name of a per-session value: ``acc/session_3``, ``retrieval/session_3/i2t_r5``
CL_KEYS = ("avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "pd")
MTIL_KEYS = ("transfer", "avg", "last")


def matrix_prefix(matrix: str) -> str:
    """``accuracy`` -> ``acc``, ``i2t_r1`` -> ``i2t``, ``t2i_r1`` -> ``t2i``."""
    return next(p for kinds in MATRICES.values() for name, p in kinds.items() if name == matrix)


def matrix_artifact(matrix: str) -> str:
    """The artifact (``<it>.csv``, ``<it>_heatmap.png``, ``<it>_curves.png``) of a matrix."""
    return f"{matrix}_matrix"


MATRIX_ARTIFACTS = tuple(matrix_artifact(m) for kinds in MATRICES.values() for m in kinds)


def cell_prefix(prefix: str) -> str:
    """The start of every cell's name of one matrix: ``acc/session_``."""
    return f"{prefix}{CELL}"


def cell(prefix: str, session: int) -> str:
    """The cell of the last row on session ``session``'s test data (1-based): ``acc/session_3``."""
    return f"{cell_prefix(prefix)}{session}"


def seen(prefix: str) -> str:
    """The score on the sessions trained so far, weighted by their test sizes: ``acc/seen``."""
    return f"{prefix}/seen"


def _group(prefix: str) -> str:
    return "" if prefix == ACC else f"{prefix}/"  # accuracy's summaries keep their historic names


def cl(key: str, prefix: str = ACC) -> str:
    """A continual-learning summary (:data:`CL_KEYS`): ``cl/forgetting``, ``i2t/cl/forgetting``."""
    return f"{_group(prefix)}cl/{key}"


def mtil(key: str, prefix: str = ACC) -> str:
    """An MTIL summary (:data:`MTIL_KEYS`): ``mtil/transfer``, ``i2t/mtil/transfer``."""
    return f"{_group(prefix)}mtil/{key}"


# -- the rest of a session's row ------------------------------------------------------------------
RETRIEVAL, CONTROL, RETENTION, DIAG, SESSION, TOTAL = "retrieval/", "control/", "retention/", "diag/", "session/", "total/"
CONTROL_R1_MEAN = f"{CONTROL}r1_mean"  # the mean of the control data's i2t and t2i R@1
RETENTION_ABSOLUTE, RETENTION_RELATIVE = f"{RETENTION}absolute", f"{RETENTION}relative"
# A session's record entries logged as ``session/<key>``.
SESSION_KEYS = ("train_seconds", "eval_seconds", "diagnostics_seconds", "diagnostics_compute_seconds", "examples",
                "examples_per_s", "trainable_params")
TOTAL_KEYS = ("train_seconds", "eval_seconds")  # summed over the sessions, logged once as ``total/<key>``


def retrieval(session: int, key: str) -> str:
    """An image-text session's test retrieval metric (1-based): ``retrieval/session_2/i2t_r5``."""
    return f"{RETRIEVAL}session_{session}/{key}"


def control(key: str) -> str:
    """A retrieval metric of the control data: ``control/i2t_r1``."""
    return f"{CONTROL}{key}"


def diag(key: str) -> str:
    """A diagnostic, against the model before training: ``diag/image/rotation_mean_deg``."""
    return f"{DIAG}{key}"


def diag_step(key: str) -> str:
    """A diagnostic, against the model after the previous session: ``diag/step/image/...``."""
    return diag(f"step/{key}")


def session(key: str) -> str:
    """A session's timing or count (:data:`SESSION_KEYS`): ``session/train_seconds``."""
    return f"{SESSION}{key}"


def total(key: str) -> str:
    """Summed over the run's sessions (:data:`TOTAL_KEYS`): ``total/train_seconds``."""
    return f"{TOTAL}{key}"


# -- training curves (per epoch) ------------------------------------------------------------------
LOSS = "loss/"
AVALANCHE_PREFIXES = ("Loss_", "Top1_")  # Avalanche's own metrics (its epoch loss)


def loss(term: str) -> str:
    """The epoch mean of a loss term: ``loss/ce``."""
    return f"{LOSS}{term}"


# -- a sweep's group runs -------------------------------------------------------------------------
STD, SEEDS = "std/", "seeds/"
SEEDS_N = f"{SEEDS}n"  # the number of seeds a group's mean is over


def std(metric: str) -> str:
    """The standard deviation over seeds of a group's ``metric``: ``std/cl/forgetting``."""
    return f"{STD}{metric}"


# -- reading back ---------------------------------------------------------------------------------
# Metrics logged once per session that are not summaries: matrix cells (CELL), losses, timings, the
# sweep's spreads and counts.
NOT_SUMMARIES = (LOSS, SESSION, TOTAL, RETRIEVAL, *AVALANCHE_PREFIXES, STD, SEEDS)


def is_summary(key: str) -> bool:
    """A per-session summary metric (cl/forgetting, retention/relative, ...), not a matrix cell."""
    return not key.startswith(NOT_SUMMARIES) and CELL not in key


# The diagnostics `continual run` prints in its final summary (all of them go to MLflow).
HEADLINE = (diag("image/rotation_mean_deg"), diag("text/rotation_mean_deg"), diag("pairs/deviation_deg"),
            diag("gap/centroid_distance"))
# What the final summary leaves out (MLflow has it): the cells, the per-session retrieval, the
# control data's R@5/10 and the diagnostics but the headline ones.
DETAILS = (cell_prefix(ACC), cell_prefix(I2T), cell_prefix(T2I), RETRIEVAL,
           control("i2t_r5"), control("i2t_r10"), control("t2i_r5"), control("t2i_r10"), DIAG)
