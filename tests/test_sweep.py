"""continual sweep on real runs and a real MLflow store: the grid, the nesting (sweep -> groups ->
seeds), the group aggregates, the table that `continual report` rebuilds from the store alone,
resuming after a kill, submitit's local executor, and a failing child that fails alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import small_overrides
from continual.errors import ConfigError
from continual.compare.groups import PARENT_TAG, ROLE_TAG
from continual.compare.report import from_store
from continual.tracking.store import default_tracking_uri
from continual.compare.sweep import grid, parse_seeds, split_values, sweep

REPO = Path(__file__).resolve().parents[1]


def quiet(_: str) -> None:
    pass


# -- the grid --------------------------------------------------------------------------------------
def test_values_and_seeds():
    assert split_values("1e-3,1e-4") == ["1e-3", "1e-4"]
    assert split_values("[1,2],[3]") == ["[1,2]", "[3]"] and split_values("[1,2]") == ["[1,2]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0,3-4,9") == [0, 3, 4, 9]
    for bad in ("4-2", "a", "1,1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)


def test_grid_is_configs_times_values_times_seeds(tmp_path):
    children = grid(["default", "vrlwf"], small_overrides(tmp_path) + ["train.lr=1e-3,1e-4"], [0, 1, 2])
    assert len(children) == 2 * 2 * 3
    assert {(c.cfg.strategy.name, c.cfg.train.lr, c.seed) for c in children} == {
        (s, lr, seed) for s in ("finetune", "vrlwf") for lr in (1e-3, 1e-4) for seed in (0, 1, 2)}
    # seeds share a group; the other values do not
    assert len({c.group_key for c in children}) == 4
    with pytest.raises(ConfigError, match="train.lrr"):  # every child is validated before any trains
        grid(["default"], small_overrides(tmp_path) + ["train.lrr=1,2"], [0])


# -- a real sweep, read back -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    args = (["default"], small_overrides(out) + ["strategy.name=finetune,lwf"], [0, 1])
    result = sweep(*args, echo=quiet)
    return out, args, result


def test_the_sweep_nests_groups_and_seeds_under_one_parent(swept):
    out, _, result = swept
    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_id)
    assert parent.data.tags[ROLE_TAG] == "sweep" and parent.info.status == "FINISHED"
    experiment = [parent.info.experiment_id]
    groups = client.search_runs(experiment, filter_string=f"tags.`{PARENT_TAG}` = '{result.parent_id}'")
    assert sorted(g.info.run_name for g in groups) == ["finetune", "lwf"]
    names = []
    for g in groups:
        seeds = client.search_runs(experiment, filter_string=f"tags.`{PARENT_TAG}` = '{g.info.run_id}'")
        assert sorted(int(r.data.params["seed"]) for r in seeds) == [0, 1]
        assert all(r.info.status == "FINISHED" for r in seeds)
        names += [r.info.run_name for r in seeds]
        # the group's metric after the last session is the mean of its seeds' (float64 mean of 2)
        values = [r.data.metrics["cl/forgetting"] for r in seeds]
        assert g.data.metrics["cl/forgetting"] == pytest.approx(np.mean(values), rel=1e-12)
        assert g.data.metrics["std/cl/forgetting"] == pytest.approx(np.std(values, ddof=1), rel=1e-12)
        assert g.data.metrics["seeds/n"] == 2
        assert [m.step for m in client.get_metric_history(g.info.run_id, "retention/relative")] == [0, 1, 2]
    assert len(set(names)) == 4  # every run has a name of its own
    artifacts = {a.path for a in client.list_artifacts(result.parent_id)}
    assert {"comparison.md", "comparison.csv", "comparison.tex", "mean_matrices.png",
            "cl_forgetting_by_session.png", "retention_relative_by_session.png"} <= artifacts


def test_report_rebuilds_the_sweeps_table_from_the_store(swept, tmp_path):
    out, _, result = swept
    uri = default_tracking_uri(str(out))
    assert from_store(result.parent_id, uri).markdown() == result.table.markdown()
    # the experiment holds only this sweep's seed runs: the same table by experiment name
    assert from_store("test", uri).csv() == result.table.csv()
    local = MlflowClient(uri).download_artifacts(result.parent_id, "comparison.md", str(tmp_path))
    assert Path(local).read_text() == result.table.markdown()
    # and on the command line
    done = subprocess.run([sys.executable, "-m", "continual", "report", result.parent_id, "--output-dir", str(out),
                           "--format", "csv"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout == result.table.csv(), done.stderr


def test_the_same_sweep_again_trains_nothing(swept):
    out, args, result = swept
    again = sweep(*args, echo=quiet)
    assert again.parent_id == result.parent_id and again.outcomes == []
    assert again.table.markdown() == result.table.markdown()


# -- faults ------------------------------------------------------------------------------------------
def sweep_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "continual", "sweep", "default", *small_overrides(out), *extra]


def seed_runs(uri: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("test")
    return [r for r in client.search_runs([experiment.experiment_id]) if ROLE_TAG not in r.data.tags]


def test_a_sweep_killed_midway_resumes_and_ends_with_every_child_once(tmp_path):
    command = sweep_command(tmp_path, "strategy.name=finetune,lwf", "--seeds", "0-1", "--jobs", "2")
    uri = default_tracking_uri(str(tmp_path))
    proc = subprocess.Popen(command, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:  # kill the sweep and its workers once a child has checkpointed a session and before all finish
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            # the store is read only once a child has its checkpoint folder: the sweep made it by then
            runs = seed_runs(uri) if (tmp_path / "checkpoints").exists() else []
            saved = [r for r in runs if r.info.status == "RUNNING"
                     and (tmp_path / "checkpoints" / r.info.run_id / "state.json").exists()]
            if saved:
                break
            time.sleep(0.5)
        assert proc.poll() is None, "the sweep finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    interrupted = {r.info.run_id for r in saved}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = seed_runs(uri)
    children = sorted((r.data.params["strategy.name"], r.data.params["seed"]) for r in runs)
    assert children == [("finetune", "0"), ("finetune", "1"), ("lwf", "0"), ("lwf", "1")]  # each exactly once
    assert all(r.info.status == "FINISHED" for r in runs)
    assert interrupted <= {r.info.run_id for r in runs}  # the interrupted child resumed in its own run


def test_submitit_local_executor_runs_a_two_child_sweep(tmp_path):
    result = sweep(["default"], small_overrides(tmp_path), [0, 1], executor="submitit-local", echo=quiet)
    assert [o.status for o in result.outcomes] == ["FINISHED", "FINISHED"]
    runs = seed_runs(result.tracking_uri)
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    assert (tmp_path / "sweeps" / result.parent_id).is_dir()  # submitit's job folder: logs per child


def test_a_failing_child_fails_alone_and_the_table_counts_it(tmp_path, monkeypatch):
    from continual.run import loop as runner

    evaluate = runner.evaluate_row

    def crash_one_child(classifier, stream, cfg, seen):  # a crash inside one child, after its first session
        if seen == 1 and cfg.train.lr > 1.5e-3:
            raise RuntimeError("simulated crash")
        return evaluate(classifier, stream, cfg, seen)

    monkeypatch.setattr(runner, "evaluate_row", crash_one_child)
    result = sweep(["default"], small_overrides(tmp_path) + ["train.lr=1e-3,2e-3"], [0], echo=quiet)
    assert sorted(o.status for o in result.outcomes) == ["FAILED", "FINISHED"]
    failed = next(o for o in result.outcomes if o.status == "FAILED")
    assert "simulated crash" in failed.error
    runs = {r.data.params["train.lr"]: r.info.status for r in seed_runs(result.tracking_uri)}
    assert runs == {"0.001": "FINISHED", "0.002": "FAILED"}
    text = result.table.markdown()
    assert "| finetune train.lr=0.002 | 0 (1 not finished) |" in text and "| finetune train.lr=0.001 | 1 |" in text


def test_a_preempted_slurm_child_is_requeued_and_resumes(tmp_path):
    """submitit's preemption signal (USR2) reaches the child mid-run: its checkpoint hook
    requeues the same call, which resumes the run from its last finished session."""
    import submitit

    from continual.compare.sweep import RunChild

    overrides = small_overrides(tmp_path) + ["train.epochs=30", "seed=0"]  # long enough to be caught mid-run
    sweep(["default"], small_overrides(tmp_path), [5], echo=quiet)  # makes the store, a parent and a group run
    client = MlflowClient(default_tracking_uri(str(tmp_path)))
    group = next(r for r in client.search_runs([client.get_experiment_by_name("test").experiment_id])
                 if r.data.tags.get(ROLE_TAG) == "group")
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="local")
    job = executor.submit(RunChild(), "default", overrides, group.info.run_id)
    deadline = time.monotonic() + 600
    checkpointed = []
    while time.monotonic() < deadline and not checkpointed and not job.done():
        time.sleep(0.5)
        checkpointed = [r for r in seed_runs(default_tracking_uri(str(tmp_path)))
                        if r.data.params.get("train.epochs") == "30"
                        and (tmp_path / "checkpoints" / r.info.run_id / "state.json").exists()]
    assert checkpointed and not job.done(), "the child finished before it could be pre-empted"
    # what SLURM does before pre-empting: the preemption signal to the task (not to submitit's
    # local controller), whose handler calls the checkpoint hook and requeues
    import psutil

    task = psutil.Process(job._process.pid).children(recursive=True)[0]
    task.send_signal(signal.SIGUSR2)
    outcome = job.result()
    assert outcome.status == "FINISHED" and outcome.run_id == checkpointed[0].info.run_id
    runs = [r for r in seed_runs(default_tracking_uri(str(tmp_path))) if r.data.params.get("train.epochs") == "30"]
    assert [r.info.run_id for r in runs] == [outcome.run_id] and runs[0].info.status == "FINISHED"
    # the first process was stopped by the requeue (the run was marked KILLED then) and the
    # requeued one finished the same run
    assert "exited with status 144" in runs[0].data.tags.get("error", "")
