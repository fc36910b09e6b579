"""Data-parallel training under ``torchrun`` (one process per core/GPU, one or several machines).

``torchrun --nproc-per-node N privsplit train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` then joins the process group (``gloo`` on CPU, ``nccl`` when every process has a GPU).
Without those variables everything here is a no-op and training runs in one process as before.

How a step stays equal to the one-process step (same global batch, same seed):

* every process draws the *same* global batch order and augmentation from the same seeded generator
  (augmenting a whole batch is cheap next to the network), then keeps rows ``rank::world``;
* each process scales its shard's mean loss by ``shard * world / batch``, and the gradients are
  averaged over processes (:func:`average_gradients`), so the update is that of the global-batch mean
  loss; BatchNorm buffers are broadcast from rank 0 after every step (as DDP does by default).

Gradients are averaged explicitly (one bucketed ``all_reduce`` per step, the same arithmetic as
``DistributedDataParallel``) rather than through DDP's forward hook, because our losses reach into the
model's halves (the Siamese loss reads the split features from the extractor directly), which a
``DistributedDataParallel`` wrapper would not see.

Not equal, by nature: BatchNorm normalises each *shard* with its own batch statistics (CPU has no
SyncBatchNorm), and dropout masks come from each process's RNG; with ``batch_norm=False`` and no
dropout the runs agree to float rounding (tests/test_distributed.py). Only rank 0 writes files.
"""
from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["setup", "world", "rank", "is_main", "barrier", "shard", "average_gradients", "broadcast_module",
           "shard_weight", "all_sum", "main_first"]


def world() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that writes files and shows progress (rank 0, or the only process)."""
    return rank() == 0


def setup(*, timeout_minutes: float = 180) -> bool:
    """Join the process group when launched by ``torchrun``; returns True when distributed.

    The long timeout covers rank 0 computing a teacher's descriptors while the others wait.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def barrier() -> None:
    if world() > 1:
        dist.barrier()


def shard(rows: Tensor) -> Tensor:
    """This process's rows of a global batch (``rank::world``)."""
    return rows[rank()::world()] if world() > 1 else rows


def shard_weight(shard_size: int, batch_size: int) -> float:
    """Factor on a shard's mean loss so the averaged gradient is that of the global-batch mean."""
    return shard_size * world() / batch_size if world() > 1 else 1.0


def average_gradients(params: list[nn.Parameter]) -> None:
    """All-reduce (mean) the gradients of ``params`` in one flat bucket; missing grads count as zero."""
    if world() <= 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def broadcast_module(module: nn.Module, *, buffers_only: bool = False) -> None:
    """Copy rank 0's parameters (unless ``buffers_only``) and buffers to every process."""
    if world() <= 1:
        return
    with torch.no_grad():
        tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
        for t in tensors:
            if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
                dist.broadcast(t.data, src=0)


def all_sum(values: list[float]) -> list[float]:
    """Sum of each value over processes (the values themselves when not distributed)."""
    if world() <= 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the others (which then read what rank 0 cached)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
