"""Continual-learning strategies for CLIP. Importing this package registers them by name
(it is the ``strategies`` provider of the ``continual.providers`` entry-point group); the
strategy modules themselves (which import torch and avalanche) load only when used."""

from continual.registry import STRATEGIES

STRATEGIES.add("zeroshot", "strategies.zeroshot:ZeroShot",
               "zero-shot CLIP, no training (reference for transfer and retention)")
STRATEGIES.add("finetune", "strategies.finetune:FineTune",
               "naive fine-tuning with cross-entropy over the seen classes (forgetting baseline)")
