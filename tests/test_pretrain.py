"""Building a base offline: contrastive training on real pairs, held-out data stays unseen."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from continual.errors import ConfigError, UserError
from continual.run.pretrain import PretrainConfig, base_path, load_pretrain_config, pretrain, resolve_base


def test_a_small_lit_base_learns_to_retrieve_unseen_concepts(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTINUAL_CACHE", str(tmp_path))
    cfg = PretrainConfig(name="tux-test", sources=["tux"], epochs=15, batch_size=128, zero_shot_per_class=20)
    report = pretrain(cfg, echo=lambda s: None)
    heldout = round(0.15 * 1000)  # about 15% of the ~1,000 stamps are held out
    chance = 100 / heldout
    # Real towers + trained projections retrieve unseen stamps far above chance.
    assert report["heldout_i2t_r1"] > 5 * chance and report["heldout_t2i_r1"] > 5 * chance
    with safe_open(str(base_path(cfg)), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
    assert keys == {"visual.head.proj.weight", "text.proj.weight", "logit_scale"}
    assert json.loads(meta["recipe"])["name"] == "tux-test"
    assert len(json.loads(meta["heldout_keys"])) > 100


def test_a_recipe_change_is_a_different_base():
    assert base_path(PretrainConfig()) != base_path(PretrainConfig(epochs=29))
    assert base_path(PretrainConfig()) == base_path(PretrainConfig())


def test_unknown_base_and_bad_recipe_keys():
    with pytest.raises(ConfigError, match="unknown base 'base:nope'"):
        resolve_base("nope")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_pretrain_config(None, ["epoch=3"])


def test_control_data_must_be_held_out_of_the_base():
    from continual.run.loop import _check_control_unseen
    from continual.stream import ControlSet

    control = ControlSet("c", None, None, None, keys=["a", "b"])
    _check_control_unseen(control, {"heldout_keys": json.dumps(["a", "b", "c"])})
    with pytest.raises(UserError, match="overlaps the base's training data"):
        _check_control_unseen(control, {"heldout_keys": json.dumps(["a"])})
