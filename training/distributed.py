"""One-process / multi-process (torchrun, DistributedDataParallel) plumbing.

Everything else asks this module "am I rank 0?" so that logging, checkpoints and reports are written once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """Where this process runs: rank, world size and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | None = None, backend: str = "auto") -> DistContext:
    """Initialise torch.distributed from the torchrun environment (if present) and pick the device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        index = local_rank if world_size > 1 and dev.index is None else (dev.index or 0)
        torch.cuda.set_device(index)
        dev = torch.device("cuda", index)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("distributed: rank %d/%d on %s (%s)", rank, world_size, dev, backend)
    return DistContext(rank, world_size, local_rank, dev)


_group_torn_down = False  # set by process_group_scope() after a completed torchrun run; read by exit_worker()


@contextlib.contextmanager
def process_group_scope() -> Iterator[None]:
    """Around a command's work: tear the process group down afterwards, so that repeated runs in one process
    (tests) start clean.

    After a completed run all ranks first meet at a barrier: without it one rank can destroy its group (and exit)
    while another is still writing its last checkpoint or log line. After a failure there is no barrier (the
    other ranks may sit in a collective that will never match); the group is left to the process exit and
    torchrun stops the others.
    """
    global _group_torn_down
    yield  # an exception propagates from here and skips the teardown
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        _group_torn_down = True


def exit_worker(code: int = 0) -> int:
    """End a torchrun worker whose process group was torn down after a completed run, skipping finalisation.

    After training, torch keeps C++ references to the gloo process group past ``destroy_process_group`` (its
    Python object stays alive), so it is destroyed during interpreter shutdown, where gloo's worker threads can
    abort the process ("terminate called without an active exception", SIGABRT) after all the work was done and
    saved. Everything is on disk and the ranks have met at the last barrier, so the worker flushes its streams
    and log handlers and leaves with ``os._exit``. Outside torchrun (no group was ever created) it only returns
    ``code``, so in-process callers and tests are unaffected.
    """
    if not _group_torn_down:
        return code
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over ranks (in place, also returned); a no-op on one process."""
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel (for state dicts that load without 'module.' prefixes)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap(model: torch.nn.Module, ctx: DistContext, sync_bn: bool = False) -> torch.nn.Module:
    """DDP-wrap a trainable module when several ranks run (optionally with SyncBatchNorm first)."""
    if not ctx.distributed:
        return model
    if sync_bn and ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif sync_bn:
        log.warning("SyncBatchNorm needs CUDA; per-rank BatchNorm statistics on %s", ctx.device)
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
