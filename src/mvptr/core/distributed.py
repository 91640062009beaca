"""Several processes on one engine: torch.distributed, set up from torchrun's environment.

A plain run (no ``WORLD_SIZE`` in the environment, or 1) sets nothing up: every helper
here is then the identity, and no barrier or collective is ever called.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1


SINGLE = Dist()


def from_env(device: str = "cpu") -> Dist:
    """Join the process group torchrun describes (gloo on CPU, NCCL on CUDA); a no-op alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend)
    return Dist(rank, world, local_rank)


def local_device(device: str, d: Dist) -> str:
    """Each process of a CUDA run takes the GPU of its local rank."""
    return f"cuda:{d.local_rank}" if device == "cuda" and d.on else device


def active() -> Dist:
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return SINGLE


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``x`` along dim 0, in rank order, keeping the gradient.

    The backward pass sums what every rank sends back to each piece, so the gradient of a
    loss computed identically on all ranks reaches each rank's own inputs ``world`` times;
    averaging gradients across ranks then gives the single-process gradient.
    """
    if not active().on:
        return x
    with warnings.catch_warnings():  # its replacement is private API
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(dist_fn.all_gather(x), 0)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows when ranks hold different numbers of them (no gradient)."""
    d = active()
    if not d.on:
        return x
    n = torch.tensor([len(x)], device=x.device)
    sizes = [torch.empty_like(n) for _ in range(d.world)]
    dist.all_gather(sizes, n)
    width = int(max(s.item() for s in sizes))
    padded = torch.zeros((width, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)], 0)


def mean(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over ranks (for logging, and to agree on skipping a step)."""
    return total(x) / active().world


def shard(n: int, d: Dist | None = None) -> slice:
    """This rank's contiguous share of n items (the first ranks take one more when uneven)."""
    d = d or active()
    per, extra = divmod(n, d.world)
    start = d.rank * per + min(d.rank, extra)
    return slice(start, start + per + (d.rank < extra))


def barrier() -> None:
    if active().on:
        dist.barrier()


def total(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over ranks (counts of a sharded evaluation)."""
    if not active().on:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x
