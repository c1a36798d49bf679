"""Frozen-trunk features of a whole dataset, computed fast (the first run's cost is mostly this).

A frozen trunk is applied once per image (then cached, see :mod:`continual.clip.features`), so what
matters is images per second on the machine at hand. Measured by ``continual bench`` against a
bare ``torch.no_grad()`` loop over the same trunk and images (README, "How fast"):

- the trunk runs as an inference copy: each BatchNorm that directly follows a convolution is
  folded into that convolution's weights (in eval mode it is a per-channel affine map), checked
  on a probe batch against the original; weights and activations in channels-last memory (the
  layout oneDNN's convolutions are fastest in on the CPU); under ``torch.inference_mode``;
- images are decoded and preprocessed in DataLoader worker processes (one torch thread each)
  while the trunk runs, and batched in channels-last layout there;
- small batches: the activations of 16 images at 128 px stay in the CPU's caches (measured
  faster than 32-256 on the 2-core build machine);
- torch's threads: no more than the cores the decoding workers leave (images), or all cores
  but one (texts): threads of one operator wait for each other at every operator, and one that
  has to wait for a core stalls the rest (on the 2-core build machine, shared, MiniLM ran 2.3x
  faster on one thread than on two).

Texts: each batch's token ids are cut after the longest text of the batch (padding is masked
anyway), with the texts sorted by length so that batches hold texts of similar lengths; 64 texts
a batch (measured: as fast as 16, faster than 256).
"""

from __future__ import annotations

import contextlib
import copy
import os
import weakref
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

BATCH_SIZE = 16  # images per trunk call (see above)
TEXT_BATCH_SIZE = 64
# trunk -> (its weights' version, its inference copy), kept while the trunk lives
_inference_copies: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decoding_workers(n_items: int) -> int:
    """DataLoader workers that decode images while the trunk runs: one per four cores, at least
    one where there are two cores, none for a handful of items (a worker takes ~0.1 s to start)."""
    cores = cpu_count()
    if cores < 2 or n_items < 64:
        return 0
    return max(1, cores // 4)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) in which every BatchNorm registered right after a
    convolution of its width, in the same parent, is folded into it: w' = w * g / sqrt(var + e),
    b' = (b - mean) * g / sqrt(var + e) + beta; the norm's activation (timm's BatchNormAct2d)
    stays. Registration order is not proof of data flow, so the caller checks the copy."""
    folded = copy.deepcopy(model).eval()
    for parent in folded.modules():
        previous = None
        for name, child in list(parent.named_children()):
            if (isinstance(child, nn.BatchNorm2d) and isinstance(previous, nn.Conv2d) and child.track_running_stats
                    and previous.out_channels == child.num_features):
                _fold_into(previous, child)
                setattr(parent, name, _after_norm(child))
                previous = None
                continue
            if not isinstance(child, nn.Identity):
                previous = child
    return folded


def _fold_into(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        scale = torch.rsqrt(norm.running_var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
        shift = (bias - norm.running_mean) * scale + (norm.bias if norm.bias is not None else 0.0)
        conv.weight.mul_(scale.reshape(-1, *([1] * (conv.weight.dim() - 1))))
        conv.bias = nn.Parameter(shift, requires_grad=False)


def _after_norm(norm: nn.Module) -> nn.Module:
    """What a folded norm leaves: timm's BatchNormAct2d applies dropout, then its activation."""
    parts = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None))
             if m is not None and not isinstance(m, nn.Identity)]
    return nn.Sequential(*parts) if parts else nn.Identity()


def inference_copy(trunk: nn.Module, probe: torch.Tensor) -> nn.Module:
    """``trunk`` made for inference (BatchNorm folded where the copy matches the original on
    ``probe``, channels-last for image trunks); built once per trunk (and again if its weights
    change) and kept while the trunk lives.

    The check: folding only reorders a product (w * s instead of (w x) * s), which moves each
    output by a few float32 roundings of the values it sums, ~1e-6 of their size; a norm folded
    into the wrong convolution moves them by their own size. So a copy whose largest difference
    exceeds 1e-3 of the largest output is not used.
    """
    weights = _weights_version(trunk)
    if trunk in _inference_copies and _inference_copies[trunk][0] == weights:
        return _inference_copies[trunk][1]
    fast = fold_batchnorm(trunk)
    with torch.inference_mode():
        want, got = trunk.eval()(probe), fast(probe)
        if float((got - want).abs().max()) > 1e-3 * float(want.abs().max()):
            fast = copy.deepcopy(trunk).eval()
    if probe.dim() == 4:
        fast = fast.to(memory_format=torch.channels_last)
    for p in fast.parameters():
        p.requires_grad_(False)
    _inference_copies[trunk] = (weights, fast)
    return fast


def _weights_version(module: nn.Module) -> tuple:
    """Changes when any of ``module``'s tensors is replaced or written in place."""
    return tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())


def channels_last_batch(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """DataLoader collate: images stacked, in channels-last memory (done in the worker)."""
    return torch.stack(list(items)).contiguous(memory_format=torch.channels_last)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (at least 1) inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def image_features(trunk: nn.Module, images: Dataset, batch_size: int = BATCH_SIZE,
                   workers: int | None = None) -> torch.Tensor:
    """``trunk`` applied to every item of ``images`` (preprocessed image tensors), in order."""
    if len(images) == 0:
        return torch.empty(0)
    workers = decoding_workers(len(images)) if workers is None else workers
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=channels_last_batch, prefetch_factor=4 if workers else None)
    device = next(trunk.parameters()).device
    with torch_threads(min(torch.get_num_threads(), cpu_count() - workers)), torch.inference_mode():
        fast, out = None, []
        for x in loader:
            x = x.to(device)
            if fast is None:
                fast = inference_copy(trunk, x)
            out.append(fast(x))
        feats = torch.cat(out)
    return feats.clone()  # a normal tensor: inference tensors cannot enter autograd later


def text_features(trunk: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, pad_id: int,
                  batch_size: int = TEXT_BATCH_SIZE) -> torch.Tensor:
    """``trunk`` over token ids [N, L], each batch cut after its longest row's last non-pad
    token; rows sorted by length (similar lengths together), the result in the input's order."""
    if len(tokens) == 0:
        return torch.empty(0)
    lengths = (tokens != pad_id).long().cumsum(1).argmax(1) + 1  # position after the last real token
    order = torch.argsort(lengths, stable=True)
    out = []
    with torch_threads(min(torch.get_num_threads(), cpu_count() - 1)), torch.inference_mode():
        for idx in order.split(batch_size):
            out.append(trunk(tokens[idx, : int(lengths[idx].max())]))
        feats = torch.cat(out)
    result = torch.empty(feats.shape, dtype=feats.dtype)  # a normal tensor, in the input's order
    result[order] = feats
    return result


def pad_token(trunk: Any) -> int | None:
    """The pad id a text trunk masks (our Hugging Face trunk), None if it has none."""
    return getattr(trunk, "pad_token_id", None)


@torch.no_grad()
def encode_all(encode: Any, inputs: Any, batch_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """L2-normalised features of ``inputs`` (a tensor or a dataset of tensors), in batches on ``device``."""
    loader = inputs.split(batch_size) if torch.is_tensor(inputs) else DataLoader(inputs, batch_size=batch_size)
    return torch.cat([F.normalize(encode(x.to(device)), dim=-1) for x in loader])
