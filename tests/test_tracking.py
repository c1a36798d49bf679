"""continual.tracking.logger against real MLflow stores: sqlite files and a real `mlflow server`."""

from __future__ import annotations

import csv
import math
import pickle
import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from omegaconf import OmegaConf
from PIL import Image

from conftest import free_port
from continual.tracking import store as tracking_store
from continual.tracking import logger as tracking
from continual.tracking.store import TrackingError
from continual.tracking.logger import MLflowLogger

ROWS = ["before training", "after session 1", "after session 2"]
COLS = ["session 1", "session 2"]
R = np.array([[0.10, 0.20], [0.85, 0.30], [0.70, 0.90]])


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def store(store_dir: Path) -> str:
    """One sqlite store for the module: creating its tables takes seconds.

    Tests stay independent by reading back only their own run (or experiment).
    """
    return tracking_store.default_tracking_uri(str(store_dir))


def read_csv(path: str) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    return header, [r[0] for r in body], np.array([[float(c) for c in r[1:]] for r in body])


# --------------------------------------------------------------------------- #
# Pure helpers
# --------------------------------------------------------------------------- #
def test_default_locations_are_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert tracking_store.default_tracking_uri("outputs") == f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert tracking_store.default_artifact_root("outputs") == f"{tmp_path}/outputs/mlartifacts"


def test_flatten() -> None:
    cfg = {
        "train": {"lr": 0.1, "epochs": 2, "milestones": [1, 2]},
        "stream": {"name": "cifar", "classes": []},
        "heads": [{"width": 8}, {"width": 16}],
        "empty": {},
        "none": None,
        "long": "x" * 10_000,
    }
    flat = tracking.flatten(cfg)
    assert flat["train.lr"] == "0.1"
    assert flat["train.epochs"] == "2"
    assert flat["train.milestones"] == "[1, 2]"
    assert flat["stream.classes"] == "[]"
    assert flat["heads.0.width"] == "8" and flat["heads.1.width"] == "16"
    assert flat["empty"] == "{}"
    assert flat["none"] == "None"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("chars]")
    assert all(isinstance(v, str) for v in flat.values())
    assert tracking.flatten({"a": 1}, prefix="cfg") == {"cfg.a": "1"}
    # OmegaConf containers flatten the same way (interpolations resolved).
    omega = OmegaConf.create({"train": {"lr": 0.5, "copy": "${train.lr}", "ids": [3, 4]}})
    assert tracking.flatten(omega) == {"train.lr": "0.5", "train.copy": "0.5", "train.ids": "[3, 4]"}


def test_run_metadata() -> None:
    meta = tracking_store.run_metadata()
    assert set(meta) == {"torch", "open_clip", "avalanche", "mlflow", "numpy", "python", "git_commit"}
    assert meta["mlflow"] == mlflow.__version__
    assert meta["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert meta["numpy"] == np.__version__
    assert re.fullmatch(r"unknown|[0-9a-f]{40}(-dirty)?", meta["git_commit"]), meta["git_commit"]


# --------------------------------------------------------------------------- #
# check_tracking_uri
# --------------------------------------------------------------------------- #
def test_check_closed_port_fails_fast_with_one_line() -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingError) as info:
        tracking_store.check_tracking_uri(uri, timeout=2.0)
    assert time.monotonic() - start < 3.0
    message = str(info.value)
    assert "\n" not in message
    assert uri in message and "continual ui" in message and "tracking.uri" in message
    assert isinstance(info.value, ValueError)


def test_check_sqlite(tmp_path: Path) -> None:
    tracking_store.check_tracking_uri(f"sqlite:///{tmp_path}/new/dir/mlflow.db")
    assert not (tmp_path / "new").exists()  # a check creates nothing (a dry run makes it too)

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(TrackingError, match="is not a directory"):
        tracking_store.check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")

    with pytest.raises(TrackingError, match="sqlite"):
        tracking_store.check_tracking_uri(str(tmp_path / "mlruns"))


