"""When a request stops: one rule for the offline engine and the decode worker.

Stop tokens are the request's stop_token_ids plus the model's eos ids (unless ignore_eos); none
of them may be sampled before min_tokens tokens exist. A stop token or a completed stop string
ends the request with "stop"; max_tokens or a full context with "length"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from engine.sampling import SamplingParams

STOP, LENGTH = "stop", "length"


@dataclass(frozen=True)
class StopRule:
    params: SamplingParams
    eos_ids: tuple[int, ...]
    max_context: int

    @property
    def stop_tokens(self) -> frozenset[int]:
        eos = () if self.params.ignore_eos else self.eos_ids
        return frozenset((*self.params.stop_token_ids, *eos))

    def banned(self, generated: int) -> tuple[int, ...]:
        """Token ids that may not be sampled when `generated` tokens exist."""
        return tuple(self.stop_tokens) if generated < self.params.min_tokens else ()

    def finish_reason(
        self,
        generated: int,
        token: int,
        context_len: int,
        stop_string: Callable[[int], bool] | None = None,
    ) -> str | None:
        """After the `generated`-th token `token`, with `context_len` tokens cached before it."""
        hit_stop_token = generated > self.params.min_tokens and token in self.stop_tokens
        if hit_stop_token or (stop_string is not None and stop_string(token)):
            return STOP
        if generated >= self.params.max_tokens or context_len + 1 >= self.max_context:
            return LENGTH
        return None
