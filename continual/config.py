"""Structured, validated experiment configuration (omegaconf structured configs).

A YAML file is merged onto the schema below, then dotted command-line overrides on top. Every
problem (unknown key, wrong type, value out of range, unknown strategy/stream name) is raised as
a one-line :class:`ConfigError` naming the key and the allowed values, before anything starts.
Strategy hyper-parameters live beside ``strategy.name`` and are validated against the strategy
class's own ``Params`` dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, OmegaConfBaseException, ValidationError

from continual import shipped
from continual.errors import ConfigError, first_line
from continual.registry import CONTROLS, STRATEGIES, STREAMS

TRAINABLE = ("projections", "image", "text", "all", "none")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULERS = ("cosine", "constant")
LABEL_SPACES = ("seen", "current", "all")
EVAL_LABEL_SPACES = ("all", "seen", "session")
LOSSES = ("auto", "ce", "contrastive")
EVAL_METRICS = ("auto", "accuracy", "retrieval")
SESSION_BY = ("group", "source", "slices")
ON_CORRUPT = ("error", "skip")
PRECISIONS = ("fp32", "bf16")
TEMPLATE_USE = ("all", "first")
SAMPLINGS = ("pair", "image")
TEST_BY = ("session", "source")
HOLDOUTS = ("per_class", "random")
KARPATHY_TRAIN_SPLITS = ("train", "restval", "val")
PROBES = ("auto", "control", "stream")


@dataclass
class ModelConfig:
    # An open_clip model name (built-in, e.g. ViT-B-16, or one we register: lit-effnet-minilm,
    # tiny-vit).
    name: str = "lit-effnet-minilm"
    # An open_clip pretrained tag (e.g. "openai"), a local checkpoint path, "base:NAME" for a
    # base built by `continual pretrain` (built on demand), or null / "" for random init.
    pretrained: Optional[str] = "base:lit"
    # Which parameters train: projections | image | text | all | none.
    trainable: str = "projections"
    train_logit_scale: bool = False
    # Prompt templates for class names; "{}" is replaced by the class name.
    templates: List[str] = field(default_factory=lambda: ["a photo of a {}."])
    # Templates the training loss uses: all (the mean of every template's feature) | first (each
    # class's first template, as ZSCL trains; evaluation always uses all).
    train_templates: str = "all"


@dataclass
class StreamConfig:
    name: str = "fashion-mnist"
    n_sessions: int = 5
    # Examples per class kept for training / testing (0 = all); seeded sample.
    train_per_class: int = 500
    test_per_class: int = 200
    # Explicit class order (labels); empty = shuffled with the run's seed.
    class_order: List[int] = field(default_factory=list)
    # Folder holding the data; null = the default locations (see the stream's docstring).
    root: Optional[str] = None
    # Let torchvision download a dataset that is not under root (needs internet).
    download: bool = False
    # Share of each class's (or each session's pairs') images held out for testing, for data
    # that comes without a test split (image folders, manifests, caption pairs).
    test_fraction: float = 0.2
    # Unreadable images in file-based data: error (stop before training, naming the file) |
    # skip (leave them out, count them in the plan and in MLflow).
    on_corrupt: str = "error"
    # -- few-shot class-incremental (FSCIL): a base session, then N-way K-shot sessions.
    # Classes of session 1 (0 = all sessions the same size).
    base_classes: int = 0
    # New classes per later session (0 = the remaining classes split evenly).
    ways: int = 0
    # Training examples per class in later sessions (0 = train_per_class).
    shots: int = 0
    # Folder of the official split lists session_1.txt .. session_T.txt (FSCIL papers'
    # index_list); they fix the classes and training images of every session.
    split_dir: Optional[str] = None
    # -- multi-domain (MTIL): the datasets, one session each, in this order.
    datasets: List[str] = field(default_factory=list)
    # -- image-text pairs: sources ("emoji", "tux", or manifest files: .csv, .jsonl, or a
    # Karpathy-split .json), and how they are cut into sessions: by group (category), by
    # source, or into equal consecutive slices (slices[k] per source; default n_sessions).
    sources: List[str] = field(default_factory=list)
    session_by: str = "group"
    slices: List[int] = field(default_factory=list)
    # Karpathy splits trained on (train, restval, val); "test" is always the test data.
    train_splits: List[str] = field(default_factory=lambda: ["train", "restval"])
    # One training example per pair | per image, with one of its captions drawn at random at
    # every visit (Mod-X's loaders).
    sampling: str = "pair"
    # Test pairs of a session: its own (the test images of its group or slice) | the whole test
    # split of its source, whatever slice trained (Mod-X: Flickr30K 1K after every phase).
    test_by: str = "session"
    # -- training images: random-resized crop (scale 0.9-1.0, CLIP's and ZSCL's training
    # transform) at every visit; not with cached frozen-trunk features.
    augment: bool = False
    # -- datasets without a test split (MTIL: Caltech101, EuroSAT, SUN397): per_class (a seeded
    # test_fraction of each class) | random (one random split of all images, as ZSCL:
    # random_split(1 - test_fraction), seed 42); split_seed null = the run's seed.
    holdout: str = "per_class"
    split_seed: Optional[int] = None


@dataclass
class ControlConfig:
    # Data never trained on, evaluated after every session; null = none.
    name: Optional[str] = "heldout-captions"
    sources: List[str] = field(default_factory=lambda: ["emoji", "tux"])
    # Must match the base's held-out split so that the control data is truly unseen.
    heldout_fraction: float = 0.15
    split_seed: int = 0
    # Manifest control sets (manifest-test): the Karpathy splits on the training side.
    train_splits: List[str] = field(default_factory=lambda: ["train", "restval"])


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    # Fused optimizer kernels (AdamW, SGD) where torch has them for the device (CPU, CUDA):
    # the same update in one pass over all parameters; false: torch's default loop.
    fused: bool = True
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_steps: int = 0
    # Warm-up over this fraction of each session's steps (Mod-X: 0.2); 0 = warmup_steps.
    warmup_fraction: float = 0.0
    # Drop each epoch's last partial batch (Mod-X's loaders).
    drop_last: bool = False
    label_smoothing: float = 0.0
    # Classes the training loss ranges over: seen so far | current session | all of the stream.
    label_space: str = "seen"
    # Training iterations per session (0 = train.epochs full passes instead).
    iterations: int = 0
    # Learning rate for particular sessions, by session name (e.g. MTIL's {aircraft: 5e-5}).
    session_lr: Dict[str, float] = field(default_factory=dict)
    # Task loss: auto (cross-entropy on classification streams, CLIP's contrastive loss on
    # image-text streams) | ce | contrastive (symmetric InfoNCE over the batch's pairs).
    loss: str = "auto"
    # -- scale (see continual/distributed.py). batch_size is the batch of one optimizer step over
    # all processes and micro-batches: each process takes batch_size / (processes x
    # accumulation_steps) examples per forward pass.
    # Forward pass and loss terms in fp32 | bf16 (autocast; weights, gradients, optimizer stay fp32).
    precision: str = "fp32"
    # Micro-batches per optimizer step. Per-example losses are exact; the batch-direction terms
    # (contrastive, Mod-X, VR-LwF's vocabulary-to-image) see one micro-batch of every process.
    accumulation_steps: int = 1
    # Recompute the towers' activations in the backward pass (open_clip's set_grad_checkpointing):
    # less activation memory for about one more forward pass of compute.
    grad_checkpointing: bool = False
    # DataLoader worker processes for the training data (0 = load in the training process).
    workers: int = 0


@dataclass
class EvalConfig:
    batch_size: int = 256
    # Classes a test image is classified among: all of the stream's classes (so that future
    # sessions' columns are meaningful zero-shot) | seen so far plus the evaluated session's |
    # the evaluated session's own (task-incremental, as in MTIL).
    label_space: str = "all"
    # What the session matrices hold: auto (accuracy on classification streams, retrieval
    # R@1 per direction on image-text streams) | accuracy | retrieval.
    metric: str = "auto"


@dataclass
class DiagnosticsConfig:
    # Spatial-disorder diagnostics after every session (continual/diagnostics.py): rotation of
    # each modality, inter-modal deviation, modality gap, neighbour ranks; false = off.
    enabled: bool = True
    # The probe data: control (the control pairs, never trained on) | stream (every session's
    # test data: pairs, or images with their class's first prompt) | auto (control when there
    # is control data, else stream).
    probe: str = "auto"
    # At most this many probe images (a seeded sample; 0 = all): bounds the n x n matrices.
    max_items: int = 1000
    # Neighbours per item compared by diag/*/knn_overlap.
    neighbours: int = 10
    # Figures as MLflow artifacts after every session (angle distributions, 2-D view).
    figures: bool = True
    # Probe pairs drawn in the 2-D view.
    view_items: int = 6


@dataclass
class TrackingConfig:
    # MLflow tracking URI; null = sqlite store in output_dir (sqlite:///OUTPUT_DIR/mlflow.db).
    uri: Optional[str] = None
    experiment: str = "continual"
    run_name: Optional[str] = None


@dataclass
class ExperimentConfig:
    seed: int = 0
    device: str = "cpu"
    # Where the MLflow store, artifacts and checkpoints go by default.
    output_dir: str = "outputs"
    # torch intra-op threads; 0 = torch's default.
    threads: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    strategy: Dict[str, Any] = field(default_factory=lambda: {"name": "finetune"})
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def load_config(path: str | Path | None, overrides: List[str] = ()) -> DictConfig:
    """Schema <- YAML file <- dotted overrides, validated. Raises a one-line ConfigError."""
    schema = OmegaConf.structured(ExperimentConfig)
    layers = [schema]
    if path is not None:
        path = shipped.resolve(path)
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml errors are multi-line: keep the first line
            raise ConfigError(f"{path}: not valid YAML: {first_line(exc)}") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: the top level is a list; a config is a mapping of sections "
                              "(model:, stream:, train:, ...), as in configs/default.yaml")
        if not loaded:  # a run of the schema's defaults is never what an empty file meant
            raise ConfigError(f"{path} is empty (it sets nothing); give a config such as configs/default.yaml")
        layers.append(loaded)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value (e.g. train.lr=1e-4)")
    try:
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.merge(*layers)
        OmegaConf.to_container(cfg, resolve=True)  # every ${...} interpolation resolves
    except OmegaConfBaseException as exc:
        raise _explain(exc) from None
    validate(cfg)
    return cfg


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
