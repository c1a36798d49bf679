"""Loading and validating an experiment config.

A YAML file is merged onto the schema (``continual.config.schema``), then dotted command-line overrides on top. Every
problem (unknown key, wrong type, value out of range, unknown strategy/stream name) is raised as
a one-line :class:`ConfigError` naming the key and the allowed values, before anything starts.
Strategy hyper-parameters live beside ``strategy.name`` and are validated against the strategy
class's own ``Params`` dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from pathlib import Path
from typing import Any, List, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException, ValidationError

from continual.config import shipped
from continual.config.schema import (
    EVAL_LABEL_SPACES, EVAL_METRICS, HOLDOUTS, KARPATHY_TRAIN_SPLITS, LABEL_SPACES, LOSSES, ON_CORRUPT,
    OPTIMIZERS, PRECISIONS, PROBES, SAMPLINGS, SCHEDULERS, SESSION_BY, TEMPLATE_USE, TEST_BY, TRAINABLE,
    ExperimentConfig,
)
from continual.errors import ConfigError, first_line
from continual.registry import CONTROLS, STRATEGIES, STREAMS


INHERIT = "inherit"  # a config's key naming the config it builds on (a shared recipe)
_NOTED: set[str] = set()


def load_config(path: str | Path | None, overrides: List[str] = ()) -> DictConfig:
    """Schema <- YAML file (on the configs it inherits) <- dotted overrides, validated, with the
    strategy's parameters resolved (defaults and presets filled in). Raises a one-line ConfigError.

    ``strategy.name=OTHER`` on a config of another method runs OTHER with the same recipe: the
    file's own method parameters are set aside (one line on stderr says which); parameters given
    on the command line are kept and checked against OTHER's."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.lr=1e-4)")
    try:
        given = OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise _explain(exc) from None
    layers = [OmegaConf.structured(ExperimentConfig)]
    if path is not None:
        loaded = _read_with_recipe(shipped.resolve(path), seen=())
        layers.append(_set_aside_other_method(loaded, given))
    try:
        layers.append(given)
        cfg = OmegaConf.merge(*layers)
        OmegaConf.to_container(cfg, resolve=True)  # every ${...} interpolation resolves
    except OmegaConfBaseException as exc:
        raise _explain(exc) from None
    validate(cfg)
    resolve_strategy(cfg)
    return cfg


def _read(path: Path) -> DictConfig:
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml errors are multi-line: keep the first line
        raise ConfigError(f"{path}: not valid YAML: {first_line(exc)}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: the top level is a list; a config is a mapping of sections "
                          "(model:, stream:, train:, ...), as in configs/default.yaml")
    if not loaded:  # a run of the schema's defaults is never what an empty file meant
        raise ConfigError(f"{path} is empty (it sets nothing); give a config such as configs/default.yaml")
    return loaded


def _read_with_recipe(path: Path, seen: tuple[Path, ...]) -> DictConfig:
    """The file merged onto the config it inherits (``inherit: NAME_OR_PATH``: a file beside it, a
    path, or a shipped config), recursively; the ``inherit`` key itself is consumed here."""
    if path.resolve() in seen:
        chain = " -> ".join(p.name for p in (*seen, path.resolve()))
        raise ConfigError(f"{path}: inherit makes a cycle ({chain}); a config must build on a config that does not "
                          "build on it")
    loaded = _read(path)
    parent = loaded.pop(INHERIT, None)
    if parent is None:
        return loaded
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"{path}: inherit must name one config (a shipped name or a YAML path), got {parent!r}")
    beside = path.parent / (parent if parent.endswith(".yaml") else f"{parent}.yaml")
    base = _read_with_recipe(beside if beside.is_file() else shipped.resolve(parent), (*seen, path.resolve()))
    return OmegaConf.merge(base, loaded)


def _set_aside_other_method(loaded: DictConfig, given: DictConfig) -> DictConfig:
    """With ``strategy.name`` overridden to another method, drop the file's own method
    parameters (those of its method, which the other one may not take), keeping ``preset`` and
    whatever the command line sets. Says on stderr what was set aside."""
    section = loaded.get("strategy")
    new_name = OmegaConf.select(given, "strategy.name")
    if not isinstance(section, DictConfig) or new_name is None or new_name == section.get("name"):
        return loaded
    asked = set(given.strategy.keys())
    aside = [k for k in section if k not in ("name", "preset") and k not in asked]
    note = (f"note: strategy.name={new_name} replaces '{section.get('name')}' with the same recipe; its parameters "
            f"{', '.join(aside)} are set aside ({new_name} takes its own defaults; strategy.KEY=VALUE sets one)")
    if aside and note not in _NOTED:  # once per process: a sweep loads each config once per seed
        _NOTED.add(note)
        print(note, file=sys.stderr)
    loaded = loaded.copy()
    loaded.strategy = {k: v for k, v in section.items() if k not in aside}
    return loaded


