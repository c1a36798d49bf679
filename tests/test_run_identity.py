"""What a person reads of a run in MLflow: a name per strategy, stream and seed (unique when
taken), the result in its description, the experiment opening in the model-training view,
MLflow's source tags, a labelled matrix CSV, per-class accuracy and the loss by component."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from continual.run.loop import run


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, make_config):
    """The same VR-LwF config twice into one store (the second name must differ)."""
    tmp = tmp_path_factory.mktemp("identity")
    cfg = make_config(tmp, "strategy.name=vrlwf", "strategy.vocab_size=64")
    first = run(cfg, echo=lambda s: None, progress=False)
    second = run(cfg, echo=lambda s: None, progress=False, fresh=True)
    return cfg, first, second


def test_runs_are_named_by_strategy_stream_and_seed_and_made_unique(two_runs):
    cfg, first, second = two_runs
    client = MlflowClient(first.tracking_uri)
    names = [client.get_run(r.run_id).info.run_name for r in (first, second)]
    assert names == ["vrlwf-digits-s0", "vrlwf-digits-s0-2"]


def test_the_description_states_the_result_with_units(two_runs):
    cfg, first, _ = two_runs
    tags = MlflowClient(first.tracking_uri).get_run(first.run_id).data.tags
    note = tags["mlflow.note.content"]
    assert note.startswith("vrlwf on digits, seed 0, after session 2 of 2: ")
    assert tags["sessions"] == "2"  # the stream's own count, which the comparison table's title reads
    assert f"accuracy on seen sessions {first.summary['acc/seen']:.1f}%" in note
    assert f"forgetting {first.summary['cl/forgetting']:.1f} pts" in note
    assert f"(retention {first.summary['retention/relative']:.2f}x)" in note


def test_experiment_opens_in_the_model_training_view_and_source_tags_are_set(two_runs):
    cfg, first, _ = two_runs
    client = MlflowClient(first.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    tags = client.get_run(first.run_id).data.tags
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["git_commit"].startswith(tags["mlflow.source.git.commit"])


def test_matrix_csv_has_a_named_label_column_and_per_class_accuracy(two_runs, tmp_path):
    cfg, first, _ = two_runs
    local = Path(MlflowClient(first.tracking_uri).download_artifacts(first.run_id, "", str(tmp_path)))
    with open(local / "accuracy_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "model" and rows[0][1].startswith("S1: ") and rows[1][0] == "before training"
    with open(local / "per_class_accuracy.csv", newline="") as f:
        per_class = list(csv.reader(f))
    stream = _stream(cfg)
    assert per_class[0] == ["model", *stream.class_names]
    values = np.array([[float(v) for v in row[1:]] for row in per_class[1:]])
    assert values.shape == (3, 10) and ((0 <= values) & (values <= 100)).all()
    # a session's accuracy is the mean of its classes' (each has the same number of test images)
    for i in range(3):
        for j, session in enumerate(stream.sessions):
            assert first.accuracy[i, j] == pytest.approx(values[i, list(session.classes)].mean(), rel=1e-12)
    assert {"accuracy_matrix_heatmap.png", "accuracy_matrix_curves.png"} <= {p.name for p in local.iterdir()}


def _stream(cfg):
    from continual.registry import STREAMS

    return STREAMS.get(cfg.stream.name)(cfg.stream, cfg.seed)


def test_loss_is_logged_by_component_with_distillation_as_a_kl(two_runs):
    cfg, first, _ = two_runs
    client = MlflowClient(first.tracking_uri)
    metrics = client.get_run(first.run_id).data.metrics
    assert {"loss/task", "loss/vrlwf"} <= set(metrics)
    kl = client.get_metric_history(first.run_id, "loss/vrlwf")
    task = client.get_metric_history(first.run_id, "loss/task")
    assert len(kl) == len(task) == 2 * cfg.train.epochs  # one point per epoch
    # a KL: non-negative, and far below the cross-entropy form (the teacher's entropy, T^2-scaled,
    # is around 4 (ln 64 + ln 16) = 27 here), which is what the loss itself holds
    assert all(m.value >= 0 for m in kl) and max(m.value for m in kl) < 5.0
