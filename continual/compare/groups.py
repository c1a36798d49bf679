"""Runs in an MLflow store, grouped by config without the seed, and aggregated over seeds.

A group is every finished run whose params (the flattened config, see :mod:`continual.tracking.params`)
are the same once the seed and the bookkeeping keys (tracking, output folder, threads) are set
aside: the seeds of one method, or of one override value. A group's label is its strategy, plus
the params that tell it apart from other groups of the same strategy.

Everything is read back from the store (params, metrics and their history, the matrix CSVs),
so a table can be rebuilt from runs that already exist, on any store, without training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from continual.measure import stats
from continual.errors import UserError
from continual.tracking import names as N
from continual.tracking.names import PARENT_TAG, ROLE_TAG

# params that do not change what a run computes: left out of a group's identity
BOOKKEEPING = ("seed", "output_dir", "threads")
BOOKKEEPING_PREFIXES = ("tracking.",)


def group_key(params: Mapping[str, str]) -> str:
    """A short digest of a run's params without the seed and the bookkeeping keys."""
    kept = {k: v for k, v in params.items() if k not in BOOKKEEPING and not k.startswith(BOOKKEEPING_PREFIXES)}
    return hashlib.blake2b(json.dumps(kept, sort_keys=True).encode(), digest_size=8).hexdigest()


@dataclass
class RunRecord:
    """One seed's run, as the store has it."""

    run_id: str
    name: str
    status: str
    seed: int
    params: dict[str, str]
    final: dict[str, float]  # each metric's last value (after the last session)
    artifact_uri: str = ""
    sessions: Optional[int] = None  # the stream's number of sessions (its run's tag)

    @property
    def strategy(self) -> str:
        return self.params.get("strategy.name", "?")

    @property
    def key(self) -> str:
        return group_key(self.params)


@dataclass
class Group:
    """The runs of one config over seeds: ``runs`` finished, ``failed`` the others."""

    key: str
    label: str
    runs: list[RunRecord] = field(default_factory=list)
    failed: list[RunRecord] = field(default_factory=list)

    @property
    def strategy(self) -> str:
        return (self.runs or self.failed)[0].strategy

    def values(self, metric: str) -> dict[int, float]:
        """Final value of ``metric`` per seed (finished runs that logged it)."""
        return {r.seed: r.final[metric] for r in self.runs if metric in r.final}

    def summary(self, metric: str) -> stats.Summary:
        return stats.summarize(list(self.values(metric).values()))


def record(run: Any) -> RunRecord:
    """A :class:`RunRecord` of an ``mlflow.entities.Run``."""
    params = dict(run.data.params)
    try:
        seed = int(params.get("seed", run.data.tags.get(N.SEED_TAG, "0")))
    except ValueError:
        seed = 0
    sessions = run.data.tags.get(N.SESSIONS_TAG, "")
    return RunRecord(run.info.run_id, run.info.run_name or run.info.run_id, run.info.status, seed, params,
                     dict(run.data.metrics), run.info.artifact_uri, int(sessions) if sessions.isdigit() else None)


def seed_runs(client: Any, experiment_ids: list[str], within: Optional[Iterable[str]] = None) -> list[RunRecord]:
    """The experiment's seed runs (made by ``continual run``: they carry a config fingerprint),
    sweeps' parent and group runs left out; with ``within``, only those nested under one of
    those run ids (a sweep's parent and its groups)."""
    runs = client.search_runs(experiment_ids, filter_string=f"tags.{N.FINGERPRINT_TAG} != ''", max_results=50000,
                              order_by=["attributes.start_time ASC"])
    parents = set(within) if within is not None else None
    return [record(r) for r in runs
            if ROLE_TAG not in r.data.tags and (parents is None or r.data.tags.get(PARENT_TAG) in parents)]


def group(runs: Iterable[RunRecord]) -> list[Group]:
    """Runs grouped by :func:`group_key`, in order of first appearance, with their labels.

    A seed run twice in a group (a config run again with --fresh) counts once: the newest
    finished one."""
    groups: dict[str, Group] = {}
    for run in runs:
        g = groups.setdefault(run.key, Group(run.key, ""))
        (g.runs if run.status == "FINISHED" else g.failed).append(run)
    for g in groups.values():
        newest: dict[int, RunRecord] = {}
        for run in g.runs:  # oldest first: later ones replace earlier ones
            newest[run.seed] = run
        g.runs = sorted(newest.values(), key=lambda r: r.seed)
        finished = {r.seed for r in g.runs}
        g.failed = [r for r in g.failed if r.seed not in finished]
    label_groups(list(groups.values()))
    return list(groups.values())


