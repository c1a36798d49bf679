"""A run's rows, and what is logged after each session.

The loop (:mod:`continual.run.loop`) evaluates one row per session: each matrix's row (the score
on every session's test data, future sessions included), the control data's retrieval, and a
record of the session (timings and counts, per-class accuracy or per-session retrieval, the
diagnostics). :class:`Rows` keeps them: what a checkpoint holds and a resumed run restores.
:func:`session_metrics` names a row's metrics (the names: :mod:`continual.tracking.names`);
:class:`SessionLog` logs them with step = the row, with the run's description and the matrices,
and the run's summary at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig

from continual.measure import metrics as M
from continual.tracking import labels
from continual.tracking import names as N


@dataclass
class Rows:
    """The rows so far: each matrix ((T+1) x T, NaN where not evaluated yet), the control data's
    retrieval metrics per row, and a record per row."""

    matrices: dict[str, np.ndarray]
    test_sizes: list[int]  # each session's test examples: the weights of the seen-sessions score
    control: list[dict] = field(default_factory=list)
    sessions: list[dict] = field(default_factory=list)

    @classmethod
    def of(cls, stream: Any) -> "Rows":
        """No rows yet, for the matrices of ``stream``'s kind (:data:`names.MATRICES`)."""
        T = len(stream.sessions)
        return cls({name: np.full((T + 1, T), np.nan) for name in N.MATRICES[stream.kind]},
                   [s.n_test for s in stream.sessions])

    @property
    def n_sessions(self) -> int:
        return len(self.test_sizes)

    def add(self, i: int, scores: dict[str, Any], control: Optional[dict], record: dict[str, Any]) -> None:
        """Row i: each matrix's row taken from ``scores`` (``evaluate_row``'s), the rest of them
        (per-session retrieval, per-class accuracy) into ``record``, which becomes the row's
        record (the caller may add to it)."""
        for name in self.matrices:
            self.matrices[name][i] = scores.pop(name)
        record.update(scores)
        if control is not None:
            self.control.append(control)
        self.sessions.append(record)

    def metrics(self, i: int) -> dict[str, float]:
        """Every metric of row i (the rows after it not evaluated yet)."""
        return session_metrics({k: m[: i + 1] for k, m in self.matrices.items()}, self.control, self.test_sizes,
                               self.sessions[i])

    def state(self, i: int) -> dict[str, Any]:
        """Rows 0..i as a checkpoint keeps them."""
        return {"matrices": {k: m[: i + 1].tolist() for k, m in self.matrices.items()},
                "control": self.control, "sessions": self.sessions}

    def restore(self, state: dict[str, Any]) -> int:
        """The rows of a checkpoint's ``state``; returns its last row."""
        k = state["session"]
        for name, rows in state["matrices"].items():
            self.matrices[name][: k + 1] = np.array(rows, dtype=float)
        self.control[:], self.sessions[:] = state["control"], state["sessions"]
        return k

    def summary(self) -> dict[str, float]:
        """The summary after the last row: its metrics but the session's own, and the totals."""
        last = session_metrics(self.matrices, self.control, self.test_sizes, self.sessions[-1])
        summary = {k: v for k, v in last.items() if not k.startswith(N.SESSION)}
        for key in N.TOTAL_KEYS:
            summary[N.total(key)] = sum(s.get(key, 0.0) for s in self.sessions)
        return summary


def matrix_metrics(R: np.ndarray, test_sizes: list[int], prefix: str) -> dict[str, float]:
    """The last row's cells and every summary metric of one matrix (named with ``prefix``, see
    :mod:`continual.tracking.names`)."""
    i = R.shape[0] - 1
    out: dict[str, float] = {N.cell(prefix, j + 1): float(v) for j, v in enumerate(R[i])}
    if i > 0:
        out[N.seen(prefix)] = float(M.accuracy_on_seen(R, True, test_sizes)[-1])
        summary = M.summarize(R, initial_row=True, weights=test_sizes)
        for key in N.CL_KEYS:
            out[N.cl(key, prefix)] = summary[key]
        for key in N.MTIL_KEYS:
            out[N.mtil(key, prefix)] = summary[key]
    return out


