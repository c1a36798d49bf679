"""Data parallelism over processes started by ``torchrun``, on PyTorch's own machinery.

``torchrun`` sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; :func:`init` starts
the process group from them (NCCL on CUDA, gloo on the CPU). In a plain process nothing is
started and every helper here is the identity, so the single-process path is unchanged.

How a global batch stays global:

- Training data is sharded by ``DistributedSampler``: at step k the ranks' local batches are,
  together, one block of the same seeded permutation (the global batch, ``train.batch_size``).
- The model is wrapped in ``DistributedDataParallel``, which averages the ranks' gradients. A
  per-example loss (cross-entropy, LwF) stays local: the average of W equal shards' means is
  the mean over the global batch.
- A loss over the batch direction (CLIP's contrastive loss, Mod-X's similarity rows, VR-LwF's
  vocabulary-to-image term) is computed on features gathered from every rank (:func:`gather`):
  the student's with gradient (``torch.distributed.nn.functional.all_gather``, whose backward
  sums the W ranks' gradients), the teacher's without. Every rank then computes the same global
  loss, its local features receive W times their share of the gradient, and DDP's average over
  W ranks gives exactly the gradient of the global loss (open_clip's ``gather_with_grad``
  without ``local_loss``).
- Evaluation: every rank scores a contiguous shard (:func:`shard`); counts are summed
  (:func:`all_reduce_sum`) and retrieval features gathered in order (:func:`gather_rows`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from continual.errors import ConfigError


# -- the process group ----------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str = "cpu") -> torch.device:
    """Join torchrun's process group (once) and return this process's device: ``cuda:LOCAL_RANK``
    when ``device`` is CUDA, else ``device``. A plain process just gets ``device``."""
    if not launched_by_torchrun():
        return torch.device(device)
    cuda = torch.device(device).type == "cuda"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    if not is_distributed():
        # Avalanche builds default loggers when imported, which it refuses on ranks other than 0
        # once a process group exists: import it first.
        import avalanche.training  # noqa: F401

        dist.init_process_group("nccl" if cuda else "gloo")
    return torch.device("cuda", local) if cuda else torch.device(device)


def finish() -> None:
    """Leave the process group (at the end of a command)."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0: the process that logs to MLflow, writes checkpoints and prints."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_first_begin() -> None:
    """With :func:`local_first_end`: the first process of each machine runs the code between
    them first (building a base, caching features on disk); the others wait, then find it cached."""
    if int(os.environ.get("LOCAL_RANK", 0)) != 0:
        barrier()


def local_first_end() -> None:
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small state such as a run id or a checkpoint)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- features and counts across ranks ---------------------------------------------------------
def gather(tensor: torch.Tensor, with_grad: bool = False) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (equal shapes) along dim 0, in rank order.

    ``with_grad``: the student's features; the backward pass sends each rank the sum over ranks
    of the gradient of its rows (see the module docstring for why that is exact under DDP).
    Without: the teacher's features, labels (no gradient).
    """
    if not is_distributed() or world_size() == 1:
        return tensor
    if with_grad:
        from torch.distributed.nn.functional import all_gather

        # torch 2.14 marks it deprecated in favour of the private _functional_collectives; it is
        # what open_clip's gather_with_grad uses, and works on gloo and NCCL
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            gathered = torch.cat(all_gather(tensor), dim=0)
        if gathered.requires_grad:
            # its backward hands the gradient's row blocks to a collective: gloo silently reads a
            # non-contiguous block (the gradient of a transposed use, as in S^T) wrongly, NCCL
            # refuses it (cf. pytorch/pytorch#192920); test_distributed's LwF case catches it
            gathered.register_hook(lambda grad: grad.contiguous())
        return gathered
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate shards of different lengths (evaluation) in rank order, without gradient."""
    if not is_distributed() or world_size() == 1:
        return tensor
    device = _comm_device()
    n = torch.tensor([tensor.shape[0]], device=device)
    sizes = [torch.empty_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(tensor.device)


def all_reduce_sum(*values: float) -> tuple[float, ...]:
    """The sums over ranks of ``values`` (e.g. correct and total counts)."""
    if not is_distributed():
        return tuple(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return tuple(t.tolist())


def shard(data: Any) -> Any:
    """This rank's contiguous share of ``data`` (a tensor or a dataset) for evaluation: no item
    twice, none left out; concatenating the shards in rank order gives ``data`` back."""
    if not is_distributed():
        return data
    index = torch.tensor_split(torch.arange(len(data)), world_size())[rank()]
    if torch.is_tensor(data):
        return data[index]
    return Subset(data, index.tolist())


# -- training ------------------------------------------------------------------------------------
def local_batch_size(global_batch: int, accumulation_steps: int = 1, what: str = "train.batch_size") -> int:
    """Examples per process and micro-batch when ``global_batch`` examples make an optimizer step."""
    parts = world_size() * accumulation_steps
    if global_batch % parts:
        raise ConfigError(f"{what} ({global_batch}) is the batch of one optimizer step over all processes: it "
                          f"must be divisible by processes x train.accumulation_steps = {world_size()} x "
                          f"{accumulation_steps}")
    return global_batch // parts


def train_loader(dataset: Dataset, batch_size: int, seed: int, workers: int = 0, collate_fn: Any = None,
                 drop_last: bool = False) -> DataLoader:
    """This rank's shard of ``dataset``, reshuffled every epoch (:func:`set_epoch`) from ``seed``.

    DistributedSampler pads the last shard with a few repeated examples (fewer than W) so that
    every rank runs the same number of equal-sized steps; ``drop_last`` drops each shard's last
    partial batch (the same on every rank: the shards are of equal size).
    """
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      persistent_workers=workers > 0, collate_fn=collate_fn,
                      pin_memory=torch.cuda.is_available())


def set_epoch(loader: Any, epoch: int) -> None:
    """A new permutation for epoch ``epoch`` (the same on every rank)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


class _MethodCall(nn.Module):
    """Lets DDP's forward run any method of the module (``ddp("encode_images", x)``).

    DDP readies its gradient all-reduce in its forward; code that calls the model's methods
    directly (``encode_image``) would bypass it. Once this forward has run in an iteration,
    further direct calls are fine: every use of a parameter adds into the one gradient that
    DDP reduces.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module, method)(*args, **kwargs)


def wrap(module: nn.Module, device: torch.device | str) -> Optional[nn.parallel.DistributedDataParallel]:
    """``module`` in DistributedDataParallel (None in a plain process). Every trainable parameter
    must get a gradient in every step (no unused parameters): true of all our strategies."""
    if not is_distributed():
        return None
    device = torch.device(device)
    return nn.parallel.DistributedDataParallel(_MethodCall(module),
                                               device_ids=[device] if device.type == "cuda" else None)


@contextlib.contextmanager
def sync_gradients(ddp: Optional[nn.parallel.DistributedDataParallel], sync: bool) -> Iterator[None]:
    """Around a micro-batch's forward: all-reduce its gradients only if ``sync`` (the last
    micro-batch of an accumulated step); otherwise they accumulate locally (DDP's ``no_sync``)."""
    if ddp is None or sync:
        yield
    else:
        with ddp.no_sync():
            yield


# -- what other ranks log ----------------------------------------------------------------------
class SilentLogger:
    """Stands in for the MLflow logger on ranks other than 0: knows the run id, logs nothing."""

    def __init__(self, run_id: Optional[str]) -> None:
        self.run_id = run_id

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None