def label_groups(groups: list[Group]) -> None:
    """Label each group by its strategy, plus the params in which it differs from other groups
    of the same strategy (``vrlwf strategy.lam=1.0``)."""
    by_strategy: dict[str, list[Group]] = {}
    for g in groups:
        by_strategy.setdefault(g.strategy, []).append(g)
    for strategy, same in by_strategy.items():
        if len(same) == 1:
            same[0].label = strategy
            continue
        params = [(g.runs or g.failed)[0].params for g in same]
        keys = sorted({k for p in params for k in p} - set(BOOKKEEPING))
        differing = [k for k in keys if not k.startswith(BOOKKEEPING_PREFIXES)
                     and len({p.get(k) for p in params}) > 1]
        for g, p in zip(same, params):
            g.label = " ".join([strategy] + [f"{k}={p.get(k, '-')}" for k in differing])


def recipe(g: Group) -> dict[str, str]:
    """What a group's runs share beyond the method: their params less the seed, the bookkeeping
    keys and the strategy's own (``strategy.*``)."""
    params = (g.runs or g.failed)[0].params
    return {k: v for k, v in params.items() if k not in BOOKKEEPING and not k.startswith(BOOKKEEPING_PREFIXES)
            and not k.startswith("strategy.")}


def recipe_differences(g: Group, baseline: Group) -> list[str]:
    """The keys in which ``g`` trains or is scored otherwise than ``baseline``, besides the method:
    ``key=value (baseline: value)``; empty for a matched comparison."""
    mine, theirs = recipe(g), recipe(baseline)
    return [f"{k}={mine.get(k, '-')} (baseline: {theirs.get(k, '-')})"
            for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]


def baselines(groups: list[Group], name: str) -> list[Group]:
    """The groups that ``name`` names as the baseline: the one labelled so, else every group of
    that strategy (several where a sweep varies a key of the recipe, e.g. train.lr)."""
    found = [g for g in groups if g.label == name] or [g for g in groups if g.strategy == name]
    if not found:
        labels = ", ".join(g.label for g in groups)
        raise UserError(f"baseline '{name}' names no group; the groups are: {labels}; give --baseline one of them")
    return found


def matched_baseline(g: Group, candidates: list[Group]) -> Group:
    """The baseline group that trains with ``g``'s recipe, else the one that differs from it in the
    fewest keys (the table then says in which)."""
    return min(candidates, key=lambda b: len(recipe_differences(g, b)))


# -- per-session aggregates ------------------------------------------------------------------------
def histories(client: Any, run: RunRecord, keys: Iterable[str]) -> dict[str, dict[int, float]]:
    """Each metric's value per step (session) for one run."""
    return {k: {m.step: m.value for m in client.get_metric_history(run.run_id, k)} for k in keys}


def session_aggregates(client: Any, g: Group) -> dict[str, dict[int, stats.Summary]]:
    """For every summary metric of the group's runs: its :class:`stats.Summary` over seeds after
    every session (step)."""
    keys = sorted({k for r in g.runs for k in r.final if N.is_summary(k)})
    per_run = [histories(client, r, keys) for r in g.runs]
    out: dict[str, dict[int, stats.Summary]] = {}
    for k in keys:
        steps = sorted({s for h in per_run for s in h[k]})
        out[k] = {s: stats.summarize([h[k][s] for h in per_run if s in h[k]]) for s in steps}
    return out


# -- matrices ------------------------------------------------------------------------------------------
@dataclass
class MeanMatrix:
    """A session matrix averaged over a group's seeds: mean and std per cell, with its labels."""

    name: str
    mean: np.ndarray
    std: np.ndarray
    n: int
    rows: list[str]
    columns: list[str]


def read_matrix_csv(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Row labels, column labels and values of a matrix CSV logged by ``MLflowLogger.log_matrix``."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return [r[0] for r in rows[1:]], rows[0][1:], np.array([[float(v) for v in r[1:]] for r in rows[1:]])


def mean_matrices(client: Any, g: Group) -> list[MeanMatrix]:
    """Each session matrix of the group, mean and std over its seeds (runs without the artifact,
    or with another shape, are left out)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small CSV otherwise
    out = []
    with tempfile.TemporaryDirectory(prefix="continual-report-") as tmp:
        for name in N.MATRIX_ARTIFACTS:
            found = []
            for r in g.runs:
                try:
                    path = Path(client.download_artifacts(r.run_id, f"{name}.csv", f"{tmp}/{r.run_id}"))
                except Exception:  # not a matrix this kind of stream has
                    continue
                found.append(read_matrix_csv(path))
            if not found:
                continue
            rows, columns, first = found[0]
            if any(c != columns for _, c, _ in found):  # seeds drew other classes per session
                columns = [f"session {j + 1}" for j in range(len(columns))]
            values = np.stack([v for _, _, v in found if v.shape == first.shape])
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(first.shape, math.nan)
            out.append(MeanMatrix(name, values.mean(axis=0), std, len(values), rows, columns))
    return out
