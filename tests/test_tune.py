"""continual tune on real (tiny) runs: bad input stops before any trial with one line and exit 2;
the pruner stops a bad trial at a session boundary; the chosen values re-run on fresh seeds as a
sweep nested under the study; a study whose worker died resumes with the dead trial failed and
retried and every trial counted once; oracle is labelled."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from conftest import small_overrides
from continual.cli import main
from continual.compare import tune as T
from continual.compare.groups import PARENT_TAG

FAST = ["train.epochs=1", "diagnostics.enabled=false", "threads=1"]


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("args, says", [
    (["--trials", "0"], "--trials must be >= 1"),
    (["--trials", "2", "--space", "strategy.nope=log:0.1:1"], "strategy.nope"),
    (["--trials", "2", "--space", "strategy.alpha=float:-1:1"], "strategy.alpha"),  # LwF refuses alpha < 0
    (["--trials", "2", "--space", "train.lr=log:abc:1"], "two numbers"),
    (["--trials", "2", "--space", "train.lr=log:0:1"], "positive"),
    (["--trials", "2", "--objective", "cl/avg_accc"], "--objective"),
    (["--trials", "2", "--objective", "i2t/cl/avg_acc"], "--objective"),  # a retrieval metric on a classification stream
    (["--trials", "2", "--k", "3"], "--k 3"),
    (["--trials", "2", "--protocol", "holdout-k", "--k", "2"], "--k 2"),
    (["--trials", "2", "--seeds", "999-1001"], "fresh seeds"),
])
def test_bad_input_is_one_line_and_exit_2_before_any_trial(tmp_path, capsys, args, says):
    code = main(["tune", "lwf", *small_overrides(tmp_path), *FAST, *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and says in err and "\n" not in err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / "checkpoints").exists()


def test_oracle_is_labelled_and_unsealed(tmp_path):
    plan = T.prepare("default", small_overrides(tmp_path) + FAST, 2, protocol="oracle")
    assert T.ORACLE_LABEL in plan.label and not plan.sealed and "stream.evaluate_on=test" in plan.trial_overrides
    sealed = T.prepare("default", small_overrides(tmp_path) + FAST, 2)  # first-k, k=1 on 2 sessions
    assert sealed.sealed and sealed.k == 1 and "stream.evaluate_on=validation" in sealed.trial_overrides
    assert "stream.last_session=1" in sealed.trial_overrides and set(sealed.space) == {"train.lr", "train.epochs"}


def test_pruning_stops_a_bad_trial_at_a_session_boundary_and_reruns_use_fresh_seeds(tmp_path):
    import optuna

    storage = f"sqlite:///{tmp_path}/optuna.db"
    overrides = small_overrides(tmp_path) + FAST
    study = optuna.create_study(storage=storage, study_name="prune", direction="maximize")
    study.enqueue_trial({"train.lr": 1e-2, "train.epochs": 1})  # learns
    study.enqueue_trial({"train.lr": 1e-6, "train.epochs": 1})  # learns nothing: below the median after session 1
    result = T.tune("default", overrides, trials=2, protocol="full", seeds=[0], storage=storage, study_name="prune",
                    space=["train.lr=log:1e-6:1e-2"], echo=quiet, pruner_startup=1)
    trials = optuna.load_study(study_name="prune", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]
    assert trials[1].user_attrs["pruned_after_session"] == 1 and list(trials[1].intermediate_values) == [1]
    assert result.budget["trials"] == 2 and result.budget["pruned"] == 1 and result.chosen == {"train.lr": 1e-2, "train.epochs": 1}
    client = MlflowClient(result.tracking_uri)
    pruned = client.get_run(trials[1].user_attrs["mlflow_run_id_0"])
    assert pruned.info.status == "KILLED" and pruned.data.tags["pruned"] == "true"
    assert [m.step for m in client.get_metric_history(pruned.info.run_id, "acc/session_1")] == [0, 1]  # stopped after 1 of 2
    assert pruned.data.tags[PARENT_TAG] == result.parent_id and pruned.data.params["seed"] == "1000"
    parent = client.get_run(result.parent_id)
    assert parent.data.tags["test_sealed"] == "true" and parent.data.params["chosen.train.lr"] == "0.01"
    assert parent.data.tags["mlflow.note.content"].startswith("Chosen: train.lr=0.01") and "test sealed" in \
        parent.data.tags["mlflow.note.content"]
    artifacts = {a.path for a in client.list_artifacts(result.parent_id)}
    assert {"trials.csv", "trials.md", "objective_by_trial.png"} <= artifacts and "figures_error.txt" not in artifacts
    sweep_run = client.get_run(result.rerun.parent_id)
    assert sweep_run.data.tags[PARENT_TAG] == result.parent_id
    experiment = [parent.info.experiment_id]
    groups = client.search_runs(experiment, filter_string=f"tags.`{PARENT_TAG}` = '{result.rerun.parent_id}'")
    reruns = [r for g in groups for r in client.search_runs(experiment, filter_string=f"tags.`{PARENT_TAG}` = '{g.info.run_id}'")]
    assert [r.data.params["seed"] for r in reruns] == ["0"]  # never a tuning seed
    assert reruns[0].data.params["stream.evaluate_on"] == "test" and reruns[0].data.params["train.lr"] == "0.01"


def test_a_dead_workers_trial_is_failed_retried_and_counted_once(tmp_path, monkeypatch):
    import optuna

    monkeypatch.setattr(T, "HEARTBEAT_S", 1)
    monkeypatch.setattr(T, "GRACE_S", 1)
    storage = f"sqlite:///{tmp_path}/optuna.db"
    overrides = small_overrides(tmp_path) + FAST
    plan = T.prepare("default", overrides, 1, protocol="full", storage=storage, study_name="resume",
                     space=["train.lr=log:1e-4:1e-2"])
    study = T.open_study(plan)
    dead = study.ask()  # a worker that died mid-trial: RUNNING, its heartbeat stopped
    for dim in plan.space.values():
        dim.suggest(dead)
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    result = T.tune("default", overrides, trials=1, protocol="full", storage=storage, study_name="resume",
                    space=["train.lr=log:1e-4:1e-2"], rerun=False, echo=quiet)
    trials = optuna.load_study(study_name="resume", storage=storage).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].system_attrs["failed_trial"] == 0 and trials[1].params == trials[0].params  # retried as it was
    assert result.budget["trials"] == 1 and result.budget["failed"] == 1
    again = T.tune("default", overrides, trials=1, protocol="full", storage=storage, study_name="resume",
                   space=["train.lr=log:1e-4:1e-2"], rerun=False, echo=quiet)  # the same command: nothing more to do
    assert len(optuna.load_study(study_name="resume", storage=storage).trials) == 2
    assert again.parent_id == result.parent_id and again.budget["trials"] == 1


def test_an_integer_range_is_checked_with_integers():
    """CPE-CLIP's prompt_tokens is an int: the ends of int:1:4 reach its Params as 1 and 4, not 1.0."""
    from continual.compare.space import parse

    assert parse("strategy.prompt_tokens", "int:1:4").ends() == [1, 4]
    assert all(isinstance(v, int) for v in parse("strategy.prompt_tokens", "int:1:4").ends())
