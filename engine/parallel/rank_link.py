"""The leader's hold on its follower ranks: one pipe each for commands, their processes, and a
watcher that reports a rank's death at once (a group missing a rank cannot compute anything).

Commands are small picklable tuples `(op, payload)`; tensors never go through the pipes, only
through the process group's collectives, which the command announces.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

READY, FAILED, STOP = "ready", "failed", "stop"


class RankLost(RuntimeError):
    """A follower rank exited or could not start."""


class RankLink:
    def __init__(self, procs: list[BaseProcess], conns: list[Connection]) -> None:
        self.procs, self.conns = procs, conns
        self._lock = threading.Lock()
        self._closed = False

    def send(self, op: str, payload: Any = None) -> None:
        """Announce the next collective step to every follower (the caller then joins it)."""
        with self._lock:
            for rank, conn in enumerate(self.conns, 1):
                try:
                    conn.send((op, payload))
                except OSError as exc:
                    raise RankLost(f"tensor-parallel rank {rank} is gone: {exc}") from exc

    def wait_ready(self, timeout_s: float) -> None:
        """Until every follower has loaded its shard; a failure or exit raises RankLost."""
        deadline = time.monotonic() + timeout_s
        pending = dict(enumerate(self.conns, 1))
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RankLost(f"ranks {sorted(pending)} not ready after {timeout_s:.0f} s")
            wait([*pending.values(), *(self.procs[r - 1].sentinel for r in pending)], left)
            for rank, conn in list(pending.items()):
                if conn.poll():
                    kind, detail = conn.recv()
                    if kind != READY:
                        raise RankLost(f"tensor-parallel rank {rank} failed to start: {detail}")
                    pending.pop(rank)
                elif not self.procs[rank - 1].is_alive():
                    code = self.procs[rank - 1].exitcode
                    raise RankLost(f"tensor-parallel rank {rank} exited with {code} at start")

    def watch(self, on_lost: Callable[[str], None]) -> None:
        """Call `on_lost(reason)` once, from a daemon thread, when a follower exits unasked."""

        def run() -> None:
            sentinels = {p.sentinel: r for r, p in enumerate(self.procs, 1)}
            done = wait(list(sentinels))
            if self._closed:
                return
            rank = sentinels[done[0]]  # type: ignore[index]
            code = self.procs[rank - 1].exitcode
            on_lost(f"tensor-parallel rank {rank} exited with {code}")

        threading.Thread(target=run, name="duet-tp-watch", daemon=True).start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the followers: ask, wait up to `timeout_s`, then kill."""
        self._closed = True
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send((STOP, None))
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("tensor-parallel rank %s did not stop; killing it", proc.name)
                proc.kill()
                proc.join(5.0)
        for conn in self.conns:
            conn.close()