# --------------------------------------------------------------------------- #
# The logger on a sqlite store
# --------------------------------------------------------------------------- #
def test_log_and_read_back(store: str, store_dir: Path, tmp_path: Path) -> None:
    params = {"train": {"lr": 0.01, "epochs": 3}, "stream": {"name": "tiny"}}
    logger = MLflowLogger(store, experiment="exp-a", run_name="run-a", tags={"purpose": "test"}, params=params)
    for step in range(4):
        logger.log_metrics({"acc": 0.5 + step / 10, "loss": 1.0 / (step + 1), "skip_nan": math.nan, "skip_none": None}, step=step)
    logger.log_matrix("accuracy_matrix", R, ROWS, COLS, title="Accuracy")
    logger.log_text("hello\n", "notes/readme.txt")
    logger.log_json({"a": [1, 2], "path": Path("/x")}, "summary.json")
    logger.finish()

    client = MlflowClient(store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == logger.experiment_id
    assert client.get_experiment(logger.experiment_id).name == "exp-a"
    assert run.info.run_name == "run-a"
    # Artifacts live next to the database, not in ./mlruns of whatever the cwd was.
    assert run.info.artifact_uri.startswith(tracking_store.default_artifact_root(str(store_dir)))

    history = client.get_metric_history(logger.run_id, "acc")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history] == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert [m.step for m in client.get_metric_history(logger.run_id, "loss")] == [0, 1, 2, 3]
    assert "skip_nan" not in run.data.metrics and "skip_none" not in run.data.metrics

    assert run.data.params == {"train.lr": "0.01", "train.epochs": "3", "stream.name": "tiny"}
    tags = run.data.tags
    assert tags["purpose"] == "test"
    assert tags["git_commit"] == tracking_store.run_metadata()["git_commit"]
    for key in ("torch", "open_clip", "avalanche", "mlflow", "numpy", "python"):
        assert tags[f"version.{key}"]
    assert tags["version.mlflow"] == mlflow.__version__
    assert "error" not in tags

    names = {a.path for a in client.list_artifacts(logger.run_id)}
    assert {"accuracy_matrix.csv", "accuracy_matrix_heatmap.png", "accuracy_matrix_curves.png",
            "summary.json", "notes"} <= names
    local = Path(client.download_artifacts(logger.run_id, "", str(tmp_path / "dl")))
    header, labels, values = read_csv(str(local / "accuracy_matrix.csv"))
    assert header == ["model", *COLS] and labels == ROWS
    np.testing.assert_array_equal(values, R)
    for png in ("accuracy_matrix_heatmap.png", "accuracy_matrix_curves.png"):
        with Image.open(local / png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert (local / "notes" / "readme.txt").read_text() == "hello\n"
    assert '"path": "/x"' in (local / "summary.json").read_text()


def test_matrix_is_replaced_on_later_session(store: str, tmp_path: Path) -> None:
    with MLflowLogger(store) as logger:
        logger.log_matrix("m", R[:2], ROWS[:2], COLS)
        R_nan = R.copy()
        R_nan[2, 1] = np.nan  # a cell not evaluated yet
        logger.log_matrix("m", R_nan, ROWS, COLS)
    client = MlflowClient(store)
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == ["m.csv", "m_curves.png", "m_heatmap.png"]
    _, labels, values = read_csv(client.download_artifacts(logger.run_id, "m.csv", str(tmp_path)))
    assert labels == ROWS
    np.testing.assert_array_equal(values, R_nan)  # NaN round-trips

    with pytest.raises(ValueError, match="does not match"):
        MLflowLogger(store).log_matrix("bad", R, ROWS[:2], COLS)


def test_context_manager_marks_failed_with_error_tag(store: str) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with MLflowLogger(store) as logger:
            logger.log_metrics({"acc": 0.1}, step=0)
            raise RuntimeError("boom\nsecond line " + "y" * 5000)
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.info.status == "FAILED"
    error = run.data.tags["error"]
    assert error.startswith("RuntimeError: boom second line")
    assert "\n" not in error and len(error) <= 1000

    # finish() is idempotent: the FAILED status is not overwritten.
    logger.finish("FINISHED")
    assert MlflowClient(store).get_run(logger.run_id).info.status == "FAILED"


def test_finish_statuses(store: str) -> None:
    logger = MLflowLogger(store)
    with pytest.raises(Exception):
        logger.finish("DONE")  # not an MLflow status
    logger.finish("killed", error="interrupted")
    run = MlflowClient(store).get_run(logger.run_id)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted"


def test_reopen_run_id_continues_the_same_run(store: str) -> None:
    first = MLflowLogger(store, experiment="resume", params={"lr": 0.1, "epochs": 1})
    first.log_metrics({"acc": 0.3}, step=0)
    first.finish("KILLED")

    with pytest.warns(UserWarning, match="epochs"):
        resumed = MLflowLogger(store, run_id=first.run_id, params={"lr": 0.1, "epochs": 2, "seed": 7})
    client = MlflowClient(store)
    assert resumed.run_id == first.run_id
    assert resumed.experiment_id == first.experiment_id
    assert client.get_run(first.run_id).info.status == "RUNNING"
    resumed.log_metrics({"acc": 0.6}, step=1)
    resumed.log_metrics({"acc": 0.9}, step=0)  # a step the run already has: not logged twice
    resumed.finish()

    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "acc")] == [(0, 0.3), (1, 0.6)]
    assert run.data.params == {"lr": "0.1", "epochs": "1", "seed": "7"}
    assert len(client.search_runs([first.experiment_id])) == 1

    with pytest.raises(TrackingError, match="cannot re-open run"):
        MLflowLogger(store, run_id="0" * 32)


