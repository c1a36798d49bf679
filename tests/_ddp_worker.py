"""Two optimizer steps of a strategy on one global batch, the same in one process and under
torchrun: ``tests/test_distributed.py`` runs :func:`run_cases` in-process (the reference) and this
file under ``torchrun --nproc_per_node=2`` (gloo, CPU), then compares.

The model is a very small open_clip ViT CLIP (the tiny-vit layout, narrower), random init,
every parameter training (towers and text side included). The data is 16 random images of 4 classes, trained for 2 epochs of one
step each (batch 16): each step's global batch is all 16 examples whatever the shuffling, and
the second step has a student that differs from its teacher, so the distillation terms have a
gradient. SGD (not Adam, whose first steps hide a wrong gradient scale) makes the parameters
after the steps a check of the gradients.
"""

from __future__ import annotations

import sys
import warnings

import torch

warnings.filterwarnings("ignore")

NAMES = ["zero", "one", "two", "three"]
MODEL = "test-micro-vit"
MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CASES = {
    # name: (strategy, strategy params, train overrides). The methods' weights are large so that
    # their terms, not the cross-entropy, dominate the second step's update.
    "finetune": ("finetune", {}, {}),
    "finetune-accumulate": ("finetune", {}, {"accumulation_steps": 2}),
    "modx": ("modx", {"alpha": 1000.0, "contrastive_weight": 1.0}, {}),
    "vrlwf": ("vrlwf", {"lam": 1000.0, "vocab_size": 64, "seed": 0}, {}),
    # CLIP's contrastive task loss of image-text streams (labels stand for caption ids)
    "contrastive": ("finetune", {}, {}, {"task_loss": "contrastive"}),
    # encodes the batch again outside DDP's forward; its symmetric term is over the batch
    "lwf": ("lwf", {"alpha": 100.0, "text_features": "teacher", "symmetric": True}, {}),
}
REFERENCE = ("finetune", "modx", "vrlwf", "contrastive", "lwf")  # in one process
# the other scale options, in one process (tests/test_scale_options.py)
OPTIONS = {
    "finetune-checkpointing": ("finetune", {}, {"grad_checkpointing": True}),
    "finetune-bf16": ("finetune", {}, {"precision": "bf16"}),
    "finetune-workers": ("finetune", {}, {"workers": 1}),
}
CASES.update(OPTIONS)
DISTRIBUTED = ("finetune-accumulate", "modx", "vrlwf", "contrastive", "lwf")  # under torchrun


def run_case(name: str, dtype: torch.dtype = torch.float64) -> dict:
    """Loss terms of both steps (averaged over processes: a per-example term is a local mean, a
    batch-direction term is the same global value on every process) and the parameters after;
    float64 by default: what differs beyond rounding is a bug."""
    import open_clip
    from avalanche.benchmarks.scenarios.supervised import class_incremental_benchmark
    from avalanche.core import SupervisedPlugin
    from omegaconf import OmegaConf

    import strategies  # noqa: F401  (registers the strategies)
    from continual.system import distributed
    from continual.clip.backbone import create_model, set_trainable
    from continual.config.schema import TrainConfig
    from continual.context import StrategyContext
    from continual.clip.heads import ClipClassifier, prompts
    from continual.registry import STRATEGIES
    from continual.stream import InputsDataset

    strategy_name, params, overrides, *extra = CASES[name]
    torch.set_default_dtype(dtype)
    torch.manual_seed(0)
    open_clip.factory._MODEL_CONFIGS[MODEL] = MODEL_CONFIG
    model, _, tokenizer = create_model(MODEL)
    set_trainable(model, "all")
    classifier = ClipClassifier(model, NAMES, tokenizer(prompts(NAMES, ["a photo of a {}."])), 1)
    g = torch.Generator().manual_seed(1)
    data = InputsDataset(torch.randn(16, 3, 32, 32, generator=g), [0, 1, 2, 3] * 4)
    bench = class_incremental_benchmark({"train": data, "test": data}, class_order=[0, 1, 2, 3],
                                        num_classes_per_exp=[4])
    train = OmegaConf.structured(TrainConfig(epochs=2, batch_size=16, lr=0.05, optimizer="sgd", momentum=0.9,
                                             scheduler="constant", **overrides))
    cls = STRATEGIES.get(strategy_name)
    steps: list[dict] = []

    class Record(SupervisedPlugin):
        def after_training_iteration(self, strategy, **kwargs):
            names = sorted(strategy.loss_terms)
            sums = distributed.all_reduce_sum(*(strategy.loss_terms[n] for n in names))
            steps.append({n: v / distributed.world_size() for n, v in zip(names, sums)})

    strategy = cls(classifier=classifier, train=train, params=cls.Params(**params) if cls.Params else None,
                   context=StrategyContext(encode_texts=tokenizer, tokenizer=tokenizer), plugins=[Record()],
                   **(extra[0] if extra else {}))
    start = {n: p.detach().clone() for n, p in classifier.model.named_parameters() if p.requires_grad}
    strategy.train(bench.train_stream[0])
    torch.set_default_dtype(torch.float32)
    return {"steps": steps, "start": start,
            "params": {n: p.detach().clone() for n, p in classifier.model.named_parameters() if p.requires_grad}}


def run_cases(names: tuple[str, ...]) -> dict:
    return {name: run_case(name) for name in names}


def main(out: str) -> None:
    from continual.system import distributed

    torch.set_num_threads(1)
    distributed.init("cpu")
    results = run_cases(DISTRIBUTED)
    # every process must hold the same parameters after the steps
    for case in results.values():
        flat = torch.cat([p.flatten() for p in case["params"].values()])
        gathered = distributed.gather(flat[None])
        case["max_rank_difference"] = float((gathered - gathered[0]).abs().max())
    if distributed.is_main():
        results["world_size"] = distributed.world_size()
        torch.save(results, out)
    distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
