"""One request on a decode worker, from reservation to its last token."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.runner import SeqCache
from engine.sampling import SampledToken, Sampler, SamplingParams


class Draining(RuntimeError):
    """The worker is shutting down and takes no new work."""


class Phase(enum.Enum):
    RESERVED = "reserved"  # pages + slot held under a transfer lease
    COMMITTED = "committed"  # caches verified; waiting for the step loop to admit it
    RUNNING = "running"  # in the decode batch
    FINISHED = "finished"  # pages and slot released


@dataclass(frozen=True)
class TokenOut:
    sampled: SampledToken
    finish_reason: str | None  # None while running; stop | length | preempted


@dataclass(frozen=True)
class Failure:
    code: str  # a grpc.StatusCode name
    message: str


@dataclass(frozen=True)
class Preempted:
    """Pages ran out: the request must be re-prefilled with prompt + tokens so far."""


Event = TokenOut | Failure | Preempted
Sink = Callable[[Event], None]


@dataclass
class DecodeRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    seq: SeqCache
    hidden: torch.Tensor  # destination of the transferred last-token hidden state
    sampler: Sampler
    phase: Phase = Phase.RESERVED
    generated: list[int] = field(default_factory=list)
    local_prefill: bool = False  # prefilled here by the step loop, no transfer
    done: bool = False  # its last TokenOut (with a finish reason) was emitted
    abort_requested: bool = False
    backlog: list[Event] = field(default_factory=list)  # events before a stream attaches
    sink: Sink | None = None
    stop_check: Callable[[int], bool] | None = None

    def emit(self, event: Event) -> None:
        if self.sink is None:
            self.backlog.append(event)
        else:
            self.sink(event)

    def attach(self, sink: Sink) -> None:
        self.sink = sink
        for event in self.backlog:
            sink(event)
        self.backlog.clear()