def test_a_resumed_run_logs_each_metric_and_step_once(store: str) -> None:
    """A resumed session repeats what the crashed one logged: the store keeps the first value."""
    first = MLflowLogger(store, experiment="resume-once")
    first.log_metrics({"loss": 0.9}, step=0)
    first.log_metrics({"loss": 0.8}, step=1)
    first.finish("KILLED")
    resumed = MLflowLogger(store, run_id=first.run_id)
    resumed.hold_metrics([("loss", 0.8, 1)])  # e.g. a checkpoint's held metrics
    resumed.log_metrics({"loss": 0.7}, step=2)
    resumed.finish()
    history = MlflowClient(store).get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 0.9), (1, 0.8), (2, 0.7)]


def test_figures_are_drawn_off_the_callers_thread_latest_wins(store: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    release, drawn = threading.Event(), []

    def slow_save(path, draw, *args, **kwargs):
        release.wait(10)  # holds the uploading thread until the test lets it go
        drawn.append((threading.current_thread().name, Path(path).name, args[0].copy()))
        return real_save(path, draw, *args, **kwargs)

    real_save = tracking.save_figure
    monkeypatch.setattr(tracking, "save_figure", slow_save)
    logger = MLflowLogger(store)
    start = time.monotonic()
    for k in range(1, 4):  # three rows in quick succession, while the first drawing is held
        logger.log_matrix("m", R[:k], ROWS[:k], COLS)
    assert time.monotonic() - start < 5  # nobody waited for a drawing
    release.set()
    logger.finish()
    # the first drawing started at once; the second was replaced by the third before it began
    assert [(file, r.shape[0]) for _, file, r in drawn] == [("m_heatmap.png", 1), ("m_curves.png", 1),
                                                            ("m_heatmap.png", 3), ("m_curves.png", 3)]
    assert all(name == "continual-figures" for name, _, _ in drawn)
    client = MlflowClient(store)
    assert sorted(a.path for a in client.list_artifacts(logger.run_id)) == ["m.csv", "m_curves.png", "m_heatmap.png"]
    _, labels, values = read_csv(client.download_artifacts(logger.run_id, "m.csv", str(tmp_path)))
    np.testing.assert_array_equal(values, R)  # the CSV is written at once, every time
    with Image.open(client.download_artifacts(logger.run_id, "m_heatmap.png", str(tmp_path))) as png:
        assert png.size[0] > 400  # a real figure came back from the drawing process


def broken_heatmap(*args, **kwargs):
    raise OSError("disk full")


def test_a_figure_that_fails_fails_finish_not_silently(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracking, "heatmap", broken_heatmap)  # raised in the drawing process
    logger = MLflowLogger(store)
    logger.log_matrix("m", R, ROWS, COLS)
    with pytest.raises(OSError, match="disk full"):
        logger.finish()
    client = MlflowClient(store)
    assert client.get_run(logger.run_id).info.status == "RUNNING"  # not FINISHED with a figure missing
    logger.finish("FAILED", error="OSError: disk full")  # what the runner does next
    assert client.get_run(logger.run_id).info.status == "FAILED"
    assert not any(a.path.endswith(".png") for a in client.list_artifacts(logger.run_id))  # no half-updated pair


def test_avalanche_metrics_are_sent_in_one_batch_with_ours(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from avalanche.evaluation.metric_results import MetricValue

    logger = MLflowLogger(store)
    calls = []
    real = logger.client.log_batch
    monkeypatch.setattr(logger.client, "log_batch", lambda *a, **k: calls.append(k.get("metrics")) or real(*a, **k))
    for epoch in range(30):  # what Avalanche's evaluator sends after every training epoch
        logger.log_metrics([MetricValue("Loss_Epoch", "Loss_Epoch/train_phase", 1.0 / (epoch + 1), epoch)])
    assert calls == []  # held ...
    logger.log_metrics({"acc": 0.5}, step=0)  # ... until our code logs the session's row
    assert len(calls) == 1 and len(calls[0]) == 31
    logger.finish()
    history = MlflowClient(store).get_metric_history(logger.run_id, "Loss_Epoch/train_phase")
    assert [m.step for m in history] == list(range(30))


def test_logger_survives_pickling(store: str) -> None:
    """Avalanche checkpoints pickle the strategy, its loggers included."""
    logger = MLflowLogger(store)
    clone = pickle.loads(pickle.dumps(logger))
    clone.log_metrics({"acc": 0.4}, step=3)
    clone.finish()
    assert MlflowClient(store).get_run(logger.run_id).data.metrics == {"acc": 0.4}


def test_two_stores_in_one_process(tmp_path: Path) -> None:
    global_uri = mlflow.get_tracking_uri()
    a = MLflowLogger(tracking_store.default_tracking_uri(str(tmp_path / "a")))
    b = MLflowLogger(tracking_store.default_tracking_uri(str(tmp_path / "b")))
    a.log_metrics({"x": 1.0}, step=0)
    b.log_metrics({"x": 2.0}, step=0)
    a.finish()
    b.finish()
    assert MlflowClient(a.tracking_uri).get_run(a.run_id).data.metrics == {"x": 1.0}
    assert MlflowClient(b.tracking_uri).get_run(b.run_id).data.metrics == {"x": 2.0}
    with pytest.raises(Exception):
        MlflowClient(a.tracking_uri).get_run(b.run_id)
    assert mlflow.get_tracking_uri() == global_uri  # no global state touched


# --------------------------------------------------------------------------- #
# The Avalanche side
# --------------------------------------------------------------------------- #
def test_avalanche_naive_strategy_logs_to_mlflow(store: str, tmp_path: Path) -> None:
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    generator = torch.Generator().manual_seed(0)

    def session(label: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(16, 4, generator=generator) + 2 * label, torch.full((16,), label)

    benchmark = tensors_benchmark(
        train_tensors=[session(0), session(1)], test_tensors=[session(0), session(1)], task_labels=[0, 0]
    )
    logger = MLflowLogger(store, experiment="avalanche")
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True), loss_metrics(epoch=True), loggers=[logger]
    )
    model = torch.nn.Linear(4, 2)
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), train_mb_size=8,
        train_epochs=1, eval_mb_size=16, evaluator=evaluator, device="cpu",
    )
    for experience in benchmark.train_stream:
        strategy.train(experience)
        strategy.eval(benchmark.test_stream)
    # Values Avalanche metrics can emit besides numbers: an image becomes an artifact,
    # a histogram tensor and checkpoint bytes are skipped.
    logger.log_single_metric("ConfusionMatrix_Stream/eval_phase/test_stream", Image.new("RGB", (8, 8)), 4)
    logger.log_single_metric("Histogram/x", torch.randn(10), 4)
    logger.log_single_metric("WeightCheckpoint/x", b"\x00\x01", 4)
    logger.log_single_metric("Scalar/tensor", torch.tensor(0.25), 5)
    logger.finish()

    client = MlflowClient(store)
    metrics = client.get_run(logger.run_id).data.metrics
    for exp in ("Exp000", "Exp001"):
        name = f"Top1_Acc_Exp/eval_phase/test_stream/Task000/{exp}"
        history = client.get_metric_history(logger.run_id, name)
        assert len(history) == 2  # evaluated after each of the two sessions
        assert all(0.0 <= m.value <= 1.0 for m in history)
        assert history[0].step < history[1].step
        # the step is Avalanche's x_plot, same as in its own evaluator
        x_plots, values = strategy.evaluator.get_all_metrics()[name]
        assert [m.step for m in history] == x_plots
        assert [m.value for m in history] == pytest.approx(values)
    assert "Top1_Acc_Stream/eval_phase/test_stream/Task000" in metrics
    assert "Loss_Epoch/train_phase/train_stream/Task000" in metrics
    assert metrics["Scalar/tensor"] == 0.25
    assert not any(name.startswith(("Histogram", "WeightCheckpoint")) for name in metrics)
    image = "avalanche/ConfusionMatrix_Stream/eval_phase/test_stream/step_000004.png"
    with Image.open(client.download_artifacts(logger.run_id, image, str(tmp_path))) as png:
        assert png.size == (8, 8)


