"""Evaluation after every session: accuracy on each session's test data, retrieval on pairs."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from continual.system import distributed
from continual.clip.extract import encode_all
from continual.clip.heads import ClipClassifier, restrict
from continual.measure.metrics import retrieval_metrics
from continual.stream import ControlSet


def accuracy(classifier: ClipClassifier, dataset: Any, classes: Optional[Sequence[int]] = None,
             batch_size: int = 256) -> float:
    """Top-1 accuracy (%) of ``classifier`` on ``dataset`` (items ``(input, label, ...)``),
    classifying among ``classes`` (all of the classifier's classes when None)."""
    correct, total = class_counts(classifier, dataset, classes, batch_size)
    return 100.0 * float(correct.sum()) / max(float(total.sum()), 1.0)


@torch.no_grad()
def class_counts(classifier: ClipClassifier, dataset: Any, classes: Optional[Sequence[int]] = None,
                 batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Correct and total test items per true class (arrays over all of the classifier's classes),
    classifying among ``classes``. Under torchrun every process scores its shard and the counts
    are summed."""
    was_training = classifier.training
    classifier.eval()
    n = len(classifier.class_names)
    correct, total = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
    device = classifier.text_inputs.device  # where the model is (a GPU under torchrun)
    for batch in DataLoader(distributed.shard(dataset), batch_size=batch_size, shuffle=False):
        x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
        logits, labels = classifier(x), y
        if classes is not None:
            logits, y = restrict(logits, y, classes)
        hit = (logits.argmax(dim=1) == y).cpu()
        correct += torch.bincount(labels.cpu()[hit], minlength=n)
        total += torch.bincount(labels.cpu(), minlength=n)
    classifier.train(was_training)
    summed = distributed.all_reduce_sum(*correct.tolist(), *total.tolist())
    return np.array(summed[:n], dtype=float), np.array(summed[n:], dtype=float)


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
