"""The MLflow logger of a run: params, tags, metrics, matrices and artifacts, from our code and
from Avalanche.

Everything goes through an explicit ``mlflow.MlflowClient(tracking_uri)``; nothing here reads
or mutates MLflow's process-global state (``mlflow.set_tracking_uri``, the active run), so two
loggers writing to two different stores can coexist in one process. Where runs live and how a
store is checked: :mod:`continual.tracking.store`; the figures: :mod:`continual.figures.matrices`; MLflow's UI and
server processes: :mod:`continual.tracking.server`.

This module imports avalanche (6-8 s) at import time, because :class:`MLflowLogger` must
subclass Avalanche's ``BaseLogger``. Import it only inside the commands that need it, never at
CLI start-up.
"""

from __future__ import annotations

import csv
import json
import math
import numbers
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metric_results import AlternativeValues, TensorImage
from avalanche.logging import BaseLogger
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from PIL import Image

from continual.tracking.background import LatestWins
from continual.tracking.names import EXPERIMENT_KIND_TAG, NOTE_TAG
from continual.figures.drawing import save_figure
from continual.figures.matrices import curves, heatmap
from continual.tracking.params import MAX_TAG_VALUE_LENGTH, safe_key, truncate, flatten
from continual.system.signals import uninterrupted
from continual.tracking.store import (MAX_ERROR_LENGTH, TrackingError, abspath, is_local_path, one_line, run_metadata,
                             source_tags, sqlite_path)

__all__ = ["flatten", "MLflowLogger"]

# MLflow 3 opens an experiment in the view its kind names: ours are model training, not GenAI
# traces (which it guesses for untagged experiments).
EXPERIMENT_KIND = "custom_model_development"

# MLflow's own limits (mlflow.utils.validation); exceeding them makes the whole call fail.
_MAX_PARAMS_TAGS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

def _as_number(value: Any) -> float | None:
    """A float for int/float/bool/numpy scalars/0-d tensors, None for anything else."""
    if isinstance(value, torch.Tensor):
        return float(value.item()) if value.numel() == 1 and value.dim() == 0 else None
    if isinstance(value, np.ndarray):
        return float(value) if value.ndim == 0 and value.dtype.kind in "biuf" else None
    if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
        return float(value)
    return None


