"""Building a base model offline: contrastive training on real image-caption pairs.

No CLIP weights are reachable offline, so a base is trained here and cached on disk:

- ``lit`` (the default): the LiT-style composite ``lit-effnet-minilm`` (ImageNet
  EfficientNet-Lite0 + MiniLM-L6, both frozen); only the projections and the logit scale train,
  on precomputed trunk features, in seconds.
- ``vit``: the ``tiny-vit`` open_clip model trained from scratch (every parameter): weak, but
  its towers are real transformers that prompt methods can enter.
- ``modx-coco``: Mod-X's starting model (``configs/pretrain-modx-coco.yaml``): ``RN50-text6``
  (RN50 image tower, 6-layer text transformer) trained from scratch on COCO's Karpathy ``train``
  images (COCO 2014 train) with the plain contrastive loss, as the authors'
  Joint_Train/pre_train_model.py; it needs the data and a GPU.

The data is a registered control set's complement (``corpus``): the offline pairs (emoji, Tux
Paint stamps) minus a held-out split by concept, or a manifest's training splits
(``manifest-test``: the test split is held out); the held-out keys are stored in the base's
metadata, and that held-out split is the control data of every run on the base. The loss is
CLIP's symmetric InfoNCE (open_clip's ``ClipLoss``), AdamW, a cosine schedule with optional
warm-up (a fraction of the steps), the logit scale clamped to [0, ln 100] after every step.
Examples are pairs, or images with one caption drawn per visit (``sampling``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

import torch
from omegaconf import OmegaConf

from continual.system.atomic import atomic_write
from continual.errors import ConfigError
from continual.clip.extract import torch_threads
from continual.clip.features import cache_dir


@dataclass
class PretrainConfig:
    name: str = "lit"
    model: str = "lit-effnet-minilm"
    trainable: str = "projections"
    corpus: str = "heldout-captions"  # a registered control set: its complement trains the base
    sources: List[str] = field(default_factory=lambda: ["emoji", "tux"])
    heldout_fraction: float = 0.15
    split_seed: int = 0
    seed: int = 0
    epochs: int = 30
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.1
    # Zero-shot classification reported for the base: a registered stream's test data (all
    # classes); null = none.
    zero_shot_stream: Optional[str] = "fashion-mnist"
    zero_shot_per_class: int = 200
    # Manifest corpora: the Karpathy splits trained on (the test split is held out).
    train_splits: List[str] = field(default_factory=lambda: ["train", "restval"])
    # pair: one example per (image, caption) | image: one per image, a caption drawn per visit.
    sampling: str = "pair"
    # Linear warm-up over this fraction of the steps, then cosine decay.
    warmup: float = 0.0
    # Where it trains (cpu | cuda | auto: cuda when available) and DataLoader workers; neither
    # changes the recipe (nor its cache file).
    device: str = "cpu"
    workers: int = 0


# Fields added after the first bases were built: at their defaults they stay out of a recipe's
# digest, so the bases already built keep their cache files; device and workers never enter it.
_LATER_FIELDS = {"train_splits": ["train", "restval"], "sampling": "pair", "warmup": 0.0}
_RUNTIME_FIELDS = ("device", "workers")


# The built-in recipes that "base:NAME" resolves to (configs/pretrain-*.yaml mirror them).
BASES = {
    "lit": PretrainConfig(),
    "vit": PretrainConfig(name="vit", model="tiny-vit", trainable="all", epochs=10, batch_size=128,
                          lr=5e-4, weight_decay=0.1),
    # Mod-X's RN50 (6-layer text) on COCO 2014 train, the authors' pre_train_model.py defaults
    # (35 epochs, batch 280 = 70 x 4 GPUs, AdamW 5e-4, wd 0.1, 20% warm-up, seed 11).
    "modx-coco": PretrainConfig(name="modx-coco", model="RN50-text6", trainable="all", corpus="manifest-test",
                                sources=["data/coco/dataset_coco.json"], train_splits=["train"], sampling="image",
                                seed=11, epochs=35, batch_size=280, lr=5e-4, weight_decay=0.1, warmup=0.2,
                                zero_shot_stream=None, device="auto", workers=8),
}


def load_pretrain_config(path: Optional[str], overrides: List[str] = ()) -> PretrainConfig:
    from continual.config import shipped
    from continual.config.load import _explain
    from omegaconf.errors import OmegaConfBaseException

    try:
        layers = [OmegaConf.structured(PretrainConfig)]
        if path:
            layers.append(OmegaConf.load(shipped.resolve(path)))
        layers.append(OmegaConf.from_dotlist(list(overrides)))
        return OmegaConf.to_object(OmegaConf.merge(*layers))
    except OmegaConfBaseException as exc:
        raise _explain(exc, allowed=[f.name for f in dataclasses.fields(PretrainConfig)]) from None


def recipe(cfg: PretrainConfig) -> dict:
    """The fields that make a base (see ``_LATER_FIELDS``)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items()
            if k not in _RUNTIME_FIELDS and not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


