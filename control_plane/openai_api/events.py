"""The per-token events the response builders consume, and adapters from what the engine and
the decode worker produce (engine.sampling.SampledToken, duet.v1 TokenEvent)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class TokenEvent:
    """One generated token; `finish_reason` ("stop" | "length") is set on the last one.
    `top_logprobs` holds (token id, logprob) pairs, best first."""

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()
    finish_reason: str | None = None
    cached_tokens: int = 0  # prompt tokens served from the prefix cache, once known

    def __post_init__(self) -> None:
        if self.finish_reason is not None and self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason must be one of {FINISH_REASONS}")


def from_sampled(sampled: Any, finish_reason: str | None = None) -> TokenEvent:
    """From engine.sampling.SampledToken (token, logprob, top)."""
    top = tuple((int(t), float(lp)) for t, lp in sampled.top)
    return TokenEvent(int(sampled.token), float(sampled.logprob), top, finish_reason)


def from_worker_event(event: Any) -> TokenEvent:
    """From a duet.v1 TokenEvent (token_id, logprob, top_logprobs, finish_reason "" or a
    reason). A "preempted" event must be handled (migrated) before it gets here."""
    top = tuple((int(e.token_id), float(e.logprob)) for e in event.top_logprobs)
    return TokenEvent(
        int(event.token_id),
        float(event.logprob),
        top,
        event.finish_reason or None,
        int(getattr(event, "cached_tokens", 0)),
    )
