"""A sweep's runs in MLflow: its parent run, one run per group nested under it, and what is
logged to them once the seeds' runs are done.

:mod:`continual.compare.sweep` writes to MLflow only through :class:`SweepRuns` (its seed runs
write through their own :class:`~continual.tracking.logger.MLflowLogger`); it reads the store
through :attr:`SweepRuns.client`.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from continual.tracking import names as N

# MLflow's own limits per log_batch call (mlflow.utils.validation)
_MAX_PARAMS_PER_BATCH, _MAX_METRICS_PER_BATCH = 100, 1000


class SweepRuns:
    """The parent and group runs of sweeps in the store at ``uri``."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(uri)

    def open_parent(self, experiment: str, name: str, fingerprint: str, params: Mapping[str, Any],
                    artifact_location: Optional[str]) -> Any:
        """The parent run (an :class:`MLflowLogger`) of the grid ``fingerprint``: the one it made
        before, re-opened, or a new one named ``name``."""
        from continual.tracking.logger import MLflowLogger
        from continual.tracking.store import find_runs

        existing = find_runs(self.uri, experiment, N.SWEEP_TAG, fingerprint)
        return MLflowLogger(self.uri, experiment, run_name=name, run_id=existing[0].info.run_id if existing else None,
                            tags={N.ROLE_TAG: "sweep", N.SWEEP_TAG: fingerprint}, params=params,
                            artifact_location=artifact_location)

    def group_runs(self, parent: Any) -> dict[str, str]:
        """The group runs under ``parent`` made before: group key -> run id."""
        return {r.data.tags.get(N.GROUP_TAG): r.info.run_id for r in self.client.search_runs(
            [parent.experiment_id],
            filter_string=f"tags.`{N.PARENT_TAG}` = '{parent.run_id}' and tags.`{N.ROLE_TAG}` = 'group'")}

    def open_group(self, parent: Any, key: str, label: str, strategy: str, stream: str,
                   params: Mapping[str, str]) -> str:
        """A new run for group ``key`` under ``parent``, made before its seeds run so that they
        nest under it from the start; returns its id."""
        run = self.client.create_run(parent.experiment_id, run_name=label, tags={
            N.PARENT_TAG: parent.run_id, N.ROLE_TAG: "group", N.GROUP_TAG: key, "strategy": strategy,
            "stream": stream, N.NOTE_TAG: f"{label}: mean over seeds (the seeds' runs are nested below)"})
        entities = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(entities), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(run.info.run_id, params=entities[start:start + _MAX_PARAMS_PER_BATCH])
        return run.info.run_id

    def seed_runs(self, experiment_id: str, fingerprint: str, group_id: str) -> list[Any]:
        """The runs of the config ``fingerprint`` nested under the group run ``group_id``."""
        return self.client.search_runs([experiment_id], filter_string=(
            f"tags.{N.FINGERPRINT_TAG} = '{fingerprint}' and tags.`{N.PARENT_TAG}` = '{group_id}'"))

    def delete(self, run_id: str) -> None:
        """Delete a seed run that can never be resumed (it died before its first checkpoint)."""
        self.client.delete_run(run_id)

    def log_group(self, run_id: str, aggregates: Mapping[str, Mapping[int, Any]], n_seeds: int) -> None:
        """A group's statistics over seeds of every metric after every session (step): the mean
        under the metric's own name, the std (``std/<metric>``, where there are two seeds or
        more) and the number of seeds (``seeds/n``). ``aggregates``: metric -> step -> a
        :class:`continual.measure.stats.Summary`."""
        entities = []
        for key, by_step in aggregates.items():
            for step, s in by_step.items():
                entities.append(Metric(key, s.mean, 0, step))
                if s.n > 1:
                    entities.append(Metric(N.std(key), s.std, 0, step))
        steps = sorted({st for by_step in aggregates.values() for st in by_step})
        entities += [Metric(N.SEEDS_N, n_seeds, 0, st) for st in steps]
        for start in range(0, len(entities), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=entities[start:start + _MAX_METRICS_PER_BATCH])

    @contextmanager
    def artifacts(self, run_id: str) -> Iterator[Path]:
        """A folder to write files in: they become the run's artifacts when the block ends (none
        when it raises)."""
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            self.client.log_artifacts(run_id, tmp)

    def finish_group(self, run_id: str) -> None:
        """End a group run FINISHED: its statistics are complete."""
        self.client.set_terminated(run_id, "FINISHED")
