"""Known deviations from the published recipes: one registry, checked against a run's config.

Each check looks at the config (and the strategy's parameters and the stream's plan) and
returns one line naming a deviation that remains, what the authors' code does, and how to
switch, or None. ``continual run CONFIG --dry-run`` prints every line that applies (README,
"Fidelity", has the same facts as a table). Checks are registered for strategy names (data,
not imports: the core knows no strategy) or for every run (protocol checks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig

Check = Callable[[DictConfig, Any, Any], Optional[str]]
_CHECKS: list[tuple[tuple[str, ...], Check]] = []

MTIL_SPLIT_DATASETS = ("caltech101", "eurosat", "sun397")  # no official test split
FSCIL_STREAMS = ("cifar100", "mini-imagenet", "cub200")


def check(*strategies: str) -> Callable[[Check], Check]:
    """Register a check for runs of these strategies (none: every run)."""
    def register(fn: Check) -> Check:
        _CHECKS.append((strategies, fn))
        return fn
    return register


def deviations(cfg: DictConfig, params: Any, stream: Any) -> list[str]:
    """Every known deviation of this run from the authors' recipe, one line each."""
    name = str(cfg.strategy.name)
    found = [fn(cfg, params, stream) for strategies, fn in _CHECKS if not strategies or name in strategies]
    return [line for line in found if line]


def plan_lines(cfg: DictConfig, params: Any, stream: Any) -> list[str]:
    found = deviations(cfg, params, stream)
    head = f"fidelity: {len(found) or 'no'} known deviation{'s' if len(found) != 1 else ''} from the authors' recipes"
    return [head + " (README, Fidelity)"] + [f"  deviation: {line}" for line in found]


def _differs(pairs: list[tuple[str, Any, Any]]) -> Optional[str]:
    """'key value (authors: value)' for the pairs whose values differ."""
    wrong = [f"{key} {ours} (authors: {theirs})" for key, ours, theirs in pairs if ours != theirs]
    return ", ".join(wrong) if wrong else None


def _sources(cfg: DictConfig) -> list[str]:
    return [Path(s).name for s in cfg.stream.sources]


def _manifests(cfg: DictConfig) -> bool:
    return any(s.lower().endswith((".json", ".csv", ".jsonl")) for s in cfg.stream.sources)


