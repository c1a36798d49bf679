"""Continual-learning strategies for CLIP. Importing this package registers them by name
(it is the ``strategies`` provider of the ``continual.providers`` entry-point group); the
strategy modules themselves (which import torch and avalanche) load only when a run builds one;
checks read their declarations (strategies/declarations.py) instead."""

from continual.registry import STRATEGIES

# name, class ("module:attr", imported when a run builds it), summary; the declaration (Params and
# checks, torch-free) has the class's name in strategies.declarations.
for _name, _target, _summary in [
    ("zeroshot", "strategies.zeroshot:ZeroShot", "zero-shot CLIP, no training (reference for transfer and retention)"),
    ("finetune", "strategies.finetune:FineTune", "naive fine-tuning with cross-entropy (forgetting baseline)"),
    ("joint", "strategies.joint:Joint", "joint training on the union of the sessions so far (upper bound)"),
    ("lwf", "strategies.lwf:LwF", "Learning without Forgetting: distil the previous model's logits (T=2)"),
    ("wiseft", "strategies.wiseft:WiSEFT", "WiSE-FT: interpolate weights with the pre-trained model after each session"),
    ("zscl", "strategies.zscl:ZSCL", "ZSCL: distil the initial model on reference pairs, plus weight ensembling"),
    ("vrlwf", "strategies.vrlwf:VRLwF", "VR-LwF: distillation on a replayed vocabulary (Ding et al. 2022)"),
    ("modx", "strategies.modx:ModX", "Mod-X: keep the old model's image-text similarity rows (Ni et al. 2023)"),
    ("cpe-clip", "strategies.cpe_clip:CPECLIP", "CPE-CLIP: multimodal prompts, session-aware gradient scaling (D'Alessandro et al. 2023)"),
]:
    STRATEGIES.add(_name, _target, _summary, declaration="strategies.declarations:" + _target.partition(":")[2])
