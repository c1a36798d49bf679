"""Matched recipes: on one stream every method config shares one training recipe and differs from
the fine-tuning baseline in its strategy alone; any method runs on any method config; a run's
strategy section holds the parameters it uses (defaults and presets resolved)."""

from __future__ import annotations

import pytest

from continual.config.load import load_config, to_dict
from continual.errors import ConfigError
from continual.tracking.params import as_params

DEFAULT_STREAM_METHODS = ["lwf", "vrlwf", "zscl", "wiseft", "joint", "modx"]


def without_strategy(name: str, *overrides: str) -> dict:
    return {k: v for k, v in as_params(to_dict(load_config(name, list(overrides)))).items()
            if not k.startswith("strategy.")}


@pytest.mark.parametrize("method", DEFAULT_STREAM_METHODS)
def test_method_configs_differ_from_the_baseline_in_the_strategy_alone(method):
    assert without_strategy(method) == without_strategy("default")
    assert load_config(method, []).strategy.name == method


def test_the_shared_recipe_is_the_methods_recipe():
    train = load_config("default", []).train
    assert (train.label_smoothing, train.warmup_steps, train.lr, train.epochs) == (0.2, 32, 1e-3, 20)


def test_another_method_on_a_method_config_keeps_the_recipe_and_sets_the_parameters_aside(capsys, monkeypatch):
    from continual.config import load

    monkeypatch.setattr(load, "_NOTED", set())  # the note is said once per process
    cfg = load_config("lwf", ["strategy.name=finetune"])
    assert dict(cfg.strategy) == {"name": "finetune"}
    assert to_dict(cfg) == to_dict(load_config("default", []))
    note = capsys.readouterr().err
    assert "set aside" in note and "alpha" in note and "temperature" in note
    load_config("lwf", ["strategy.name=finetune", "seed=3"])
    assert capsys.readouterr().err == ""  # once, not once per seed of a sweep
    cfg = load_config("lwf", ["strategy.name=vrlwf", "strategy.lam=3"])
    assert cfg.strategy.lam == 3 and "alpha" not in cfg.strategy


def test_a_misspelt_parameter_of_the_new_method_is_still_an_error():
    with pytest.raises(ConfigError, match="strategy.lamm"):
        load_config("lwf", ["strategy.name=vrlwf", "strategy.lamm=3"])
    with pytest.raises(ConfigError, match="takes no parameters"):
        load_config("default", ["strategy.alpha=1"])


def test_parameters_are_resolved_so_a_default_and_its_value_are_one_run():
    unset = load_config("vrlwf", [])
    assert unset.strategy.lam == 1.0 and unset.strategy.vocab_size == 1000  # defaults filled in
    assert as_params(to_dict(unset)) == as_params(to_dict(load_config("vrlwf", ["strategy.lam=1.0"])))
    assert as_params(to_dict(unset)) != as_params(to_dict(load_config("vrlwf", ["strategy.lam=2.0"])))


def test_a_preset_resolves_into_the_values_it_sets():
    cfg = load_config("default", ["strategy.name=lwf", "strategy.preset=mtil"])
    assert cfg.strategy.preset == "mtil" and cfg.strategy.text_features == "teacher" and cfg.strategy.symmetric
    # a value the file or the command line gives wins over the preset's
    assert load_config("lwf", ["strategy.preset=mtil"]).strategy.text_features == "student"


def test_inherit_reads_a_file_beside_and_refuses_a_cycle(tmp_path):
    (tmp_path / "base.yaml").write_text("inherit: default\ntrain:\n  lr: 0.01\n")
    (tmp_path / "child.yaml").write_text("inherit: base\nstrategy:\n  name: lwf\n")
    cfg = load_config(tmp_path / "child.yaml", [])
    assert cfg.train.lr == 0.01 and cfg.train.label_smoothing == 0.2 and cfg.strategy.name == "lwf"
    (tmp_path / "a.yaml").write_text("inherit: b\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("inherit: a\nseed: 2\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml", [])
    (tmp_path / "c.yaml").write_text("inherit: nowhere\nseed: 1\n")
    with pytest.raises(ConfigError, match="config not found: 'nowhere'"):
        load_config(tmp_path / "c.yaml", [])


def test_a_run_logs_the_parameters_it_used(tmp_path, make_config):
    """Nothing of LwF's is given, yet its run's params hold every value it trained with."""
    from mlflow import MlflowClient

    from continual.run.loop import run

    cfg = make_config(tmp_path, "strategy.name=lwf", "diagnostics.enabled=false", "train.epochs=1")
    result = run(cfg, echo=lambda s: None, progress=False)
    params = MlflowClient(result.tracking_uri).get_run(result.run_id).data.params
    assert {k: params[f"strategy.{k}"] for k in ("alpha", "temperature", "classes", "text_features", "symmetric")} == \
        {"alpha": "1.0", "temperature": "2.0", "classes": "current", "text_features": "student", "symmetric": "False"}
    assert params["train.label_smoothing"] == "0.0" and params["train.warmup_steps"] == "0"  # the train section too
