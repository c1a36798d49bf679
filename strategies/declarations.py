"""Each strategy's declaration: its ``Params`` and the members read before a run trains.

Preflight, the plan (``continual run --dry-run``) and config validation read these; they import
neither torch nor avalanche, so a dry run needs neither (see :mod:`continual.strategy`). Each
strategy class (``strategies/<name>.py``) inherits its declaration here; the registry
(``strategies/__init__.py``) names both. A declaration's docstring is the plan's one-line
description of the method (the class's own first line, which tests/test_startup.py checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Optional

from continual.clip.configs import model_config
from continual.config.load import check_choice
from continual.errors import ConfigError, UserError
from continual.registry import REFERENCES
from continual.strategy import StrategyDeclaration

if TYPE_CHECKING:
    from continual.stream import ReferenceSource

TEACHERS = ("previous", "initial")  # the model distilled from: the last session's, or the one before training


class ZeroShot(StrategyDeclaration):
    """Zero-shot classification with class-name prompts; ``train`` leaves the model untouched."""

    backbone_trainable = "none"
    trains = False  # train.epochs and batch sizes do not matter (continual.run.preflight)


class FineTune(StrategyDeclaration):
    """Naive fine-tuning: the task loss alone, session after session."""


class Joint(StrategyDeclaration):
    """Joint training on the union of the sessions so far (cumulative; the upper bound)."""


# -- LwF ------------------------------------------------------------------------------------------
@dataclass
class LwFParams:
    alpha: float = 1.0  # weight of the distillation term
    temperature: float = 2.0
    classes: str = "current"  # current | seen_before
    text_features: str = "student"  # student (LwF's outputs) | teacher (ZSCL's LwF code)
    symmetric: bool = False  # also distil class-to-image over the batch (ZSCL's LwF code: true)

    # `continual tune`'s default search space (continual.compare.space specs). alpha: our choice,
    # one decade either side of the default 1 (Li & Hoiem's lambda_o = 1; ZSCL's MTIL script: 1).
    TUNABLE: ClassVar[dict[str, str]] = {"alpha": "log:0.1:10"}

    # ZSCL's mtil/scripts/lwf.sh: the student's image features against the teacher's class
    # texts of the current task, both directions.
    PRESETS: ClassVar[dict] = {"mtil": dict(alpha=1.0, temperature=2.0, classes="current", text_features="teacher",
                                            symmetric=True)}

    def __post_init__(self) -> None:
        check_choice("strategy.classes", self.classes, ("current", "seen_before"))
        check_choice("strategy.text_features", self.text_features, ("student", "teacher"))
        if self.alpha < 0 or self.temperature <= 0:
            raise ConfigError(f"strategy.alpha must be >= 0 and strategy.temperature > 0, got {self.alpha}, {self.temperature}")


class LwF(StrategyDeclaration):
    """Learning without Forgetting: distil the previous model's logits over the current classes (T = 2)."""

    Params = LwFParams
    stream_kinds = ("classification",)  # distils logits over classes


# -- WiSE-FT --------------------------------------------------------------------------------------
@dataclass
class WiSEFTParams:
    alpha: float = 0.5  # weight of the session's fine-tuned weights
    anchor: str = "initial"  # initial (pre-trained) | previous (start of the session, ZSCL's baseline)

    # `continual tune`'s default search space. alpha: the whole interpolation range, as the
    # WiSE-FT paper's mixing-coefficient sweep (0 to 1); anchor: both of the options.
    TUNABLE: ClassVar[dict[str, str]] = {"alpha": "float:0:1", "anchor": "choice:initial,previous"}

    # ZSCL's mtil/scripts/WiSE_finetune.sh (--wise_merge --wise_ft_model n --wise_ft_alpha 0.8).
    PRESETS: ClassVar[dict] = {"mtil": dict(alpha=0.8, anchor="previous")}

    def __post_init__(self) -> None:
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"strategy.alpha must be in [0, 1], got {self.alpha}")
        check_choice("strategy.anchor", self.anchor, ("initial", "previous"))