def _steps_per_session(cfg: DictConfig, stream: Any) -> list[int]:
    """Optimizer steps of each session (iterations, or epochs x batches of the planned sizes)."""
    t = cfg.train
    if t.iterations:
        return [t.iterations] * len(stream.sessions)
    batches = [(s.n_train // t.batch_size if t.drop_last else -(-s.n_train // t.batch_size)) for s in stream.sessions]
    return [max(1, b) * t.epochs for b in batches]


# -- Mod-X (Ni et al. 2023; ZixuanNi/Mod-X) ---------------------------------------------------------
@check("modx")
def _modx_start(cfg, params, stream):
    if (cfg.model.name, cfg.model.pretrained) == ("RN50-text6", "base:modx-coco"):
        return None
    return (f"Mod-X starts from {cfg.model.name} ({cfg.model.pretrained or 'random init'}), not the authors' RN50 with a "
            "6-layer text transformer trained from scratch on COCO (model.name=RN50-text6 model.pretrained=base:modx-coco)")


@check("modx")
def _modx_data(cfg, params, stream):
    if stream.kind == "pairs":
        return None
    return ("Mod-X on classification batches, each image's caption its class prompt; the authors train on image-text "
            "pairs (stream.name=caption-pairs, configs/modx-coco-flickr.yaml)")


@check("modx")
def _modx_sampling(cfg, params, stream):
    if stream.kind != "pairs" or not _manifests(cfg) or cfg.stream.sampling == "image":
        return None
    return ("one example per (image, caption) pair: about 5x the authors' steps per phase, and an image's captions can "
            "share a batch (the authors: one example per image, a caption drawn per visit: stream.sampling=image)")


@check("modx")
def _modx_test(cfg, params, stream):
    if stream.kind != "pairs" or not _manifests(cfg) or cfg.stream.test_by == "source":
        return None
    return ("each phase is scored on the test images inside its slice (the authors: the whole test split after every "
            "phase: stream.test_by=source)")


@check("modx")
def _modx_val(cfg, params, stream):
    if stream.kind != "pairs" or "dataset_flickr30k.json" not in _sources(cfg) or "val" in cfg.stream.train_splits:
        return None
    return "Flickr30K's val images are not trained (the authors train train + val: stream.train_splits=[train,val])"


@check("modx")
def _modx_coco_test(cfg, params, stream):
    if stream.kind != "pairs" or "dataset_flickr30k.json" not in _sources(cfg):
        return None
    if cfg.control.name == "manifest-test" and any(Path(s).name == "dataset_coco.json" for s in cfg.control.sources):
        return None
    return ("COCO's 5K test is not scored after every phase (control.name=manifest-test "
            "control.sources=[data/coco/dataset_coco.json])")


@check("modx")
def _modx_schedule(cfg, params, stream):
    t = cfg.train
    wrong = _differs([("train.warmup_fraction", t.warmup_fraction, 0.2), ("train.drop_last", t.drop_last, True),
                      ("train.epochs", t.iterations or t.epochs, 35), ("train.lr", t.lr, 5e-4),
                      ("train.weight_decay", t.weight_decay, 0.1)])
    return f"recipe: {wrong} (20% warm-up of each phase, last partial batch dropped)" if wrong else None


@check("modx")
def _modx_batch(cfg, params, stream):
    if params.reduction != "sum" or cfg.train.batch_size == 280:
        return None
    return (f"alpha {params.alpha} with the sum over rows was set at batch 280; here batch {cfg.train.batch_size} "
            "(strategy.reduction=mean divides the sum by the batch)")


# -- VR-LwF (Ding et al. 2022; reference: ZSCL's LwF-VR) -------------------------------------------
@check("vrlwf")
def _vrlwf_params(cfg, params, stream):
    wrong = _differs([("strategy.lam", params.lam, 1.0), ("strategy.vocab_draw", params.vocab_draw, "once"),
                      ("strategy.vocabulary", params.vocabulary, "random_tokens"),
                      ("strategy.vocab_size", params.vocab_size, 1000), ("strategy.temperature", params.temperature, 2.0)])
    return f"VR-LwF {wrong} (ZSCL's MTIL LwF-VR, the only published anchor)" if wrong else None


@check("vrlwf")
def _vrlwf_tokens(cfg, params, stream):
    if params.vocabulary != "random_tokens":
        return None
    return ("random token ids exclude the tokenizer's special tokens (ZSCL draws from all 49,408 ids, its start and end "
            "tokens included); not switchable")


@check("vrlwf", "lwf")
def _second_batch(cfg, params, stream):
    if cfg.strategy.name == "lwf" and cfg.stream.name != "mtil":
        return None
    return ("distils on the training batch; ZSCL's code draws a second batch of the task's training images with test "
            "preprocessing for the distillation; not switchable")


# -- LwF and WiSE-FT as ZSCL's MTIL baselines ---------------------------------------------------------
@check("lwf")
def _lwf_zscl(cfg, params, stream):
    if cfg.stream.name != "mtil" or (params.text_features, params.symmetric) == ("teacher", True):
        return None
    return ("LwF scores the student's own class texts or one direction only (ZSCL's LwF: the student's images against "
            "the teacher's class texts, both directions: strategy.preset=mtil)")


@check("wiseft")
def _wiseft_zscl(cfg, params, stream):
    if cfg.stream.name != "mtil" or (params.anchor, params.alpha) == ("previous", 0.8):
        return None
    return (f"WiSE-FT anchored to the {params.anchor} model with alpha {params.alpha} (ZSCL's baseline: the session "
            "start, 0.8: strategy.preset=mtil)")


# -- ZSCL (Zheng et al. 2023; Thunderbeee/ZSCL) ------------------------------------------------------
@check("zscl")
def _zscl_reference(cfg, params, stream):
    if params.ref_images and params.ref_sentences:
        return None
    return ("reference data: " + ("the control set's complement" if not params.ref_images else params.ref_images)
            + (" with its captions" if not params.ref_sentences else f" with {params.ref_sentences}")
            + " (ZSCL: ImageNet training images, Conceptual Captions validation captions: strategy.ref_images, "
              "strategy.ref_sentences, or strategy.preset=mtil)")


@check("zscl")
def _zscl_ensemble(cfg, params, stream):
    if not params.we:
        return "no weight ensembling (ZSCL: strategy.we=true)"
    # the start, after steps 1, k + 1, ..., and the final weights unless the last step was one
    counts = sorted({2 + (steps - 1) // params.we_interval + ((steps - 1) % params.we_interval != 0)
                     for steps in _steps_per_session(cfg, stream)})
    if counts == [12]:
        return None
    return (f"weight ensembles of {'/'.join(map(str, counts))} snapshots per session (ZSCL: 12, every 100 of 1000 "
            "steps: strategy.we_interval)")


# -- MTIL (ZSCL's protocol) ---------------------------------------------------------------------------
@check()
def _mtil_augment(cfg, params, stream):
    if cfg.stream.name != "mtil" or cfg.stream.augment or cfg.strategy.name == "zeroshot":
        return None
    return "no training augmentation (ZSCL: random-resized crop, scale 0.9-1.0: stream.augment=true)"


@check()
def _mtil_templates(cfg, params, stream):
    if cfg.stream.name != "mtil" or cfg.model.train_templates == "first" or cfg.strategy.name == "zeroshot":
        return None
    return "trains with the mean of every template (ZSCL: each class's first template: model.train_templates=first)"


@check()
def _mtil_holdout(cfg, params, stream):
    split = [d for d in cfg.stream.datasets if d in MTIL_SPLIT_DATASETS]
    if cfg.stream.name != "mtil" or not split:
        return None
    if cfg.stream.holdout == "per_class":
        return (f"{', '.join(split)}: {cfg.stream.test_fraction:.0%} of each class held out (ZSCL: one random split, "
                "seed 42: stream.holdout=random stream.split_seed=42)")
    if cfg.stream.split_seed != 42 or cfg.stream.test_fraction != 0.2:
        return (f"{', '.join(split)}: random split with seed {cfg.stream.split_seed} and test fraction "
                f"{cfg.stream.test_fraction} (ZSCL: 42, 0.2)")
    return (f"{', '.join(split)}: ZSCL's random 80/20 split (seed 42) over the images in sorted path order; the same "
            "test images as ZSCL's only where its dataset class lists them in that order")


@check()
def _mtil_recipe(cfg, params, stream):
    if cfg.stream.name != "mtil" or cfg.strategy.name == "zeroshot":
        return None
    t = cfg.train
    lrs = {d: (5e-5 if d in ("aircraft", "mnist") else 1e-5) for d in cfg.stream.datasets if d in _ZSCL_DOMAINS}
    ours = {d: t.session_lr.get(d, t.lr) for d in lrs}
    wrong = _differs([("model", f"{cfg.model.name}/{cfg.model.pretrained}/{cfg.model.trainable}", "ViT-B-16/openai/all"),
                      ("train.iterations", t.iterations, 1000), ("train.batch_size", t.batch_size, 64),
                      ("train.label_smoothing", t.label_smoothing, 0.2), ("train.warmup_steps", t.warmup_steps, 100),
                      ("lr by task", ours, lrs), ("train.weight_decay", t.weight_decay, 0.0)])
    return f"recipe: {wrong}" if wrong else None


_ZSCL_DOMAINS = ("aircraft", "caltech101", "cifar100", "dtd", "eurosat", "flowers", "food", "mnist", "oxford-pet",
                 "stanford-cars", "sun397")


# -- CPE-CLIP (D'Alessandro et al. 2023; neuraptic/cpe-clip) ---------------------------------------
@check("cpe-clip")
def _cpe_backbone(cfg, params, stream):
    if (cfg.model.name, cfg.model.pretrained) == ("ViT-B-16", "openai"):
        return None
    return f"backbone {cfg.model.name} ({cfg.model.pretrained}), not OpenAI's ViT-B/16 (model.name=ViT-B-16 model.pretrained=openai)"


@check("cpe-clip")
def _cpe_protocol(cfg, params, stream):
    if cfg.stream.name not in FSCIL_STREAMS:
        return (f"stream {cfg.stream.name}, not a few-shot protocol of the paper (configs/fscil-cifar100.yaml, "
                "fscil-miniimagenet.yaml, fscil-cub200.yaml)")
    if cfg.stream.split_dir:
        return None
    return ("each new class's 5 shots are drawn with the seed; the authors use fixed splits (the FSCIL papers' lists: "
            "stream.split_dir)")


@check("cpe-clip")
def _cpe_schedule(cfg, params, stream):
    wrong = _differs([("strategy.incremental_epochs", params.incremental_epochs or cfg.train.epochs, 5),
                      ("strategy.lr_schedule", params.lr_schedule, "authors"),
                      ("strategy.incremental_batch_size", params.incremental_batch_size, 4)])
    return f"recipe: {wrong}" if wrong else None


@check("cpe-clip")
def _cpe_ablation(cfg, params, stream):
    wrong = _differs([("strategy.towers", params.towers, "both"), ("strategy.vision_mode", params.vision_mode, "accumulate"),
                      ("strategy.session_scaling", params.session_scaling, True)])
    return f"an ablation, not CPE-CLIP: {wrong}" if wrong else None
