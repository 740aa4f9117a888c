"""Sum reduction of metric state over torch.distributed (DDP) ranks; torch is optional and imported lazily."""

from __future__ import annotations

from typing import Any

import numpy as np


def _torch_all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """Sum an int64/float64 vector over torch.distributed ranks; identity when not distributed."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # torch is optional: without it there is nothing to reduce over
        return values
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    tensor = torch.from_numpy(np.ascontiguousarray(values)).to(device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().numpy()


def _distributed_world() -> tuple[Any, int] | None:
    """The torch.distributed module and world size when a process group is up, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist, dist.get_world_size()