class WiSEFT(StrategyDeclaration):
    """WiSE-FT: interpolate weights with the pre-trained model after each session."""

    Params = WiSEFTParams


# -- ZSCL -----------------------------------------------------------------------------------------
def reference_files() -> ReferenceSource:
    """The reference data read from files (strategy.ref_*), provided by a stream package."""
    return REFERENCES.get("files", "strategy.ref_images")


@dataclass
class ZSCLParams:
    weight: float = 1.0  # of L_ZSCL (each direction); MTIL 1, class-incremental configs 5
    temperature: float = 2.0
    ref_batch_size: int = 64  # reference images per step (the authors': the training batch)
    ref_texts: str = "all"  # all (a fixed sentence set, as the code) | batch (the images' captions)
    text_features: str = "teacher"  # teacher (official code) | student
    we: bool = True  # weight ensembling
    we_interval: int = 100  # optimizer steps between WE snapshots (--avg_freq)
    l2: float = 1.0  # weight of the L2 pull to the session-start weights (--l2)
    # Reference data (the "files" reference set); null = the control set's complement (offline pairs).
    ref_images: Optional[str] = None  # an image folder, a manifest, or torchvision:NAME (ref_root)
    ref_sentences: Optional[str] = None  # a text file (a sentence per line) or a CSV/TSV column
    ref_column: str = "caption"  # that column: a header name, or a 0-based index (no header)
    ref_root: Optional[str] = None  # where torchvision reads ref_images=torchvision:NAME

    # `continual tune`'s default search space. weight, l2: our choice, one decade either side of
    # the official MTIL script's 1 (the class-incremental configs' weight 5 lies inside).
    TUNABLE: ClassVar[dict[str, str]] = {"weight": "log:0.1:10", "l2": "log:0.1:10"}

    # ZSCL's mtil/scripts/ZSCL.sh (its reference data at these paths, relative to the run's folder).
    PRESETS: ClassVar[dict] = {"mtil": dict(
        weight=1.0, temperature=2.0, ref_batch_size=64, ref_texts="all", text_features="teacher", we=True,
        we_interval=100, l2=1.0, ref_images="data/imagenet/train",
        ref_sentences="data/conceptual_captions/Validation_GCC-1.1.0-Validation.tsv", ref_column="0")}

    def __post_init__(self) -> None:
        for key, value, options in (("ref_texts", self.ref_texts, ("all", "batch")),
                                    ("text_features", self.text_features, ("teacher", "student"))):
            check_choice(f"strategy.{key}", value, options)
        if self.weight < 0 or self.l2 < 0 or self.temperature <= 0 or self.ref_batch_size < 1 or self.we_interval < 1:
            raise ConfigError("strategy: weight and l2 must be >= 0, temperature > 0, ref_batch_size and we_interval >= 1")
        reference_files().check_options(self.ref_images, self.ref_sentences, self.ref_column, self.ref_texts)

    def configured_reference(self) -> bool:
        return bool(self.ref_images or self.ref_sentences)


class ZSCL(StrategyDeclaration):
    """ZSCL: distil the initial model on reference pairs, plus weight ensembling (Zheng et al. 2023)."""

    Params = ZSCLParams

    @classmethod
    def plan_notes(cls, params: ZSCLParams) -> list[str]:
        files = reference_files()
        absent = files.missing(params.ref_images, params.ref_sentences, params.ref_root)
        return ["  " + files.describe(params.ref_images, params.ref_sentences) + (f" (absent: {absent})" if absent else "")]

    @classmethod
    def data_missing(cls, params: ZSCLParams) -> Optional[str]:
        return reference_files().missing(params.ref_images, params.ref_sentences, params.ref_root)


# -- VR-LwF ---------------------------------------------------------------------------------------
VOCABULARIES = ("random_tokens", "random_words", "class_names")
VOCAB_DRAWS = ("once", "session")


