"""Config validation: every mistake fails before anything starts, in one line naming the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from continual.config.load import load_config, strategy_params
from continual.errors import ConfigError


def one_line_error(*overrides: str, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_are_valid():
    cfg = load_config(None, [])
    assert cfg.strategy.name == "finetune" and cfg.stream.n_sessions == 5


def test_shipped_configs_are_valid():
    cfg = load_config("configs/default.yaml", ["stream.n_sessions=2"])
    assert cfg.model.name == "lit-effnet-minilm" and cfg.stream.n_sessions == 2


def test_unknown_key_names_the_key_and_suggests():
    message = one_line_error("train.lrr=0.1")
    assert "train.lrr" in message and "did you mean 'lr'" in message and "batch_size" in message


def test_unknown_top_level_key():
    assert "'sed'" in one_line_error("sed=1") and "seed" in one_line_error("sed=1")


def test_wrong_type():
    message = one_line_error("train.epochs=three")
    assert message == "train.epochs: expected Integer, got 'three'"


@pytest.mark.parametrize("override, needle", [
    ("train.lr=-1", "train.lr must be > 0"),
    ("stream.n_sessions=0", "stream.n_sessions must be > 0"),
    ("train.batch_size=0", "train.batch_size must be > 0"),
    ("train.label_smoothing=1.5", "train.label_smoothing"),
    ("model.trainable=everything", "choose one of: projections"),
    ("train.optimizer=adam", "did you mean 'adamw'"),
    ("model.templates=[a photo]", "'{}'"),
])
def test_values_out_of_range(override, needle):
    assert needle in one_line_error(override)


def test_unknown_strategy_and_stream_list_the_choices():
    message = one_line_error("strategy.name=finetun")
    assert "did you mean 'finetune'" in message and "zeroshot" in message
    assert "fashion-mnist" in one_line_error("stream.name=cifar")


def test_strategy_params_are_checked_against_the_strategy():
    assert "takes no parameters" in one_line_error("strategy.lam=5")  # finetune: checked when loaded
    cfg = load_config(None, [])
    cfg.strategy.lam = 5
    with pytest.raises(ConfigError, match="takes no parameters"):
        strategy_params(cfg, None)


def test_missing_file_and_bad_override():
    message = one_line_error(path="nope.yaml")
    assert "config not found" in message and "vrlwf" in message  # the shipped names are offered
    assert "key=value" in one_line_error("train.lr")


def test_shipped_configs_resolve_by_name_outside_the_checkout(tmp_path):
    """After pip install the YAML files live in the installed `configs` package: a name finds them
    from any directory, and `continual run key=value` overrides the default config."""
    env = dict(__import__("os").environ)
    out = subprocess.run([sys.executable, "-m", "continual", "run", "vrlwf", "--dry-run", f"output_dir={tmp_path}"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "strategy vrlwf" in out.stdout, out.stderr
    # the rest in this process (imports paid once), still from a directory without configs/
    import contextlib
    import io
    import os

    from continual.cli import main

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        for argv, want in ((["run", "stream.n_sessions=2", "--dry-run", f"output_dir={tmp_path}"], ["strategy finetune", "2 sessions"]),
                           (["list"], ["pairs-offline", "pretrain-lit"])):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert main(argv) in (0, None)
            assert all(w in printed.getvalue() for w in want), printed.getvalue()[-2000:]
    finally:
        os.chdir(here)


def test_cli_help_does_not_import_heavy_packages():
    code = ("import sys, continual.cli as c\n"
            "try: c.main(['--help'])\n"
            "except SystemExit: pass\n"
            "heavy = [m for m in ('torch', 'avalanche', 'mlflow', 'open_clip') if m in sys.modules]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_cli_reports_config_errors_in_one_line():
    out = subprocess.run([sys.executable, "-m", "continual", "run", "configs/default.yaml", "train.lr=-1"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: train.lr must be > 0, got -1.0"]