def session_metrics(matrices: dict[str, np.ndarray], control_rows: list[dict], test_sizes: list[int],
                    record: dict) -> dict[str, float]:
    """Every metric logged after the session of the matrices' last row (``record`` its record)."""
    out: dict[str, float] = {}
    for name, R in matrices.items():
        out.update(matrix_metrics(R, test_sizes, N.matrix_prefix(name)))
    for j, scores in enumerate(record.get("retrieval", [])):  # R@5/10, median ranks per session
        out.update({N.retrieval(j + 1, k): float(v) for k, v in scores.items()})
    if control_rows:
        now, first = control_rows[-1], control_rows[0]
        out.update({N.control(k): float(v) for k, v in now.items()})
        r1_now = (now["i2t_r1"] + now["t2i_r1"]) / 2
        r1_first = (first["i2t_r1"] + first["t2i_r1"]) / 2
        out[N.CONTROL_R1_MEAN] = r1_now
        ret = M.retention(r1_now, r1_first)
        out[N.RETENTION_ABSOLUTE], out[N.RETENTION_RELATIVE] = ret["absolute"], ret["relative"]
    out.update(record.get("diagnostics", {}))  # named by the probes (names.diag)
    for key in N.SESSION_KEYS:
        if key in record:
            out[N.session(key)] = float(record[key])
    return out


def describe_row(i: int, m: dict[str, float]) -> str:
    """The line printed after row i, from its metrics ``m``."""
    parts = [f"{'before training' if i == 0 else f'after session {i}'}:"]
    for p in (p for p in (N.ACC, N.I2T, N.T2I) if N.cell(p, 1) in m):
        what = "acc" if p == N.ACC else f"{p} R@1"
        if i == 0:
            parts.append(f"zero-shot {what} {np.mean([v for k, v in m.items() if k.startswith(N.cell_prefix(p))]):.1f}%")
        else:
            parts.append(f"seen {what} {m[N.seen(p)]:.1f}%")
            if not np.isnan(m[N.cl('forgetting', p)]):
                parts.append(f"forgetting {m[N.cl('forgetting', p)]:.1f}")
    if N.CONTROL_R1_MEAN in m:
        parts.append(f"control R@1 {m[N.CONTROL_R1_MEAN]:.1f}% (retention {m[N.RETENTION_RELATIVE]:.2f})")
    if N.session("train_seconds") in m:
        parts.append(f"train {m[N.session('train_seconds')]:.1f} s ({m[N.session('examples_per_s')]:,.0f} ex/s)")
    return " | ".join(parts)


class SessionLog:
    """What is logged of ``rows`` to the run's ``logger``: after each session, and at the end."""

    def __init__(self, logger: Any, cfg: DictConfig, stream: Any, rows: Rows) -> None:
        self.logger, self.cfg, self.rows = logger, cfg, rows
        self.class_names = stream.class_names
        self.columns, self.chance = labels.session_labels(stream), labels.chance_levels(stream, cfg.eval.label_space)

    def row(self, i: int) -> dict[str, float]:
        """Log row i: its metrics (step i), the run's description, the matrices so far (CSV and
        figures) and the per-class accuracies; returns the metrics."""
        cfg, rows = self.cfg, self.rows
        metrics = rows.metrics(i)
        self.logger.log_metrics(metrics, step=i)
        self.logger.set_description(labels.run_description(cfg, metrics, i, rows.n_sessions))
        row_labels = labels.row_labels(i + 1)
        for name, m in rows.matrices.items():
            what = "accuracy (%)" if name == "accuracy" else f"{name.replace('_r1', '').replace('2', '-to-')} R@1 (%)"
            self.logger.log_matrix(N.matrix_artifact(name), m[: i + 1], row_labels, self.columns, value_label=what,
                                   chance=self.chance,
                                   title=f"{cfg.strategy.name} on {cfg.stream.name}, seed {cfg.seed}: {what}")
        if "per_class" in rows.sessions[i]:  # accuracy of every class's test images, one row per session
            self.logger.log_matrix("per_class_accuracy", [s["per_class"] for s in rows.sessions[: i + 1]], row_labels,
                                   self.class_names, figures=False)
        return metrics

    def take_diagnostics(self, diagnostics: Any, wait_all: bool = False) -> None:
        """The rows whose diagnostics were compared meanwhile: into their records, and their
        metrics held for the logger's next send (step: their row)."""
        for j, result in diagnostics.finished(wait_all) if diagnostics is not None else []:
            self.rows.sessions[j].update(result)
            metrics = {**result["diagnostics"],
                       N.session("diagnostics_compute_seconds"): result["diagnostics_compute_seconds"]}
            self.logger.hold_metrics([(name, value, j) for name, value in metrics.items()])

    def finish(self) -> dict[str, float]:
        """Log the totals (step T) and ``summary.json``, end the run FINISHED; returns the summary."""
        summary = self.rows.summary()
        self.logger.log_metrics({k: v for k, v in summary.items() if k.startswith(N.TOTAL)}, step=self.rows.n_sessions)
        self.logger.log_json({"summary": summary, "sessions": self.rows.sessions, "control": self.rows.control,
                              **{k: m.tolist() for k, m in self.rows.matrices.items()}}, "summary.json")
        self.logger.finish("FINISHED")
        return summary