def _chunks(items: Sequence[Any], size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


# A figure is redrawn at most this often (seconds; the latest always at finish). Drawing takes a
# core for ~0.3-0.7 s a figure on the 2-core build machine; every 5 s it slowed a run of many
# short sessions (10 sessions of the default experiment: 1.22x a 2-session run against 1.12x
# with no drawing but the last). A person reloading a run's page in MLflow sees no difference.
FIGURE_INTERVAL = 30.0


def _figure_worker() -> LatestWins:
    return LatestWins("continual-figures", min_interval=FIGURE_INTERVAL)


# --------------------------------------------------------------------------- #
# The logger
# --------------------------------------------------------------------------- #
class MLflowLogger(BaseLogger, SupervisedPlugin):
    """Log a continual-learning run to MLflow, from our code and from Avalanche.

    Pass it to ``EvaluationPlugin(..., loggers=[logger])``: every Avalanche metric value is
    then logged as an MLflow metric named like the Avalanche metric
    (``Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp000``) with ``step = x_plot``.
    Our own code logs through :meth:`log_metrics` (a mapping), :meth:`log_matrix`,
    :meth:`log_text` and :meth:`log_json`, then calls :meth:`finish`.

    As a context manager the run ends FINISHED, or FAILED with an ``error`` tag when the
    block raises (the exception still propagates).

    Call :func:`check_tracking_uri` first: MLflow's client retries an unreachable server for
    minutes before it gives up.
    """

    @uninterrupted  # an interrupt waits for the write to MLflow to end
    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "continual",
        run_name: str | None = None,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        """Open the run: a new one in `experiment`, or the existing `run_id` (resume).

        :param tracking_uri: ``sqlite:///...`` or ``http(s)://...``.
        :param experiment: created when missing (restored when deleted).
        :param run_name: name of a new run (ignored when re-opening `run_id`).
        :param run_id: re-open this run instead of starting one; it is set back to RUNNING.
            Metric points it already has are not logged again (a resumed run repeats the
            steps after its checkpoint: each (metric, step) stays logged once).
        :param tags: extra run tags; ``version.<pkg>`` and ``git_commit`` are always added.
        :param params: nested config, logged flattened (see :func:`flatten`). On resume,
            params already on the run are kept (MLflow params are immutable); a changed
            value gives a warning.
        :param artifact_location: for a new experiment. Default for a sqlite store: the
            ``mlartifacts`` directory next to the database (MLflow would otherwise use
            ``./mlruns`` relative to the current directory); for a server, its default.
        """
        super().__init__()
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._finished = False
        self._metrics: list[Metric] = []  # logged, not yet sent (see flush)
        self._figures = _figure_worker()  # figures, drawn off the training process and uploaded
        self._logged: set[tuple[str, int]] = set()  # (metric, step) pairs the run has

        if run_id is None:
            self.experiment_id = self._get_or_create_experiment(experiment, artifact_location)
            name = self._unique_name(run_name) if run_name else None
            run = self.client.create_run(self.experiment_id, run_name=name)
        else:
            try:
                run = self.client.get_run(run_id)
            except MlflowException as e:
                raise TrackingError(
                    one_line(f"cannot re-open run {run_id} in {tracking_uri}: {e.message}", 2000)
                ) from None
            self.experiment_id = run.info.experiment_id
            self._logged = {(key, m.step) for key in run.data.metrics
                            for m in self.client.get_metric_history(run_id, key)}
            if run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        self.run_id: str = run.info.run_id

        all_tags = {str(k): str(v) for k, v in (tags or {}).items()}
        meta = run_metadata()
        all_tags["git_commit"] = meta.pop("git_commit")
        all_tags.update({f"version.{k}": v for k, v in meta.items()})
        all_tags.update(source_tags(all_tags["git_commit"]))
        flat = flatten(params or {})
        if run_id is not None:
            flat = self._new_params(flat, run.data.params)
        self._log_params_and_tags(flat, all_tags)

    def _unique_name(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``, ... when runs of the experiment already carry it."""
        pattern = name.replace("'", "")
        taken = {r.info.run_name for r in self.client.search_runs(
            [self.experiment_id], filter_string=f"attributes.run_name LIKE '{pattern}%'", max_results=10000)}
        k, unique = 1, name
        while unique in taken:
            k += 1
            unique = f"{name}-{k}"
        return unique

    def _get_or_create_experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            if EXPERIMENT_KIND_TAG not in found.tags:  # experiments made before the tag existed
                self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return found.experiment_id
        if artifact_location is None and self.tracking_uri.startswith("sqlite:"):
            db = sqlite_path(self.tracking_uri)
            if db is not None:
                artifact_location = str(db.parent / "mlartifacts")
        elif artifact_location is not None and is_local_path(artifact_location):
            # A relative path would be stored as-is and resolved against a later cwd.
            artifact_location = abspath(artifact_location)
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except MlflowException:
            # Another process created it between our lookup and create.
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _new_params(self, flat: dict[str, str], existing: Mapping[str, str]) -> dict[str, str]:
        """Params not yet on a re-opened run; warn about those whose value changed."""
        new = {}
        for key, value in flat.items():
            old = existing.get(safe_key(key))
            if old is None:
                new[key] = value
            elif old != value:
                warnings.warn(
                    f"MLflow run {self.run_id}: param {key!r} keeps its logged value {old!r}, "
                    f"not the resumed run's {value!r} (MLflow params are immutable)"
                )
        return new

    def _log_params_and_tags(self, params: Mapping[str, str], tags: Mapping[str, str]) -> None:
        param_list = [Param(safe_key(k), v) for k, v in params.items()]
        tag_list = [
            RunTag(safe_key(k), truncate(v, MAX_TAG_VALUE_LENGTH)) for k, v in tags.items()
        ]
        # MLflow caps params + tags per batch at 100 together.
        for chunk in _chunks(param_list, _MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)
        for chunk in _chunks(tag_list, _MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=chunk)

    # ---- metrics ---------------------------------------------------------- #
    @uninterrupted
    def log_metrics(
        self, metrics: Mapping[str, Any] | Sequence[Any], step: int | None = None
    ) -> None:
        """Log several metrics.

        Two callers share this name: our code passes a mapping ``{name: value}`` and a `step`;
        Avalanche's EvaluationPlugin passes a list of ``MetricValue`` (its BaseLogger API),
        each with its own ``x_plot`` used as step. None and NaN values are skipped; in the
        Avalanche case non-numeric values (images, figures) go to :meth:`log_single_metric`.

        Avalanche's values (per epoch, many) are held and sent together with our code's next
        mapping (the runner's: once per session), at :meth:`flush` or :meth:`finish`, or when
        a batch's worth is held: one ``log_batch`` instead of one per epoch.
        """
        if isinstance(metrics, Mapping):
            if step is None:
                raise TypeError("log_metrics(mapping) needs a step")
            self._log_numbers([(name, value, step) for name, value in metrics.items()])
            self.flush_metrics()
            return
        # Avalanche: expand dict values like BaseLogger.log_metrics does.
        triples = []
        for mval in metrics:
            if isinstance(mval.value, dict):
                triples += [(f"{mval.name}/{k}", v, mval.x_plot) for k, v in mval.value.items()]
            else:
                triples.append((mval.name, mval.value, mval.x_plot))
        numeric = []
        for name, value, x_plot in triples:
            if _as_number(value) is None:
                self.log_single_metric(name, value, x_plot)
            else:
                numeric.append((name, value, x_plot))
        self._log_numbers(numeric)

    @uninterrupted
    def _log_numbers(self, triples: Sequence[tuple[str, Any, int]]) -> None:
        """Hold the numbers among ``triples`` (name, value, step) for the next send; None, NaN and
        (metric, step) pairs already logged are skipped."""
        now = _now_ms()
        for name, value, step in triples:
            number = _as_number(value)
            point = (safe_key(name), int(step))
            if number is None or math.isnan(number) or point in self._logged:
                continue
            self._metrics.append(Metric(point[0], number, now, point[1]))
        if len(self._metrics) >= _MAX_METRICS_PER_BATCH:
            self.flush_metrics()

    @uninterrupted
    def flush_metrics(self) -> None:
        """Send the metrics held so far (in batches of MLflow's maximum size)."""
        held, self._metrics = self._metrics, []
        points = {}  # the first value held for each (metric, step) not logged yet
        for m in held:
            if (m.key, m.step) not in self._logged:
                points.setdefault((m.key, m.step), m)
        for chunk in _chunks(list(points.values()), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
            self._logged.update((m.key, m.step) for m in chunk)

    def held_metrics(self) -> list[tuple[str, float, int]]:
        """The metrics held, not sent yet, as (name, value, step): what a checkpoint keeps so
        that a run resumed before they were sent still sends each of them once."""
        return [(m.key, m.value, m.step) for m in self._metrics]

    def hold_metrics(self, triples: Sequence[tuple[str, float, int]]) -> None:
        """Hold metrics (name, value, step) to send with the next ones (a checkpoint's, on resume)."""
        self._log_numbers(triples)

    @uninterrupted
    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        """Avalanche hook for one metric value.

        Numbers (int, float, 0-d tensors) become MLflow metrics with ``step = x_plot``.
        Images and figures (e.g. a confusion matrix) become PNG artifacts
        ``avalanche/<name>/step_<x_plot>.png``. Other values (histogram tensors,
        checkpoint bytes, strings) are skipped.
        """
        if isinstance(value, AlternativeValues):
            value = value.best_supported_value(
                numbers.Real, torch.Tensor, Figure, Image.Image, TensorImage
            )
            if value is None:
                return
        if _as_number(value) is not None:
            self._log_numbers([(name, value, x_plot)])
            return
        artifact_file = f"avalanche/{safe_key(name)}/step_{int(x_plot):06d}.png"
        if isinstance(value, Figure):
            self.client.log_figure(self.run_id, value, artifact_file)
        elif isinstance(value, Image.Image):
            self.client.log_image(self.run_id, value, artifact_file=artifact_file)
        elif isinstance(value, TensorImage):
            array = np.asarray(value)  # C x H x W float in [0, 1]
            if array.ndim == 3:
                array = np.moveaxis(array, 0, -1)
            self.client.log_image(self.run_id, np.clip(array, 0.0, 1.0), artifact_file=artifact_file)

    # ---- artifacts -------------------------------------------------------- #
    @uninterrupted
    def log_text(self, text: str, artifact_file: str) -> None:
        """Write `text` to the run's artifact `artifact_file` (replacing an earlier one)."""
        self.client.log_text(self.run_id, text, artifact_file)

    def log_json(self, obj: Any, artifact_file: str) -> None:
        """Write `obj` as indented JSON to `artifact_file`; unknown types are written via str()."""
        self.log_text(json.dumps(obj, indent=2, default=str) + "\n", artifact_file)

    @uninterrupted
    def log_figure(self, figure: Figure, artifact_file: str) -> None:
        """Write a matplotlib `figure` as the PNG artifact `artifact_file` (replacing an earlier one)."""
        self.client.log_figure(self.run_id, figure, artifact_file, save_kwargs={"dpi": 120})

    def draw_figure(self, artifact_file: str, draw: Callable[..., Figure], *args: Any, **kwargs: Any) -> None:
        """Log ``draw(*args, **kwargs)`` as the PNG artifact `artifact_file`, drawn in the drawing
        process (:mod:`continual.figures.drawing`: `draw` a module-level function, the arguments plain
        data) and uploaded by the background thread that handles the matrices' figures (same
        rules: a newer figure for the same file supersedes one not drawn yet; :meth:`flush` and
        :meth:`finish` wait for it)."""
        self._figures.submit(artifact_file, lambda: self._draw_and_log({artifact_file: (draw, args, kwargs)}))

    def _draw_and_log(self, figures: Mapping[str, tuple[Callable[..., Figure], tuple, dict]]) -> None:
        """Draw every figure (artifact file -> draw, args, kwargs) in the drawing process, then
        upload them together: a failure leaves no half-updated set."""
        with tempfile.TemporaryDirectory(prefix="continual-figures-") as tmp:
            for artifact_file, (draw, args, kwargs) in figures.items():
                path = Path(tmp, artifact_file)
                path.parent.mkdir(parents=True, exist_ok=True)
                save_figure(path, draw, *args, dpi=120, **kwargs)
            self.client.log_artifacts(self.run_id, tmp)

    @uninterrupted
    def log_matrix(
        self,
        name: str,
        R: np.ndarray,
        row_labels: Sequence[str],
        col_labels: Sequence[str],
        title: str | None = None,
        value_label: str = "accuracy (%)",
        chance: float | Sequence[float] | None = None,
        figures: bool = True,
        row_header: str = "model",
    ) -> None:
        """Log a (possibly partial) session matrix of percentages as a CSV and two figures.

        - ``<name>.csv``: a header row (`row_header`, then `col_labels`), one row per
          `row_labels` entry; values at full precision, NaN as ``nan``. Written now.
        - with `figures`: ``<name>_heatmap.png`` (every cell's value on a fixed 0-100 scale,
          sessions not trained on yet hatched, the `chance` level noted) and ``<name>_curves.png``
          (one line per column, a session's test data, against the rows, training progress).
          Drawn in the drawing process (:mod:`continual.figures.drawing`) and uploaded by a background
          thread, so that training goes on meanwhile, at most every ``FIGURE_INTERVAL`` seconds:
          a newer matrix of the same `name` supersedes one not drawn yet; :meth:`finish` (or
          :meth:`flush`) draws the latest and waits for it.
        Row i is e.g. "before training" / "after session i", column j "session j".
        Calling it again with the same `name` replaces the files. `name` may contain
        '/' to put them in a sub-directory.
        """
        R = np.array(R, dtype=float)  # a copy: the caller may fill more rows while it is drawn
        if R.ndim != 2 or R.shape != (len(row_labels), len(col_labels)):
            raise ValueError(
                f"log_matrix({name!r}): matrix shape {R.shape} does not match "
                f"{len(row_labels)} row labels x {len(col_labels)} column labels"
            )
        title = title or name
        row_labels, col_labels = [str(r) for r in row_labels], [str(c) for c in col_labels]
        with tempfile.TemporaryDirectory(prefix="continual-matrix-") as tmp:
            base = Path(tmp, name)
            base.parent.mkdir(parents=True, exist_ok=True)
            with open(f"{base}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow([row_header, *col_labels])
                for label, row in zip(row_labels, R):
                    writer.writerow([label, *(repr(float(v)) for v in row)])
            self.client.log_artifacts(self.run_id, tmp)
        if figures:
            self._figures.submit(name, lambda: self._draw_and_log({
                f"{name}_heatmap.png": (heatmap, (R, row_labels, col_labels, title),
                                        {"chance": chance, "value_label": value_label}),
                f"{name}_curves.png": (curves, (R, row_labels, col_labels, title, value_label), {"chance": chance}),
            }))

    @uninterrupted
    def set_description(self, text: str) -> None:
        """The run's description in MLflow's UI (its ``mlflow.note.content`` tag), replaced."""
        self.client.set_tag(self.run_id, NOTE_TAG, truncate(text, MAX_TAG_VALUE_LENGTH))

    # ---- end of run ------------------------------------------------------- #
    @uninterrupted
    def flush(self) -> None:
        """Send the metrics held and wait for the figures being drawn (raising their error)."""
        self.flush_metrics()
        self._figures.flush()

    @uninterrupted
    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        """Flush, then end the run with `status` (FINISHED, FAILED or KILLED); later calls do
        nothing.

        `error` is stored as the tag ``error``, collapsed to one line and truncated. A run that
        ends FINISHED raises what the flush raised (and stays RUNNING: the caller then ends it
        FAILED); one that ends otherwise only warns of it.
        """
        if self._finished:
            return
        status = status.upper()
        RunStatus.from_string(status)  # raises on a typo, before anything is written
        try:
            self.flush()
        except Exception as exc:
            if status == "FINISHED":
                raise
            warnings.warn(f"MLflow run {self.run_id}: could not send everything before ending it {status}: {exc}")
        if error:
            self.client.set_tag(self.run_id, "error", one_line(error, MAX_ERROR_LENGTH))
        self.client.set_terminated(self.run_id, status=status)
        self._finished = True

    def __enter__(self) -> "MLflowLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish("FAILED", error=f"{exc_type.__name__}: {exc}")

    # Avalanche checkpoints pickle the strategy, loggers included; a client (which may hold
    # a database engine) does not pickle, so rebuild it from the URI.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("client", None)
        state.pop("_figures", None)  # a thread and its lock
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self._figures = _figure_worker()
