"""Evaluation after every session: accuracy on each session's test data, retrieval on pairs."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from continual import distributed
from continual.heads import ClipClassifier, restrict
from continual.metrics import retrieval_metrics
from continual.stream import ControlSet


@torch.no_grad()
def accuracy(classifier: ClipClassifier, dataset: Any, classes: Optional[Sequence[int]] = None,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``classifier`` on ``dataset`` (items ``(input, label, ...)``),
    classifying among ``classes`` (all of the classifier's classes when None). Under torchrun
    every process scores its shard and the counts are summed."""
    was_training = classifier.training
    classifier.eval()
    correct = total = 0
    device = classifier.text_inputs.device  # where the model is (a GPU under torchrun)
    for batch in DataLoader(distributed.shard(dataset), batch_size=batch_size, shuffle=False):
        x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
        logits = classifier(x)
        if classes is not None:
            logits, y = restrict(logits, y, classes)
        correct += int((logits.argmax(dim=1) == y).sum())
        total += len(y)
    classifier.train(was_training)
    correct, total = distributed.all_reduce_sum(correct, total)
    return 100.0 * correct / max(total, 1)


@torch.no_grad()
def encode_all(encode: Any, inputs: Any, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """L2-normalised features of ``inputs`` (a tensor or a dataset of tensors), in batches on ``device``."""
    loader = inputs.split(batch_size) if torch.is_tensor(inputs) else DataLoader(inputs, batch_size=batch_size)
    return torch.cat([F.normalize(encode(x.to(device)), dim=-1) for x in loader])


@torch.no_grad()
def pair_features(model: torch.nn.Module, image_inputs: Any, text_inputs: Any,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features of ``model`` in eval mode (under torchrun every
    process encodes its shard; the features are gathered in order)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device  # a model without parameters: the CPU
    images = distributed.gather_rows(encode_all(model.encode_image, distributed.shard(image_inputs), batch_size, device))
    texts = distributed.gather_rows(encode_all(model.encode_text, distributed.shard(text_inputs), batch_size, device))
    model.train(was_training)
    return images, texts


@torch.no_grad()
def retrieval(model: torch.nn.Module, control: ControlSet, batch_size: int = 256) -> dict[str, float]:
    """Image-to-text and text-to-image R@1/5/10 and median ranks on the control pairs."""
    images, texts = pair_features(model, control.image_inputs, control.text_inputs, batch_size)
    sim = (images @ texts.t()).cpu().numpy().astype(np.float64)
    return retrieval_metrics(sim, control.caption_image.numpy())
