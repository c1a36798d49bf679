"""The experiment config's schema: every section and key with its type, default and meaning.

omegaconf structured configs: a YAML file and dotted overrides are merged onto these dataclasses
(``continual.config.load``), so a misspelt key or a wrong type fails before anything starts.
Strategy hyper-parameters are not here: they live beside ``strategy.name`` and are checked
against the strategy's own ``Params`` dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

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
    # -- validation data (continual.run.validation): a share of each session's training data held
    # out, per class (image-text streams: per image), seeded by the run's seed; 0 = none. A run
    # with val_fraction > 0 trains on the rest; what it scores is evaluate_on's.
    val_fraction: float = 0.0
    # What the session matrices score: test | validation (the validation split in place of the
    # test data, which is then sealed: never encoded or scored; `continual tune`'s trials).
    evaluate_on: str = "test"
    # The sessions run, 1-based (last_session 0 = the last): first-k tuning trials run 1..k,
    # a holdout-k evaluation k+1..T.
    first_session: int = 1
    last_session: int = 0


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
