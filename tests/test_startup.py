"""Start-up: checking a config imports neither avalanche nor open_clip.

``continual run --dry-run`` (and the checks every run makes first) read each strategy's
declaration (strategies/declarations.py) and open_clip's model configs as JSON
(continual.clip.configs); the strategy classes and open_clip load only when a run builds a model.
These tests keep it so, and keep the light copies in agreement with what they stand for.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from continual.registry import STRATEGIES
from continual.strategy import Declared, StrategyDeclaration, member

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("avalanche", "open_clip")

# Runs the CLI in-process and reports, at exit, which heavy packages it imported.
_AUDIT = """
import atexit, sys
atexit.register(lambda: print("imported:", *sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr))
from continual.cli import main
sys.exit(main({argv!r}))
"""


def _heavy_imports(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", _AUDIT.format(heavy=HEAVY, argv=argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    line = next(x for x in done.stderr.splitlines() if x.startswith("imported:"))
    return done, line.split()[1:]


@pytest.mark.parametrize("config", ["default", "vrlwf"])
def test_a_dry_run_imports_neither_avalanche_nor_open_clip(tmp_path, config):
    done, heavy = _heavy_imports(["run", config, "--dry-run", f"output_dir={tmp_path}"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "config valid; nothing trained (--dry-run)" in done.stdout
    assert heavy == [], f"continual run {config} --dry-run imported {heavy}"


def test_continual_list_imports_neither(tmp_path):
    done, heavy = _heavy_imports(["list"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert heavy == []


def test_declarations_stand_for_their_classes():
    """Each shipped strategy's class inherits its declaration, and the plan's one-line
    description (the declaration's docstring) is the class's own first line."""
    for name in STRATEGIES.names():
        declared, cls = STRATEGIES.declared(name), STRATEGIES.get(name)
        assert isinstance(declared, Declared), name
        assert issubclass(cls, declared.declaration), name
        assert declared.__doc__.strip().splitlines()[0] == cls.__doc__.strip().splitlines()[0], name
        for key in ("Params", "trains", "stream_kinds", "backbone_trainable"):
            assert member(declared, key) == member(cls, key), (name, key)


def test_a_user_class_without_a_declaration_is_read_as_it_is():
    class Mine:
        """My method."""

        Params = None
        backbone_trainable = None

    STRATEGIES.register("test-startup-mine")(Mine)
    try:
        assert STRATEGIES.declared("test-startup-mine") is Mine
    finally:
        STRATEGIES._entries.pop("test-startup-mine")
    assert member(Mine, "trains") is True and member(Mine, "data_missing")(None) is None
    assert member(Mine, "stream_kinds") == StrategyDeclaration.stream_kinds


def test_model_configs_are_open_clips():
    """The configs read as JSON are the ones open_clip lists once ours are registered."""
    import open_clip

    from continual.clip import configs
    from continual.clip.backbone import register_model_configs

    register_model_configs()
    assert configs.model_names() == sorted(open_clip.list_models())
    for name in ("RN50", "ViT-B-16", "tiny-vit", configs.LIT_MODEL):
        assert configs.model_config(name) == open_clip.get_model_config(name)
    assert configs.model_config("no-such-model") is None


def test_a_model_config_added_to_open_clip_at_runtime_is_known():
    """A program that registers its own model with open_clip (as tests/_ddp_worker.py does) can run
    it: the checks read open_clip's registry too, once open_clip is imported."""
    import open_clip

    from continual.clip import configs
    from continual.errors import UserError

    name, config = "test-added-at-runtime", {"embed_dim": 32, "vision_cfg": {}, "text_cfg": {}}
    with pytest.raises(UserError, match="unknown open_clip model"):
        configs.check_source(name, "")
    open_clip.factory._MODEL_CONFIGS[name] = config
    try:
        configs.check_source(name, "")
        assert configs.model_config(name) == config and name in configs.model_names()
    finally:
        del open_clip.factory._MODEL_CONFIGS[name]
