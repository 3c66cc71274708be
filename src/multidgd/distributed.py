"""Data-parallel training with ``torch.distributed`` (launched with ``torchrun``).

Every process holds the whole decoder and mixtures; the per-cell representation tables are
sharded: training (and validation) cell ``i`` of the table belongs to process ``i % world``,
which alone holds and updates its row. All processes draw the same minibatches (same seed);
each computes the loss of the cells it owns, the decoder and mixture gradients are summed
over processes with one all-reduce per step, and every process then takes the same
optimiser step. The result is the single-process computation of the same minibatches, up to
the order of floating-point sums. Checkpoints and the saved model hold whole tables, so a
run can be resumed with any number of processes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .representation import RepresentationTable

__all__ = [
    "DistContext",
    "current",
    "init_from_env",
    "is_main",
    "all_reduce_grads",
    "all_reduce_sums",
    "gather_table",
    "shard_table",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """The place of the current process in a distributed run."""

    rank: int
    world: int

    def owned(self, n: int) -> np.ndarray:
        """Table positions (of ``n``) this process owns."""
        return np.arange(self.rank, n, self.world)

    def mine(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Of global table ``positions``, those owned here and their rows in the local shard."""
        keep = positions[positions % self.world == self.rank]
        return keep, keep // self.world


def current() -> DistContext | None:
    """The context of an initialised process group of more than one process, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return DistContext(dist.get_rank(), dist.get_world_size())
    return None


def is_main() -> bool:
    """True unless this is a process other than rank 0 of a distributed run."""
    ctx = current()
    return ctx is None or ctx.rank == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment, if any.

    ``gloo`` on CPU, ``nccl`` on CUDA (each process on GPU ``LOCAL_RANK``). Returns the
    device this process trains on. Without ``WORLD_SIZE`` > 1 nothing happens.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        logger.info("process %d of %d (%s) on %s", dist.get_rank(), world, backend, device)
    return device


def _buffers(table: RepresentationTable) -> dict[str, torch.Tensor]:
    return {"values": table.values, "exp_avg": table.exp_avg, "exp_avg_sq": table.exp_avg_sq, "steps": table.steps}


def shard_table(table: RepresentationTable, ctx: DistContext) -> RepresentationTable:
    """The current process's rows of a whole table, with their Adam state."""
    idx = torch.from_numpy(ctx.owned(table.n)).to(table.values.device)
    local = RepresentationTable(table.values[idx])
    for name, buf in _buffers(local).items():
        buf.copy_(_buffers(table)[name][idx])
    return local


def gather_table(local: RepresentationTable, n: int, ctx: DistContext) -> RepresentationTable:
    """The whole table (on every process) from each process's shard of an ``n``-row table."""
    per = -(-n // ctx.world)  # rows of the largest shard
    whole = RepresentationTable(torch.zeros(n, local.dim, device=local.values.device))
    for name, buf in _buffers(local).items():
        padded = torch.zeros((per, *buf.shape[1:]), dtype=buf.dtype, device=buf.device)
        padded[: buf.shape[0]] = buf
        parts = [torch.empty_like(padded) for _ in range(ctx.world)]
        dist.all_gather(parts, padded)
        target = _buffers(whole)[name]
        for r, part in enumerate(parts):
            rows = np.arange(r, n, ctx.world)
            target[torch.from_numpy(rows).to(target.device)] = part[: len(rows)]
    return whole


def all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``params`` over processes, in one flat buffer (missing: zero)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum a dict of floats over processes (a key missing on a process counts as 0)."""
    every: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(every, sorted(values))
    keys = sorted(set().union(*every))
    values = {k: values.get(k, 0.0) for k in keys}
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist(), strict=True))
