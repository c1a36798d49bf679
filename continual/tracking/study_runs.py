"""A tuning study's runs in MLflow: the trial runs' marks, the study run's outcome, and the
re-run sweep nested under it.

:mod:`continual.compare.tune` writes to MLflow only through :class:`StudyRuns` and the
:class:`~continual.tracking.logger.MLflowLogger` of its study run (each trial's run writes
through its own logger, as every run does).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from continual.tracking import names as N


class StudyRuns:
    """The runs of tuning studies in the store at ``uri``."""

    def __init__(self, uri: str) -> None:
        self.client = MlflowClient(uri)

    def mark_trial(self, run_id: str, trial: int, protocol: str, sealed: bool, role: str) -> None:
        """Tag a trial's run: its role (left out of experiment-wide reports), trial number,
        protocol, and whether its test data was sealed."""
        for key, value in {N.ROLE_TAG: role, "tune_trial": str(trial), "tune_protocol": protocol,
                           "test_sealed": str(sealed).lower()}.items():
            self.client.set_tag(run_id, key, value)

    def mark_pruned(self, run_id: str) -> None:
        """A pruned trial's run ends KILLED (stopped at a session boundary), tagged ``pruned``."""
        self.client.set_tag(run_id, "pruned", "true")
        self.client.set_terminated(run_id, "KILLED")

    def fail_if_running(self, run_id: str, why: str) -> None:
        """A run its worker left RUNNING (the worker died) is marked FAILED, with why."""
        if self.client.get_run(run_id).info.status == "RUNNING":
            self.client.set_terminated(run_id, "FAILED")
            self.client.set_tag(run_id, "error", why)

    def nest_reruns(self, sweep_id: str, study_id: str) -> None:
        """The re-run sweep's parent run nested under the study's run, each naming the other."""
        self.client.set_tag(sweep_id, N.PARENT_TAG, study_id)
        self.client.set_tag(sweep_id, "tuned_by", study_id)
        self.client.set_tag(study_id, "rerun_sweep", sweep_id)

    def log_outcome(self, run_id: str, chosen: Mapping[str, Any], metrics: Mapping[str, float], budget: str,
                    folder: str | Path) -> None:
        """The study run's chosen values (params ``chosen.KEY``, logged once), its outcome metrics
        (step 0), its budget tag and the files of ``folder`` as artifacts."""
        existing = self.client.get_run(run_id).data.params
        params = [Param(f"chosen.{k}", str(v)) for k, v in chosen.items() if f"chosen.{k}" not in existing]
        if params:
            self.client.log_batch(run_id, params=params)
        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        self.client.set_tag(run_id, "tune_budget", budget)
        self.client.log_artifacts(run_id, str(folder))


def run_ids(attrs: Mapping[str, Any], prefix: str = "mlflow_run_id") -> Sequence[str]:
    """The MLflow run ids a trial recorded in its user attributes."""
    return [v for k, v in attrs.items() if k.startswith(prefix)]
