"""Choosing a prefill and a decode worker for a request. Policies are pluggable: a policy
scores candidates (lower is better) and the router breaks ties by power of two choices."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.registry import Registry, WorkerEntry

Score = Callable[[WorkerEntry, int], float]


class NoWorker(RuntimeError):
    """No healthy worker of a role is available."""


class NoRoom(NoWorker):
    """Healthy workers exist, but none has room for the request right now (overload)."""


def prefill_cost(w: WorkerEntry, prompt_tokens: int) -> float:
    """Tokens this worker would still have to compute before this prompt is done
    (`prompt_tokens`: what is left of the prompt after the worker's cached prefix)."""
    return float(w.load.queued_tokens + w.inflight_tokens + prompt_tokens)


def decode_cost(w: WorkerEntry, prompt_tokens: int) -> float:
    """Prefer free slots and pages and a small batch; a worker without room scores infinity."""
    l = w.load  # noqa: E741
    pages_needed = prompt_tokens / 16 + 1
    free_slots = l.free_slots - w.inflight
    if free_slots <= 0 or l.free_pages < pages_needed:
        return float("inf")
    slot_use = 1 - free_slots / max(1, l.total_slots)
    page_use = 1 - l.free_pages / max(1, l.total_pages)
    return slot_use + page_use + 0.01 * (l.running_requests + w.inflight)


@dataclass
class Router:
    registry: Registry
    prefill_score: Score = prefill_cost
    decode_score: Score = decode_cost
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    # Conditional disaggregation: prompts of at most this many tokens prefill on the decode
    # worker (no transfer); 0 = always disaggregate.
    local_prefill_max_tokens: int = 0

    def _pick(
        self,
        role: str,
        score: Score,
        tokens: int,
        exclude: Sequence[str],
        cached: Mapping[str, int] | None = None,
    ) -> WorkerEntry:
        """`cached`: worker id -> prompt tokens that worker loads from its prefix cache."""
        cached = cached or {}
        candidates = [w for w in self.registry.healthy(role) if w.address not in exclude]
        scored = [(score(w, max(1, tokens - cached.get(w.worker_id, 0))), w) for w in candidates]
        if not scored:
            raise NoWorker(f"no healthy {role} worker")
        scored = [(s, w) for s, w in scored if s != float("inf")]
        if not scored:
            raise NoRoom(f"every {role} worker is full")
        if len(scored) == 1:
            return scored[0][1]
        a, b = self.rng.sample(scored, 2)  # power of two choices among the candidates
        best = min(scored, key=lambda sw: sw[0])
        # Take the global best when it is clearly better; otherwise the better of two random.
        two = a if a[0] <= b[0] else b
        return best[1] if best[0] < 0.5 * two[0] else two[1]

    def prefill_locally(self, prompt_tokens: int) -> bool:
        return prompt_tokens <= self.local_prefill_max_tokens

    def pick(
        self,
        prompt_tokens: int,
        exclude: Sequence[str] = (),
        cached: Mapping[str, int] | None = None,
    ) -> tuple[WorkerEntry | None, WorkerEntry]:
        """(prefill worker, decode worker); no prefill worker when the prompt prefills locally.
        `cached` (prefix index lookup) lowers a prefill worker's cost by what it need not
        compute."""
        d = self._pick("decode", self.decode_score, prompt_tokens, exclude)
        if self.prefill_locally(prompt_tokens):
            return None, d
        p = self._pick("prefill", self.prefill_score, prompt_tokens, exclude, cached)
        return p, d