# --------------------------------------------------------------------------- #
# A real tracking server over HTTP
# --------------------------------------------------------------------------- #
def test_logging_through_a_real_server(server: tuple[str, Path], tmp_path: Path) -> None:
    url, artifact_dir = server
    tracking_store.check_tracking_uri(url)  # healthy: no error

    with MLflowLogger(url, experiment="remote", run_name="http", params={"a": {"b": 1}}) as logger:
        for step in range(4):
            logger.log_metrics({"acc": step / 4}, step=step)
        logger.log_matrix("accuracy_matrix", R, ROWS, COLS)

    client = MlflowClient(url)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    assert [(m.step, m.value) for m in client.get_metric_history(logger.run_id, "acc")] == [
        (0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75)
    ]
    assert run.data.params == {"a.b": "1"}
    assert "git_commit" in run.data.tags and "version.torch" in run.data.tags
    assert {a.path for a in client.list_artifacts(logger.run_id)} == {
        "accuracy_matrix.csv", "accuracy_matrix_heatmap.png", "accuracy_matrix_curves.png"
    }
    _, _, values = read_csv(client.download_artifacts(logger.run_id, "accuracy_matrix.csv", str(tmp_path)))
    np.testing.assert_array_equal(values, R)
    # Artifacts were uploaded over HTTP into the server's artifact destination.
    assert list(artifact_dir.rglob("accuracy_matrix.csv"))


def test_heatmap_with_long_session_names_keeps_its_matrix(tmp_path):
    """Sessions named by their groups (the image-text streams') are wrapped onto lines: unwrapped,
    slanted labels this long squeezed the matrix until matplotlib gave up its layout."""
    import warnings

    from continual.figures.matrices import heatmap, tick_labels

    cols = ["Activities, household, Travel & Places, clothes, town",
            "People & Body, Symbols, animals, Animals & Nature, seasonal",
            "Flags, plants, food, symbols, vehicles", "Smileys & Emotion, Objects, Food & Drink, hobbies, people"]
    rows = ["before training"] + [f"after session {i}" for i in range(1, 5)]
    R = np.linspace(0, 100, 20).reshape(5, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied" is a UserWarning
        fig = heatmap(R, rows, cols, "i-to-t R@1 (%)", chance=[3.125, 12.5, 10, 11.1], value_label="i-to-t R@1 (%)")
        fig.savefig(tmp_path / "h.png", dpi=60)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == tick_labels(cols)
    assert all(len(line) <= 18 for label in tick_labels(cols) for line in label.splitlines())
    box = ax.get_position()  # the matrix keeps most of the figure
    assert box.width > 0.5 and box.height > 0.4
