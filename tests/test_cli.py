"""The `continual` command: metrics from a CSV, list, dry-run, and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from continual.cli import main


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "continual", *args], capture_output=True, text=True)


def test_metrics_on_a_matrix_with_row_zero(tmp_path, capsys):
    path = tmp_path / "m.csv"
    # rows: before training, after session 1, after session 2, after session 3
    path.write_text("10,20,30\n50,25,35\n40,80,45\n30,70,90\n")
    assert main(["metrics", str(path), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["initial_row"] == 1.0 and out["sessions"] == 3.0
    assert out["last"] == pytest.approx((30 + 70 + 90) / 3)
    # forgetting: session 1 max(50, 40) - 30 = 20; session 2 max(80) - 70 = 10 -> 15
    assert out["forgetting"] == pytest.approx(15.0)
    assert out["bwt"] == pytest.approx(((30 - 50) + (70 - 80)) / 2)
    # fwt: j=2: R[1,2] - R[0,2] = 25 - 20; j=3: R[2,3] - R[0,3] = 45 - 30 -> 10
    assert out["fwt"] == pytest.approx(10.0)


def test_metrics_square_matrix_has_no_row_zero(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(",S1,S2\nafter 1,50,25\nafter 2,40,80\n")
    assert main(["metrics", str(path)]) == 0
    text = capsys.readouterr().out
    assert "forgetting" in text and "10.00" in text  # 50 - 40
    assert "fwt" in text and "-" in text.split("fwt")[1].splitlines()[0]  # needs row 0: undefined


def test_metrics_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n7,8,9\n1,2,3\n5,5,5\n")
    out = cli("metrics", str(bad))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert "5 x 3" in out.stderr
    out = cli("metrics", str(tmp_path / "absent.csv"))
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1


def test_list_names_every_registered_strategy_and_stream():
    out = cli("list")
    assert out.returncode == 0
    for name in ("finetune", "zeroshot", "fashion-mnist", "digits", "heldout-captions"):
        assert name in out.stdout


def test_dry_run_prints_the_plan_without_training(tmp_path):
    out = cli("run", "configs/default.yaml", f"output_dir={tmp_path}", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "session 5: 2 classes" in out.stdout and "1000 train / 400 test examples" in out.stdout
    assert "nothing trained" in out.stdout
    assert not (tmp_path / "mlflow.db").exists()


def test_unreachable_tracking_server_fails_before_training(tmp_path):
    out = cli("run", "configs/default.yaml", f"output_dir={tmp_path}", "tracking.uri=http://127.0.0.1:9")
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "127.0.0.1:9" in out.stderr
