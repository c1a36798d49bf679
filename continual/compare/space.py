"""Search spaces for ``continual tune``: specs, the default space of a method, validation.

A spec is ``log:LOW:HIGH`` (a float, log-uniform), ``float:LOW:HIGH``, ``int:LOW:HIGH`` (both
ends included) or ``choice:A,B,...``. A method's space is the base space every method shares
(:data:`BASE`: the training recipe's learning rate and epochs) plus its ``Params.TUNABLE`` (keys
under ``strategy.``), then the ``--space KEY=SPEC`` given (each replaces or extends). Every
range is checked before any trial trains: both ends (every choice) must pass the config's and the
strategy's own validation, as a run would check them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from continual.errors import ConfigError

KINDS = ("log", "float", "int", "choice")


@dataclass(frozen=True)
class Dim:
    key: str  # dotted config key, e.g. strategy.lam or train.lr
    kind: str  # log | float | int | choice
    low: Optional[float] = None
    high: Optional[float] = None
    choices: tuple = ()
    source: str = ""  # where the range comes from (default space), or "--space"

    def spec(self) -> str:
        if self.kind == "choice":
            return "choice:" + ",".join(str(c) for c in self.choices)
        fmt = (lambda v: str(int(v))) if self.kind == "int" else (lambda v: f"{v:g}")
        return f"{self.kind}:{fmt(self.low)}:{fmt(self.high)}"

    def ends(self) -> list[Any]:
        """The values validated before the study starts: both ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "log")


def _number(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def parse(key: str, spec: str, source: str = "--space") -> Dim:
    """``KIND:LOW:HIGH`` or ``choice:A,B``; a one-line ConfigError naming the key otherwise."""
    where = f"--space {key}={spec}"
    kind, _, rest = spec.partition(":")
    if kind not in KINDS or not rest:
        raise ConfigError(f"{where}: not a search-space spec; use log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or choice:A,B")
    if kind == "choice":
        choices = tuple(dict.fromkeys(_number(c.strip()) for c in rest.split(",") if c.strip()))
        if len(choices) < 2:
            raise ConfigError(f"{where}: a choice needs at least two distinct values, e.g. choice:a,b")
        return Dim(key, kind, choices=choices, source=source)
    parts = rest.split(":")
    try:
        low, high = (float(p) for p in parts) if len(parts) == 2 else (None, None)
    except ValueError:
        low = high = None
    if low is None or not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"{where}: the range must be two numbers, {kind}:LOW:HIGH")
    if not low < high:
        raise ConfigError(f"{where}: LOW must be below HIGH, got {parts[0]} and {parts[1]}")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{where}: a log range must be positive, got {parts[0]}")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise ConfigError(f"{where}: an int range needs whole numbers, got {parts[0]} and {parts[1]}")
    return Dim(key, kind, low, high, source=source)


def base_space(cfg: DictConfig) -> dict[str, Dim]:
    """The space every method shares, around the recipe's own values (our choice: one decade
    either side of its learning rate; half to twice its epochs)."""
    out = {}
    lr = float(cfg.train.lr)
    out["train.lr"] = Dim("train.lr", "log", lr / 10, lr * 10, source="our choice: one decade either side of train.lr")
    if not cfg.train.iterations:  # sessions measured in epochs
        e = int(cfg.train.epochs)
        if 2 * e > max(1, e // 2):
            out["train.epochs"] = Dim("train.epochs", "int", max(1, e // 2), 2 * e,
                                      source="our choice: half to twice train.epochs")
    return out


def default_space(cfg: DictConfig, strategy_cls: type) -> dict[str, Dim]:
    space = base_space(cfg)
    params = getattr(strategy_cls, "Params", None)
    for name, spec in (getattr(params, "TUNABLE", None) or {}).items():
        key = f"strategy.{name}"
        space[key] = parse(key, spec, source=f"{params.__name__}.TUNABLE")
    return space


def resolve(cfg: DictConfig, strategy_cls: type, given: Sequence[str]) -> dict[str, Dim]:
    """The default space with each ``KEY=SPEC`` of ``given`` replacing or extending it."""
    space = default_space(cfg, strategy_cls)
    for item in given:
        key, sep, spec = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--space '{item}' is not KEY=SPEC (e.g. strategy.lam=log:0.1:10)")
        key = key.strip()
        space[key] = parse(key, spec.strip())
    return space


def check(space: dict[str, Dim], config: str, overrides: Sequence[str], strategy_cls: type) -> None:
    """Every end of every range passes the config's validation and the strategy's (its Params'
    own checks), as a run with that value would: an unknown key or a value the method refuses
    fails here, naming the --space."""
    from continual.config.load import load_config, strategy_params

    for dim in space.values():
        for value in dim.ends():
            try:
                cfg = load_config(config, [*overrides, f"{dim.key}={value}"])
                strategy_params(cfg, strategy_cls.Params)
            except ConfigError as exc:
                raise ConfigError(f"--space {dim.key}={dim.spec()}: {value} is refused: {exc}") from None


def overrides_of(values: dict[str, Any]) -> list[str]:
    """A trial's values as config overrides."""
    return [f"{k}={v!r}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()]
