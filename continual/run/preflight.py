"""Every check a run makes before it builds a model or trains, in one place.

``continual run`` calls :func:`preflight` first, ``continual run --dry-run`` calls the same
function (so a dry run finds what the real run would), and a sweep can call it for every
config before the first one trains. It builds no model and trains nothing: it reads the
config, the registries, the stream's plan (indexes of the data, nominal counts where the data
is absent), the model's open_clip config, and it asks the tracking store and the output folder
whether they can be used. Each problem is a one-line :class:`~continual.errors.UserError`
naming the key and the fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from omegaconf import DictConfig

from continual.run import validation
from continual.config.load import strategy_params
from continual.errors import ConfigError, UserError
from continual.registry import STRATEGIES, STREAMS
from continual.strategy import StrategyClass, member

# MLflow's own limit on experiment names (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH;
# tests/test_bad_inputs.py checks that they agree), kept here so that a dry run need not import MLflow.
MAX_EXPERIMENT_NAME_LENGTH = 500


@dataclass
class Checked:
    """What the checks found and a run goes on with."""

    strategy_cls: StrategyClass  # its declaration (continual.strategy.Declared), the class loaded when called
    params: Any  # the strategy's validated Params (None for a method without any)
    stream_fn: Callable  # the registered stream builder
    stream: Any  # the stream's plan: sessions, classes, counts (nominal where its data is absent)
    uri: str  # the tracking URI the run logs to
    # Why a run on this machine would stop although the config is valid (absent data, a device
    # this machine lacks); empty unless preflight(strict=False).
    not_here: list[str] = field(default_factory=list)


def preflight(cfg: DictConfig, strict: bool = True) -> Checked:
    """Check ``cfg`` as a run would before building anything; raise a one-line UserError at the
    first problem. ``strict=False`` (a dry run, which may plan a GPU run on a laptop) accepts
    what only this machine lacks, absent data and an unavailable device, and lists it in
    ``Checked.not_here`` instead (the plan then shows nominal counts)."""
    not_here: list[str] = []

    def on_this_machine(problem: Exception | None) -> None:
        if problem is not None:
            if strict:
                raise problem
            not_here.append(str(problem))

    # The strategy's declaration: its class (avalanche) is imported only when a run builds it.
    strategy_cls = STRATEGIES.declared(cfg.strategy.name, "strategy.name")
    params = strategy_params(cfg, strategy_cls.Params)
    on_this_machine(device_unavailable(cfg.device))
    check_training_length(cfg, strategy_cls)
    check_experiment_name(cfg.tracking.experiment)
    stream_fn = STREAMS.get(cfg.stream.name, "stream.name")
    if validation.active(cfg.stream):  # validation split, sealed test data, session window
        stream_fn = validation.wrap(stream_fn, cfg.stream)
    stream = stream_fn(cfg.stream, cfg.seed)
    check_fit(cfg, strategy_cls, stream)
    check_model_source(cfg.model.name, cfg.model.pretrained or "")
    member(strategy_cls, "check_model")(cfg.model.name, params)  # the method's fit to the model's towers
    missing = stream.data_missing or member(strategy_cls, "data_missing")(params)
    on_this_machine(UserError(missing) if missing else None)  # the stream's data, or the method's own
    from continual.tracking.store import check_tracking_uri, writable_problem

    uri = tracking_uri(cfg)
    check_tracking_uri(uri)
    problem = writable_problem(cfg.output_dir)
    if problem is not None:
        raise UserError(f"output_dir {cfg.output_dir}: {problem}; checkpoints are written there: "
                        "set output_dir to a writable folder with free space")
    return Checked(strategy_cls, params, stream_fn, stream, uri, not_here)


def tracking_uri(cfg: DictConfig) -> str:
    from continual.tracking.store import default_tracking_uri

    return cfg.tracking.uri or default_tracking_uri(cfg.output_dir)


def device_unavailable(device: str) -> ConfigError | None:
    """Why this machine lacks ``device`` (None if it has it: cpu, cuda[:N], under torchrun each
    process's cuda:LOCAL_RANK, or mps); raises at once for a string that names no device."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device: '{device}' is not a device; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cpu":
        return None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            return ConfigError(f"device={device}, but no CUDA GPU is available here (torch {torch.__version__}, "
                               f"built with {build}); use device=cpu, or run where a GPU is visible")
        count = torch.cuda.device_count()
        torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        index = int(os.environ.get("LOCAL_RANK", 0)) if torchrun else (parsed.index or 0)
        if index >= count:
            return ConfigError(f"device={device}: this machine has {count} GPU(s), cuda:0..cuda:{count - 1}"
                               + (f" (this is torchrun's local rank {index})" if torchrun else "")
                               + "; choose one of them")
        return None
    if parsed.type == "mps":
        if not torch.backends.mps.is_available():
            return ConfigError(f"device={device}, but MPS is not available here; use device=cpu")
        return None
    raise ConfigError(f"device={device}: runs use cpu, cuda[:N] or mps")


def check_model_source(name: str, pretrained: str) -> None:
    """The model name, and the weights' file or base name (their contents are read when the model
    is built)."""
    from continual.clip.configs import check_source  # open_clip's configs, read without importing it
    from continual.run.pretrain import check_base

    check_source(name, pretrained)
    if pretrained.startswith("base:"):
        check_base(pretrained.removeprefix("base:"))


def check_training_length(cfg: DictConfig, strategy_cls: StrategyClass) -> None:
    """A session must train for something (unless the method does not train at all)."""
    if cfg.train.epochs == 0 and cfg.train.iterations == 0 and member(strategy_cls, "trains"):
        raise ConfigError("train.epochs=0 with train.iterations=0 trains nothing; set train.epochs >= 1 or "
                          "train.iterations >= 1 (strategy.name=zeroshot evaluates without training)")


def check_experiment_name(name: str) -> None:
    if not name or not name.strip():
        raise ConfigError("tracking.experiment is empty; give the MLflow experiment a name")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ConfigError(f"tracking.experiment is {len(name)} characters long; MLflow allows at most "
                          f"{MAX_EXPERIMENT_NAME_LENGTH}: choose a shorter name")


def task_loss(cfg: DictConfig, stream: Any) -> str:
    """train.loss, with auto resolved by the stream: contrastive on image-text pairs, else CE."""
    if cfg.train.loss != "auto":
        return cfg.train.loss
    return "contrastive" if stream.kind == "pairs" else "ce"


def check_fit(cfg: DictConfig, strategy_cls: StrategyClass, stream: Any) -> None:
    """One-line errors, before anything is built, for a method, metric or option that does not
    fit the stream."""
    kinds = member(strategy_cls, "stream_kinds")
    what = {"classification": "classification", "pairs": "image-text"}
    if stream.kind not in kinds:
        raise ConfigError(f"strategy '{cfg.strategy.name}' works on {' and '.join(what[k] for k in kinds)} streams, "
                          f"but stream '{cfg.stream.name}' is an {what[stream.kind]} stream; choose another strategy or stream")
    metric = cfg.eval.metric
    if metric == "retrieval" and stream.kind != "pairs":
        raise ConfigError(f"eval.metric=retrieval needs an image-text stream, but '{cfg.stream.name}' is a "
                          "classification stream (its test data has labels, not captions); use eval.metric=accuracy or auto")
    if metric == "accuracy" and stream.kind == "pairs":
        raise ConfigError(f"eval.metric=accuracy needs a classification stream, but '{cfg.stream.name}' holds image-text "
                          "pairs; use eval.metric=retrieval or auto")
    if cfg.train.loss == "ce" and stream.kind == "pairs":
        raise ConfigError(f"train.loss=ce needs class labels, but '{cfg.stream.name}' holds image-text pairs; "
                          "use train.loss=contrastive or auto")
    pairs_per_batch = cfg.train.batch_size // cfg.train.accumulation_steps
    if task_loss(cfg, stream) == "contrastive" and pairs_per_batch < 2 and member(strategy_cls, "trains"):
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} (accumulation_steps={cfg.train.accumulation_steps}) "
                          "gives batches of one pair to the contrastive loss, which has nothing to contrast it with "
                          "(its loss is 0: nothing trains); set train.batch_size >= 2 per accumulation step")
    names = [s.name for s in stream.sessions if s.name]
    for name in cfg.train.session_lr:
        if name not in names:
            raise ConfigError(f"train.session_lr.{name}: no session of that name; the sessions are: "
                              + (", ".join(names) or "(unnamed)"))
