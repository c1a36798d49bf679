"""End to end: a real (small) experiment, read back from a real MLflow store."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from safetensors.torch import load_file

from continual.run.loop import plan, run


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory, make_config):
    tmp = tmp_path_factory.mktemp("finetune")
    cfg = make_config(tmp)
    return cfg, run(cfg, echo=lambda s: None, progress=False)


def test_accuracy_matrix_has_row_zero_and_future_columns(finetune_run):
    cfg, result = finetune_run
    R = result.accuracy
    assert R.shape == (3, 2) and not np.isnan(R).any()
    assert ((0 <= R) & (R <= 100)).all()
    # digits in 2 sessions of 5 classes: learning session 1 beats zero-shot on it
    assert R[1, 0] > R[0, 0] + 20


def test_every_metric_is_logged_for_every_session(finetune_run):
    cfg, result = finetune_run
    client = MlflowClient(result.tracking_uri)
    run_ = client.get_run(result.run_id)
    assert run_.info.status == "FINISHED"
    history = client.get_metric_history(result.run_id, "acc/session_2")
    assert [m.step for m in history] == [0, 1, 2]
    assert [m.value for m in history] == pytest.approx(result.accuracy[:, 1].tolist())
    forgetting = client.get_metric_history(result.run_id, "cl/forgetting")
    assert [m.step for m in forgetting] == [2]  # undefined after one session: not logged
    # two sessions: f_1 = max_{l in [1, 1]} R[l, 1] - R[2, 1]
    assert forgetting[0].value == pytest.approx(result.accuracy[1, 0] - result.accuracy[2, 0])
    for key in ("control/i2t_r1", "retention/relative", "session/trainable_params", "cl/avg_inc_acc", "mtil/transfer"):
        assert key in run_.data.metrics, key
    assert run_.data.metrics["session/trainable_params"] == 1280 * 256 + 384 * 256
    assert run_.data.tags["strategy"] == "finetune" and run_.data.tags["seed"] == "0"
    assert "version.torch" in run_.data.tags and "git_commit" in run_.data.tags
    assert run_.data.params["train.lr"] == str(cfg.train.lr)


def test_artifacts_hold_the_config_and_the_matrix(finetune_run):
    cfg, result = finetune_run
    client = MlflowClient(result.tracking_uri)
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "accuracy_matrix.csv", "accuracy_matrix_heatmap.png",
            "accuracy_matrix_curves.png", "summary.json", "data_plan.txt"} <= names
    folder = Path(client.download_artifacts(result.run_id, ""))
    rows = list(csv.reader(io.StringIO((folder / "accuracy_matrix.csv").read_text())))
    values = np.array([[float(v) for v in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(values, result.accuracy)
    assert "stream:" in (folder / "config.yaml").read_text()
    assert (folder / "accuracy_matrix_heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_hold_the_trained_parameters(finetune_run):
    cfg, result = finetune_run
    folder = Path(cfg.output_dir) / "checkpoints" / result.run_id
    weights = load_file(folder / "session_002.safetensors")
    trained = {k for k in weights if not k.startswith("__extra__.")}  # extra: the diagnostics' probe features
    assert trained == {"visual.head.proj.weight", "text.proj.weight", "__rng__.torch"}
    assert {"__extra__.start/image", "__extra__.previous/text"} <= set(weights)
    state = json.loads((folder / "state.json").read_text())
    assert state["session"] == 2 and np.allclose(state["matrices"]["accuracy"], result.accuracy)
    assert state["strategy"]["seen_classes"] == list(range(10))
    # only the newest weights are kept; nothing half-written is left
    assert sorted(p.name for p in folder.iterdir()) == ["session_002.safetensors", "state.json"]


def test_same_seed_same_matrix(finetune_run, tmp_path, make_config):
    cfg, result = finetune_run
    again = run(make_config(tmp_path), echo=lambda s: None, progress=False)
    np.testing.assert_array_equal(again.accuracy, result.accuracy)  # exact: the same kernels on the same inputs


def test_zero_shot_rows_all_equal_row_zero(tmp_path, make_config):
    result = run(make_config(tmp_path, "strategy.name=zeroshot", "control.name=null"),
                 echo=lambda s: None, progress=False)
    for row in result.accuracy[1:]:
        np.testing.assert_array_equal(row, result.accuracy[0])  # exact: the same model scored again
    assert result.sessions[-1]["trainable_params"] == 0


def test_plan_prints_sessions_and_classes(tmp_path, make_config):
    lines = plan(make_config(tmp_path))
    text = "\n".join(lines)
    assert "stream digits: 2 sessions, 10 classes" in text
    assert text.count("5 classes [") == 2 and "200 train / 100 test examples" in text
    assert "strategy finetune" in text and "control heldout-captions" in text


def test_failed_run_is_marked_failed(tmp_path, monkeypatch, make_config):
    import strategies.finetune as ft

    def boom(self, *a, **k):
        raise RuntimeError("boom in training")

    monkeypatch.setattr(ft.FineTune, "train", boom)
    cfg = make_config(tmp_path, "control.name=null")
    with pytest.raises(RuntimeError):
        run(cfg, echo=lambda s: None, progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (failed,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert failed.info.status == "FAILED" and "boom in training" in failed.data.tags["error"]


def test_experiment_against_a_real_mlflow_server_over_http(server, tmp_path, make_config):
    url, artifacts = server
    cfg = make_config(tmp_path / "client", f"tracking.uri={url}", "control.name=null", "train.epochs=1")
    result = run(cfg, echo=lambda s: None, progress=False)
    client = MlflowClient(url)
    run_ = client.get_run(result.run_id)
    assert run_.info.status == "FINISHED"
    assert run_.data.metrics["acc/session_1"] == pytest.approx(result.accuracy[2, 0])
    assert "accuracy_matrix.csv" in {a.path for a in client.list_artifacts(result.run_id)}
    # artifacts went over HTTP to the server's store, not to a local folder
    assert artifacts.exists() and not (tmp_path / "client" / "mlartifacts").exists()
