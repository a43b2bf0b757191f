"""Per-request sampling: greedy, temperature, top-k, top-p, seeded generators, logprobs.

Logprobs are those of the model's own distribution (log-softmax of the raw logits), whatever
the sampling parameters; the chosen token's logprob is reported alongside the top-N.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

MAX_TOP_LOGPROBS = 20


class SamplingError(ValueError):
    """Sampling parameters out of range."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # None = no logprobs; N >= 0 = chosen + top-N

    def __post_init__(self) -> None:
        checks = [
            (self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0, got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens must be in [0, max_tokens]"),
            (
                self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
                f"logprobs must be in [0, {MAX_TOP_LOGPROBS}]",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SamplingError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class SampledToken:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class Sampler:
    """One per request; the seeded generator makes a request reproducible on its own, whatever
    else is in the batch."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.generator = torch.Generator()
        if params.seed is not None:
            self.generator.manual_seed(params.seed)
        else:
            self.generator.seed()

    def _filtered_probs(self, logits: Tensor) -> Tensor:
        p = self.params
        scaled = logits / p.temperature
        if p.top_k > 0 and p.top_k < scaled.numel():
            kth = torch.topk(scaled, p.top_k).values[-1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        probs = torch.softmax(scaled, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            before = sorted_probs.cumsum(0) - sorted_probs
            sorted_probs[before >= p.top_p] = 0.0  # keep the smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return probs / probs.sum()

    def sample(self, logits: Tensor, banned: tuple[int, ...] = ()) -> SampledToken:
        """Pick a token from logits [V] (fp32 on CPU); `banned` ids are never chosen
        (e.g. eos before min_tokens)."""
        logits = logits.float().cpu()
        logprobs = torch.log_softmax(logits, dim=-1)
        choice_logits = logits.clone()
        if banned:
            choice_logits[list(banned)] = float("-inf")
        if self.params.greedy:
            token = int(torch.argmax(choice_logits))
        else:
            probs = self._filtered_probs(choice_logits)
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        top: list[tuple[int, float]] = []
        if self.params.logprobs:
            values, ids = torch.topk(logprobs, self.params.logprobs)
            top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
        return SampledToken(token=token, logprob=float(logprobs[token]), top=top)
