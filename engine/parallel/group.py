"""The collectives a tensor-parallel forward needs, behind one small interface.

`SingleRank` is the world of one (every call is the identity); `DistGroup` runs them over
torch.distributed (gloo on the CPU, NCCL on CUDA). Every collective has a deadline: the
process group's timeout, after which the call raises instead of hanging.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

LEADER = 0


class SingleRank:
    rank, world = LEADER, 1

    @property
    def is_leader(self) -> bool:
        return True

    def all_reduce(self, t: Tensor) -> Tensor:
        return t

    def gather_heads(self, local: Tensor, dim: int) -> Tensor | None:
        return local

    def scatter_heads(self, full: Tensor | None, out: Tensor, dim: int) -> None:
        if full is not None and full.data_ptr() != out.data_ptr():
            out.copy_(full)

    def broadcast(self, t: Tensor) -> None:
        return None


class DistGroup(SingleRank):
    """This process's rank in an initialised default process group."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    @property
    def is_leader(self) -> bool:
        return self.rank == LEADER

    def all_reduce(self, t: Tensor) -> Tensor:
        dist.all_reduce(t)
        return t

    def gather_heads(self, local: Tensor, dim: int) -> Tensor | None:
        """On the leader: every rank's `local` concatenated along `dim` (rank order); else None."""
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.world)] if self.is_leader else None
        dist.gather(local, parts, dst=LEADER)
        return torch.cat(parts, dim=dim) if parts is not None else None

    def scatter_heads(self, full: Tensor | None, out: Tensor, dim: int) -> None:
        """Rank r's `out` receives slice r of the leader's `full` along `dim`."""
        parts = None
        if self.is_leader:
            assert full is not None
            parts = [p.contiguous() for p in full.chunk(self.world, dim=dim)]
        recv = torch.empty_like(out, memory_format=torch.contiguous_format)
        dist.scatter(recv, parts, src=LEADER)
        out.copy_(recv)

    def broadcast(self, t: Tensor) -> None:
        """The leader's `t` into every rank's `t` (same shape and dtype everywhere)."""
        if t.is_contiguous():
            dist.broadcast(t, src=LEADER)
            return
        buf = t.contiguous()
        dist.broadcast(buf, src=LEADER)
        t.copy_(buf)


def leader_store(world: int, timeout_s: float) -> dist.TCPStore:
    """The rendezvous store on a free loopback port (read it back from `.port`)."""
    return dist.TCPStore(
        "127.0.0.1", 0, world, True, timeout=timedelta(seconds=timeout_s), wait_for_workers=False
    )


def follower_store(port: int, world: int, timeout_s: float) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, world, False, timeout=timedelta(seconds=timeout_s))


def init_dist_group(
    rank: int, world: int, store: dist.Store, device: str, timeout_s: float
) -> DistGroup:
    """Join the process group (gloo for the CPU, NCCL for CUDA) with a collective deadline."""
    backend = "nccl" if device.startswith("cuda") else "gloo"
    dist.init_process_group(
        backend, store=store, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
    )
    return DistGroup(rank, world)


TPGroup = SingleRank
SINGLE = SingleRank()