def base_path(cfg: PretrainConfig) -> Path:
    """Content-addressed cache file of a recipe: changing any field builds a new base."""
    digest = hashlib.blake2b(json.dumps(recipe(cfg), sort_keys=True).encode(), digest_size=8).hexdigest()
    return cache_dir() / "bases" / f"{cfg.name}-{digest}.safetensors"


def check_base(name: str) -> None:
    if name not in BASES:
        raise ConfigError(f"model.pretrained: unknown base 'base:{name}'; choose one of: {', '.join('base:' + b for b in BASES)}")


def resolve_base(name: str, echo: Callable[[str], None] = print) -> Path:
    """The file of built-in base ``name``, building it first if it is not cached."""
    check_base(name)
    path = base_path(BASES[name])
    if not path.exists():
        echo(f"base '{name}' not built yet: building it now (once; cached in {path.parent})")
        pretrain(BASES[name], echo=echo)
    return path


def pretrain(cfg: PretrainConfig, echo: Callable[[str], None] = print) -> dict:
    """Train a base by ``cfg``, save it to :func:`base_path` and return its report."""
    import open_clip
    from continual.clip.backbone import load_backbone
    from continual.config.schema import ControlConfig, StreamConfig
    from continual.run.evaluation import accuracy, retrieval
    from continual.clip.features import image_inputs, text_inputs
    from continual.clip.heads import ClipClassifier, prompts
    from continual.registry import CONTROLS, STREAMS
    from continual.clip.optimizer import fused_available

    from continual.config.schema import SAMPLINGS

    from continual.config.load import check_choice
    from continual.clip.schedule import lr_factor

    check_choice("sampling", cfg.sampling, SAMPLINGS)
    if not 0 <= cfg.warmup < 1:
        raise ConfigError(f"warmup must be a fraction of the steps in [0, 1), got {cfg.warmup}")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    torch.manual_seed(cfg.seed)
    start = time.time()
    backbone = load_backbone(cfg.model, "", cfg.trainable, train_logit_scale=True)

    def encode_images(ds, key):
        return image_inputs(ds, key, backbone.preprocess, backbone.image_trunk, backbone.fingerprint("image"))

    def encode_texts(texts):
        return text_inputs(texts, backbone.tokenizer, backbone.text_trunk, backbone.fingerprint("text"))

    control_cfg = ControlConfig(name=cfg.corpus, sources=list(cfg.sources), heldout_fraction=cfg.heldout_fraction,
                                split_seed=cfg.split_seed, train_splits=list(cfg.train_splits))
    corpus = CONTROLS.get(cfg.corpus)
    train_set = corpus(control_cfg, encode_images, encode_texts, complement=True)
    heldout = corpus(control_cfg, encode_images, encode_texts)
    echo(f"pretraining base '{cfg.name}' ({cfg.model}, trainable: {cfg.trainable}, "
         f"{backbone.trainable_parameters():,} parameters) on {len(train_set.caption_image)} pairs of "
         f"{len(train_set.keys)} images; {len(heldout.keys)} held out (features ready in {time.time() - start:.0f} s)")

    model = backbone.model.to(device)
    loss_fn = open_clip.ClipLoss()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused_available(params) or None)
    examples = training_examples(train_set, cfg.sampling)
    loader = torch.utils.data.DataLoader(examples, batch_size=cfg.batch_size, shuffle=True,
                                         drop_last=len(examples) > cfg.batch_size, num_workers=cfg.workers,
                                         persistent_workers=cfg.workers > 0)
    steps = cfg.epochs * len(loader)
    warmup = int(cfg.warmup * steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, steps, warmup))
    model.train()
    # Projections of cached features: a few small matrix products per step, as fast on one thread
    # as on two, while a second thread that must wait for a core (a shared machine) slows every
    # step many-fold (measured: 8 ms vs 100-470 ms a step on the 2-core build machine).
    with torch_threads(1 if cfg.trainable == "projections" else torch.get_num_threads()):
        for epoch in range(cfg.epochs):
            total = 0.0
            for images, captions in loader:
                img = model.encode_image(images.to(device), normalize=True)
                txt = model.encode_text(train_set.text_inputs[captions].to(device), normalize=True)
                loss = loss_fn(img, txt, model.logit_scale.exp())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():  # CLIP's clamp of the temperature
                    model.logit_scale.clamp_(0, 4.6052)
                total += loss.item()
            if epoch == 0 or (epoch + 1) % max(1, cfg.epochs // 5) == 0:
                echo(f"  epoch {epoch + 1}/{cfg.epochs}: loss {total / len(loader):.3f}")
    model.eval()

    report = {f"heldout_{k}": v for k, v in retrieval(model, heldout).items()}
    zero_shot = ""
    if cfg.zero_shot_stream:
        stream_cfg = StreamConfig(name=cfg.zero_shot_stream, n_sessions=1, train_per_class=1,
                                  test_per_class=cfg.zero_shot_per_class)
        stream = STREAMS.get(cfg.zero_shot_stream)(stream_cfg, 0, encode_images)
        templates = ["a photo of a {}."]
        classifier = ClipClassifier(model, stream.class_names, encode_texts(prompts(stream.class_names, templates)),
                                    len(templates)).to(device)
        report[f"zero_shot_{cfg.zero_shot_stream}"] = accuracy(classifier, stream.benchmark.test_stream[0].dataset)
        zero_shot = ", zero-shot %s %.1f%% (chance %.0f%%)" % (
            cfg.zero_shot_stream, report[f"zero_shot_{cfg.zero_shot_stream}"], 100 / len(stream.class_names))
    report["seconds"] = round(time.time() - start, 1)
    _save_base(model.cpu(), base_path(cfg), cfg, heldout.keys, report)
    echo("base '%s' ready: held-out retrieval R@1 i2t %.1f%% / t2i %.1f%% (chance %.2f%%)%s, %.0f s"
         % (cfg.name, report["heldout_i2t_r1"], report["heldout_t2i_r1"], 100 / len(heldout.keys), zero_shot,
            report["seconds"]))
    return report


def training_examples(pairs: Any, sampling: str) -> torch.utils.data.Dataset:
    """Items (image input, caption id) of image-caption pairs: one per caption (``pair``), or one
    per image with a caption drawn at every visit (``image``)."""
    from continual.stream import CaptionedImages, InputsDataset, take

    owner = pairs.caption_image.tolist()
    if sampling == "pair":
        return InputsDataset(take(pairs.image_inputs, owner), list(range(len(owner))))
    captions: list[list[int]] = [[] for _ in pairs.keys]
    for c, image in enumerate(owner):
        captions[image].append(c)
    return CaptionedImages(pairs.image_inputs, captions)


def _save_base(model: torch.nn.Module, path: Path, cfg: PretrainConfig, heldout_keys: list, report: dict) -> None:
    """Save the trained parameters (write, then rename) with the recipe and held-out keys."""
    from safetensors.torch import save_file

    state = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    meta = {"recipe": json.dumps(recipe(cfg)), "heldout_keys": json.dumps(heldout_keys),
            "report": json.dumps(report)}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata=meta))