def validate(cfg: DictConfig) -> None:
    """Range and name checks the schema's types cannot express."""
    if not 0 <= cfg.seed < 2**32:  # numpy's and scikit-learn's seeds
        raise ConfigError(f"seed must be in 0..{2**32 - 1}, got {cfg.seed}")
    _positive(cfg, "stream.n_sessions", "train.batch_size", "eval.batch_size")
    _positive(cfg, "train.accumulation_steps")
    _non_negative(cfg, "train.epochs", "train.weight_decay", "train.warmup_steps", "train.iterations", "train.workers",
                  "stream.train_per_class", "stream.test_per_class", "stream.base_classes", "stream.ways",
                  "stream.shots", "threads")
    if cfg.train.batch_size % cfg.train.accumulation_steps:
        raise ConfigError(f"train.batch_size ({cfg.train.batch_size}) must be divisible by train.accumulation_steps "
                          f"({cfg.train.accumulation_steps})")
    if not cfg.train.lr > 0:
        raise ConfigError(f"train.lr must be > 0, got {cfg.train.lr}")
    if not 0 <= cfg.train.label_smoothing < 1:
        raise ConfigError(f"train.label_smoothing must be in [0, 1), got {cfg.train.label_smoothing}")
    if not 0 < cfg.control.heldout_fraction < 1:
        raise ConfigError(f"control.heldout_fraction must be in (0, 1), got {cfg.control.heldout_fraction}")
    _choice(cfg, "model.trainable", TRAINABLE)
    _choice(cfg, "train.optimizer", OPTIMIZERS)
    _choice(cfg, "train.scheduler", SCHEDULERS)
    _choice(cfg, "train.label_space", LABEL_SPACES)
    _choice(cfg, "train.precision", PRECISIONS)
    _choice(cfg, "eval.label_space", EVAL_LABEL_SPACES)
    _choice(cfg, "eval.metric", EVAL_METRICS)
    _choice(cfg, "train.loss", LOSSES)
    _choice(cfg, "stream.session_by", SESSION_BY)
    _choice(cfg, "stream.on_corrupt", ON_CORRUPT)
    if not 0 <= cfg.train.warmup_fraction < 1:
        raise ConfigError(f"train.warmup_fraction must be in [0, 1), got {cfg.train.warmup_fraction}")
    _choice(cfg, "model.train_templates", TEMPLATE_USE)
    _choice(cfg, "stream.sampling", SAMPLINGS)
    _choice(cfg, "stream.test_by", TEST_BY)
    _choice(cfg, "stream.holdout", HOLDOUTS)
    for key in ("stream.train_splits", "control.train_splits"):
        for i, split in enumerate(_get(cfg, key)):
            check_choice(f"{key}[{i}]", split, KARPATHY_TRAIN_SPLITS)
    _choice(cfg, "diagnostics.probe", PROBES)
    _non_negative(cfg, "diagnostics.max_items", "diagnostics.view_items")
    _positive(cfg, "diagnostics.neighbours")
    if cfg.diagnostics.enabled and cfg.diagnostics.probe == "control" and cfg.control.name is None:
        raise ConfigError("diagnostics.probe=control needs control data, but control.name is null; "
                          "set diagnostics.probe=stream, or diagnostics.enabled=false")
    if not 0 < cfg.stream.test_fraction < 1:
        raise ConfigError(f"stream.test_fraction must be in (0, 1), got {cfg.stream.test_fraction}")
    from continual.run import validation

    validation.check(cfg.stream)
    for name, lr in cfg.train.session_lr.items():
        if not lr > 0:
            raise ConfigError(f"train.session_lr.{name} must be > 0, got {lr}")
    if any(n <= 0 for n in cfg.stream.slices):
        raise ConfigError(f"stream.slices must be positive numbers of slices per source, got {list(cfg.stream.slices)}")
    if not cfg.model.templates or any("{}" not in t for t in cfg.model.templates):
        raise ConfigError("model.templates: give at least one template, each containing '{}' for the class name")
    if "name" not in cfg.strategy:
        raise ConfigError("strategy.name is missing; choose one of: " + ", ".join(STRATEGIES.names()))
    STRATEGIES.check(str(cfg.strategy.name), "strategy.name")
    STREAMS.check(cfg.stream.name, "stream.name")
    if cfg.control.name is not None:
        CONTROLS.check(cfg.control.name, "control.name")


