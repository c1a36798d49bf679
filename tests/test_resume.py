"""A crash loses no finished session: kill a real run mid-way, run the same command again."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from continual.run import checkpoint


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "continual", "run", "configs/default.yaml", "--no-progress",
            f"output_dir={out}", "model.pretrained=null", "stream.name=digits", "stream.n_sessions=4",
            "stream.train_per_class=60", "stream.test_per_class=20", "control.sources=[tux]",
            "train.epochs=40", "train.batch_size=16", "tracking.experiment=resume"]


def finished_run(out: Path):
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "summary.json")).read_text())
    return client, run, np.array(summary["accuracy"])


@pytest.mark.slow
def test_killed_run_resumes_in_the_same_mlflow_run_with_the_same_result(tmp_path):
    whole = subprocess.run(command(tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr[-2000:]
    _, _, expected = finished_run(tmp_path / "whole")

    out = tmp_path / "killed"
    proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    state_files = out / "checkpoints"
    while time.time() < deadline:  # kill as soon as session 1 is checkpointed: mid-session 2
        states = list(state_files.glob("*/state.json"))
        if states and json.loads(states[0].read_text())["session"] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(next(state_files.glob("*/state.json")).read_text())["session"]
    assert killed_at < 4, "the run finished before it could be killed"

    again = subprocess.run(command(out), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming after session {killed_at} of 4" in again.stdout
    client, run, resumed = finished_run(out)  # one run only: the same MLflow run continued
    assert run.info.status == "FINISHED"
    np.testing.assert_array_equal(resumed, expected)  # bit for bit on the CPU
    for key in ("acc/session_1", "cl/avg_acc", "control/i2t_r1", "session/train_seconds"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice for a step: {steps}"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "acc/session_1")) == [0, 1, 2, 3, 4]
    for key in ("Loss_Epoch/train_phase/train_stream", "loss/task"):  # the training curves: every
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]  # epoch of 4 sessions, once
        assert len(steps) == len(set(steps)) == 4 * 40, f"{key}: {len(steps)} values at {len(set(steps))} steps"
    assert {"accuracy_matrix_heatmap.png", "accuracy_matrix_curves.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "accuracy_matrix.csv", "summary.json"} <= artifacts


def test_corrupted_checkpoint_is_reported_not_loaded(tmp_path):
    import torch

    model = torch.nn.Linear(3, 2)
    checkpoint.save(tmp_path, 1, model, {"accuracy": [[1.0]]})
    assert checkpoint.load(tmp_path)["session"] == 1
    weights = tmp_path / "session_001.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="corrupted") as info:
        checkpoint.load(tmp_path)
    assert "\n" not in str(info.value)
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path)


def test_restore_puts_weights_and_random_state_back(tmp_path):
    import random

    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    checkpoint.save(tmp_path, 2, model, {})
    after = (torch.rand(3), np.random.rand(), random.random())
    other = torch.nn.Linear(3, 2)
    torch.rand(5), np.random.rand(), random.random()
    checkpoint.restore(other, checkpoint.load(tmp_path))
    assert torch.equal(other.weight, model.weight)
    again = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(after[0], again[0]) and after[1:] == again[1:]


def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, make_config):
    import torch

    from continual.run.loop import run
    from strategies.base import ClipStrategy, NonFiniteLossError

    criterion = ClipStrategy.criterion

    def diverging(self):
        loss = criterion(self)
        if self.experience.current_experience == 1:  # session 2 diverges
            self.record_term("task", torch.tensor(float("nan")))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(ClipStrategy, "criterion", diverging)
    cfg = make_config(tmp_path, "control.name=null")
    with pytest.raises(NonFiniteLossError, match=r"session 2, iteration 1 \(non-finite term: task\)"):
        run(cfg, echo=lambda s: None, progress=False)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (failed,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert failed.info.status == "FAILED" and "training diverged" in failed.data.tags["error"]
    state = checkpoint.load(tmp_path / "checkpoints" / failed.info.run_id)
    assert state["session"] == 1  # the last good session is kept
    # the figures drawn off the training thread show the last finished session: the crash flushed them
    figures = {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert {"accuracy_matrix.csv", "accuracy_matrix_heatmap.png", "accuracy_matrix_curves.png"} <= figures
    drawn = []
    from continual.tracking.logger import save_figure

    def recording(path, draw, *args, **kwargs):  # the matrix each heatmap is drawn from
        if Path(path).name == "accuracy_matrix_heatmap.png":
            drawn.append(args[0].shape)
        return save_figure(path, draw, *args, **kwargs)

    monkeypatch.setattr("continual.tracking.logger.save_figure", recording)
    with pytest.raises(NonFiniteLossError):
        run(make_config(tmp_path / "again", "control.name=null"), echo=lambda s: None, progress=False)
    assert drawn[-1] == (2, 2)  # rows: before training, after session 1