@dataclass
class VRLwFParams:
    # Weight of L_VR: 1, ZSCL's MTIL LwF-VR (the only published anchor; see strategies/vrlwf.py's
    # docstring for why the 5 of its class-incremental configs is not an authors' setting).
    lam: float = 1.0
    temperature: float = 2.0
    # K pseudo-sentences of vocab_length tokens (or words).
    vocab_size: int = 1000
    vocab_length: int = 10
    # once: one vocabulary for all sessions (ZSCL) | session: redrawn each session from (seed, session).
    vocab_draw: str = "once"
    # random_tokens (ZSCL) | random_words (the tokenizer's whole-word entries) | class_names
    # (earlier sessions' prompts; random_tokens in the first session, which has none).
    vocabulary: str = "random_tokens"
    # previous: the model at the end of the previous session | initial: the model before training.
    teacher: str = "previous"
    # Seed of the vocabulary draws; null = the run's seed (torch.initial_seed()).
    seed: Optional[int] = None

    # `continual tune`'s default search space. lam: our choice, one decade either side of ZSCL's
    # MTIL LwF-VR 1 (its class-incremental configs' 5 lies inside).
    TUNABLE: ClassVar[dict[str, str]] = {"lam": "log:0.1:10"}

    # ZSCL's mtil/scripts/lwf_vr.sh (the defaults: its LwF-VR is what they are set from).
    PRESETS: ClassVar[dict] = {"mtil": dict(lam=1.0, temperature=2.0, vocab_size=1000, vocab_length=10,
                                            vocab_draw="once", vocabulary="random_tokens", teacher="previous")}

    def __post_init__(self) -> None:
        check_choice("strategy.vocabulary", self.vocabulary, VOCABULARIES)
        check_choice("strategy.vocab_draw", self.vocab_draw, VOCAB_DRAWS)
        check_choice("strategy.teacher", self.teacher, TEACHERS)
        for key in ("vocab_size", "vocab_length", "temperature"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"strategy.{key} must be > 0, got {getattr(self, key)}")
        if self.lam < 0:
            raise ConfigError(f"strategy.lam must be >= 0, got {self.lam}")


class VRLwF(StrategyDeclaration):
    """VR-LwF: distil the previous model's image-vocabulary logits on a replayed random vocabulary."""

    Params = VRLwFParams


# -- Mod-X ----------------------------------------------------------------------------------------
REDUCTIONS = ("sum", "mean")