def strategy_params(cfg: DictConfig, params_cls: type | None) -> Any:
    """Validate ``strategy.*`` (minus ``name``) against the strategy's ``Params`` dataclass.

    ``strategy.preset: NAME`` takes the method's preset ``Params.PRESETS[NAME]`` (e.g. ``mtil``:
    ZSCL's MTIL script for that method) as the defaults under the keys given beside it; a method
    without parameters has nothing to preset.
    """
    given = {k: v for k, v in OmegaConf.to_container(cfg.strategy, resolve=True).items() if k != "name"}
    preset = given.pop("preset", None)
    if params_cls is None:
        if given:
            raise ConfigError(f"strategy.{next(iter(given))}: strategy '{cfg.strategy.name}' takes no parameters")
        return None
    presets = getattr(params_cls, "PRESETS", {})
    if preset is not None and preset not in presets:
        raise ConfigError(f"strategy.preset: '{preset}' is not a preset of strategy '{cfg.strategy.name}'; "
                          + (f"choose one of: {', '.join(presets)}" if presets else "it has none")
                          + " (or strategy.preset=null)")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(params_cls), presets.get(preset, {}), given)
    except OmegaConfBaseException as exc:
        raise _explain(exc, prefix="strategy.", allowed=[f.name for f in dataclasses.fields(params_cls)]) from None
    return OmegaConf.to_object(merged)


def resolve_strategy(cfg: DictConfig) -> None:
    """Write the strategy's validated parameters (defaults and preset included) into
    ``cfg.strategy``, so that every run logs, groups and fingerprints by the values it uses:
    a run with ``lam`` unset and one with ``lam=1.0`` are the same run."""
    params = strategy_params(cfg, params_class(str(cfg.strategy.name)))
    if params is not None:
        resolved = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
        with open_dict(cfg):
            cfg.strategy = {"name": cfg.strategy.name, **({"preset": cfg.strategy.preset}
                                                           if cfg.strategy.get("preset") is not None else {}),
                            **resolved}


def params_class(strategy: str) -> type | None:
    """The strategy's ``Params`` dataclass (None for a method without parameters)."""
    return getattr(STRATEGIES.declared(strategy, "strategy.name"), "Params", None)  # no torch: its declaration


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


# ---------------------------------------------------------------------------------------------
def _explain(exc: OmegaConfBaseException, prefix: str = "", allowed: List[str] | None = None) -> ConfigError:
    """Turn omegaconf's multi-line error into one line naming the key and the allowed values."""
    key = prefix + (getattr(exc, "full_key", None) or "")
    if isinstance(exc, ConfigKeyError):
        parent, _, leaf = key.rpartition(".")
        options = allowed if allowed is not None else _keys_of(parent.removeprefix(prefix) if prefix else parent)
        close = difflib.get_close_matches(leaf, options, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        where = f" in '{parent}'" if parent else ""
        return ConfigError(f"unknown config key '{key}'{hint}; allowed{where}: {', '.join(options) or '(none)'}")
    if isinstance(exc, ValidationError):
        expected = getattr(exc, "ref_type", None) or getattr(exc, "object_type", None)
        msg = first_line(exc)
        m = re.search(r"Value '(.*?)' (?:of type '.*?' )?could not be converted to (\w+)", msg)
        if m:
            return ConfigError(f"{key}: expected {m.group(2)}, got '{m.group(1)}'")
        return ConfigError(f"{key}: {msg}" + (f" (expected {expected})" if expected else ""))
    if isinstance(exc, InterpolationResolutionError):
        return ConfigError(f"{key or 'config'}: {first_line(exc)}; fix the ${{...}} reference "
                           "(a dotted key from the top of the config, e.g. ${model.name})")
    return ConfigError(f"{key or 'config'}: {first_line(exc)}")


def _keys_of(dotted: str) -> List[str]:
    node: Any = ExperimentConfig
    for part in filter(None, dotted.split(".")):
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return []
        node = fields[part].default_factory() if fields[part].default_factory is not dataclasses.MISSING else None
        node = type(node) if dataclasses.is_dataclass(node) else None
        if node is None:
            return []
    return [f.name for f in dataclasses.fields(node)]



def _get(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key)


def _positive(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        if not _get(cfg, key) > 0:
            raise ConfigError(f"{key} must be > 0, got {_get(cfg, key)}")


def _non_negative(cfg: DictConfig, *keys: str) -> None:
    for key in keys:
        if _get(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {_get(cfg, key)}")


def check_choice(key: str, value: Any, options: Sequence[str]) -> None:
    """Raise a one-line ConfigError unless ``value`` is one of ``options`` (with a suggestion).

    Strategies use it for their own parameters (``key`` like ``strategy.teacher``)."""
    if value not in options:
        close = difflib.get_close_matches(str(value), list(options), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"{key}: '{value}' is not allowed{hint}; choose one of: {', '.join(options)}")


def _choice(cfg: DictConfig, key: str, options: tuple) -> None:
    check_choice(key, _get(cfg, key), options)
