"""Bounded waits on GPU work for the device backends (cuda_ipc, nccl).

Nothing here blocks in the CUDA driver: completion is polled through an event with a deadline,
so a copy or an NCCL operation whose peer vanished turns into DeadlineExceeded instead of a
frozen thread. The caller decides what a timeout means (the nccl backend aborts its
communicator; see nccl_comm.py).
"""

from __future__ import annotations

import time

import torch

from engine.transfer.base import DeadlineExceeded
from engine.transfer.framing import Deadline

_FIRST_PAUSE_S = 20e-6
_LONGEST_PAUSE_S = 2e-3


def wait_stream(stream: torch.cuda.Stream, deadline: Deadline, what: str) -> None:
    """Return once everything queued on `stream` so far has finished; DeadlineExceeded if the
    deadline passes first (the work may still be running then)."""
    event = torch.cuda.Event()
    event.record(stream)
    pause = _FIRST_PAUSE_S
    while not event.query():
        if deadline.expired():
            raise DeadlineExceeded(f"{what}: the GPU work did not finish before the deadline")
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE_S)


def follow_current(stream: torch.cuda.Stream, device: torch.device) -> None:
    """Make `stream` wait for the work already queued on this thread's current stream of
    `device`: tensors handed to a sender are ready there (the default stream, unless the caller
    chose another), and a side stream would otherwise race with their producer."""
    stream.wait_stream(torch.cuda.current_stream(device))