@dataclass
class ModXParams:
    # Weight of (L_i2t + L_t2i) / 2; the authors' 20 was set at batch 280 with the sum reduction.
    alpha: float = 20.0
    # sum (authors' code) | mean (per row: the sum divided by the batch size).
    reduction: str = "sum"
    # previous: the model at the end of the previous session | initial: the model before training.
    teacher: str = "previous"
    # Weight of the symmetric InfoNCE of the batch's (image, class caption) pairs, added to the
    # strategy's cross-entropy (Mod-X's L_CLIP; 0 = cross-entropy alone).
    contrastive_weight: float = 0.0

    # `continual tune`'s default search space. alpha: our choice, one decade either side of the
    # authors' 20 (set at batch 280 with the sum reduction; smaller batches need other weights).
    TUNABLE: ClassVar[dict[str, str]] = {"alpha": "log:2:200"}

    def __post_init__(self) -> None:
        check_choice("strategy.reduction", self.reduction, REDUCTIONS)
        check_choice("strategy.teacher", self.teacher, TEACHERS)
        for key in ("alpha", "contrastive_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"strategy.{key} must be >= 0, got {getattr(self, key)}")


class ModX(StrategyDeclaration):
    """Mod-X: keep the previous model's image-text similarity rows where it was right (KL, both ways)."""

    Params = ModXParams


# -- CPE-CLIP -------------------------------------------------------------------------------------
TOWERS = ("both", "text")
VISION_MODES = ("accumulate", "replace")
LR_SCHEDULES = ("authors", "config")


class UnsupportedTowerError(UserError):
    """The model's towers are not open_clip transformers that prompts can enter."""


def config_problem(model_name: str, towers: str) -> Optional[str]:
    """Why the towers of open_clip model ``model_name`` cannot take CPE-CLIP's prompts, read from
    its open_clip config alone (nothing is built); None if they can, or if the model is unknown
    (building it reports that). The same rules as ``strategies.cpe_clip._text_tower`` and
    ``PromptedCLIP`` apply to the built model."""
    config = model_config(model_name)
    if config is None:
        return None
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    image_kind = (f"timm {vision['timm_model_name']}" if vision.get("timm_model_name")
                  else "ModifiedResNet" if isinstance(vision.get("layers"), (list, tuple)) else "VisionTransformer")
    text_kind = "Hugging Face" if text.get("hf_model_name") else "TextTransformer"
    why = None
    if text.get("hf_model_name"):
        why = "the text tower is not an open_clip text transformer"
    elif text.get("embed_cls"):
        why = "its text tower appends a class token or masks padding"
    elif text.get("no_causal_mask"):
        why = "its text tower is not causal"
    elif text.get("pool_type", "argmax") not in ("argmax", "eos"):
        why = f"its text tower pools '{text['pool_type']}', not at the end token"
    elif towers == "both" and image_kind != "VisionTransformer":
        why = "the image tower is not an open_clip VisionTransformer; strategy.towers=text prompts the text tower only"
    if why is None:
        return None
    return (f"CPE-CLIP needs open_clip ViT/text-transformer towers; model {model_name} has a {image_kind} image tower "
            f"and a {text_kind} text tower ({why}); use model.name=tiny-vit (model.pretrained=base:vit) or ViT-B-16")


@dataclass
class CPECLIPParams:
    # Prompt tokens per layer (the authors' L_g).
    prompt_tokens: int = 2
    # Prompted text layers, counted from the first; 0 = all (the authors: 12 of 12).
    depth: int = 0
    # "both": CPE-CLIP; "text": the text-only variant (image tower unprompted).
    towers: str = "both"
    # Multiply the prompt gradients by |C_t| / |C_1..C_t| in sessions t >= 2.
    session_scaling: bool = True
    # Batch size of sessions t >= 2 (the authors: 4); 0 = train.batch_size.
    incremental_batch_size: int = 4
    # Epochs of sessions t >= 2 (the authors: 5; CUB's base session has 6); 0 = train.epochs.
    incremental_epochs: int = 5
    # Vision prompts: accumulate (CPE-CLIP) | replace (the authors' "no_accumulation" ablation,
    # which they ran with session_scaling=false).
    vision_mode: str = "accumulate"
    # "authors": lr * (1 + 99 e / 50) at epoch e of each session (official scheduler, per epoch);
    # "config": train.scheduler / train.warmup_steps.
    lr_schedule: str = "authors"

    # `continual tune`'s default search space. prompt_tokens: our choice, 1 to twice the authors'
    # L_g = 2; vision_mode: CPE-CLIP's accumulate and the authors' "no_accumulation" ablation.
    TUNABLE: ClassVar[dict[str, str]] = {"prompt_tokens": "int:1:4", "vision_mode": "choice:accumulate,replace"}

    def __post_init__(self) -> None:
        check_choice("strategy.towers", self.towers, TOWERS)
        check_choice("strategy.lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("strategy.vision_mode", self.vision_mode, VISION_MODES)
        for key in ("prompt_tokens",):
            if getattr(self, key) < 1:
                raise ConfigError(f"strategy.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("depth", "incremental_batch_size", "incremental_epochs"):
            if getattr(self, key) < 0:
                raise ConfigError(f"strategy.{key} must be >= 0, got {getattr(self, key)}")


class CPECLIP(StrategyDeclaration):
    """CPE-CLIP: frozen CLIP, text prompts and projected vision prompts, session-aware scaling."""

    Params = CPECLIPParams
    backbone_trainable = "none"
    stream_kinds = ("classification",)  # few-shot class-incremental

    @classmethod
    def check_model(cls, model_name: str, params: CPECLIPParams) -> None:
        """Before anything is built (``continual.run.preflight``): refuse towers prompts cannot enter."""
        problem = config_problem(model_name, params.towers)
        if problem is not None:
            raise UnsupportedTowerError(problem)
