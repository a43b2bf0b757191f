"""What the prefill engine queues and returns: jobs, their results, resume points."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from engine.transfer.base import TransferDescriptor
from prefill_worker.outbound import Outbound


@dataclass(frozen=True)
class PrefillResult:
    prompt_tokens: int
    computed_tokens: int
    transfer_bytes: int
    compute_s: float
    transfer_s: float


@dataclass(frozen=True)
class CachedPrefix:
    """A resume point for a prompt: the latents of its first n tokens ([mla_layers, n, W]) and
    the Lightning state after them ([linear_layers, H, D, D] fp32), e.g. from the prefix cache."""

    latents: torch.Tensor
    state: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.latents.shape[1])


@dataclass
class PrefillJob:
    request_id: str
    prompt_ids: list[int]
    destination: TransferDescriptor
    deadline: float  # time.monotonic()
    prefix: CachedPrefix | None = None
    result: Future[PrefillResult] = field(default_factory=Future)
    outbound: Outbound | None = None
    aborted: bool = False
    cached_tokens: int = 0  # prompt tokens not computed (explicit prefix or a cache hit)


class Draining(RuntimeError):
    """The worker is shutting down and takes no new work."""
