"""Offline generation over the model runner: prefill a batch of prompts, then decode them
together until each stops. Every sequence's pages and slot are freed on every exit path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from engine.model.ling import LingModel
from engine.parallel.rank_link import RankLink
from engine.runner import ModelRunner, PrefillItem, SeqCache
from engine.sampling import SampledToken, Sampler, SamplingParams
from engine.stopping import LENGTH, STOP, StopRule

FINISH_STOP, FINISH_LENGTH = STOP, LENGTH


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    # Called with each new token id; True means a stop string completed (text-level stop).
    stop_check: Callable[[int], bool] | None = None


@dataclass(frozen=True)
class StepOutput:
    request: int  # index into the generate() request list
    sampled: SampledToken
    finish_reason: str | None  # None while the request is still running


@dataclass
class _Running:
    index: int
    request: GenerationRequest
    sampler: Sampler
    seq: SeqCache
    generated: list[int] = field(default_factory=list)


class OfflineEngine:
    def __init__(
        self,
        model: LingModel,
        eos_ids: tuple[int, ...] = (),
        page_size: int = 16,
        num_pages: int = 1024,
        num_slots: int = 64,
        prefill_chunk: int = 512,
        ranks: RankLink | None = None,
    ) -> None:
        self.runner = ModelRunner(model, num_pages, page_size, num_slots, ranks=ranks)
        self.eos_ids = eos_ids or model.cfg.eos_token_ids
        self.prefill_chunk = prefill_chunk
        self.max_len = model.cfg.max_position_embeddings

    def _rule(self, run: _Running) -> StopRule:
        return StopRule(run.request.params, self.eos_ids, self.max_len)

    def _emit(self, run: _Running, logits_row) -> StepOutput:  # type: ignore[no-untyped-def]
        rule = self._rule(run)
        sampled = run.sampler.sample(logits_row, rule.banned(len(run.generated)))
        run.generated.append(sampled.token)
        n = len(run.generated)
        reason = rule.finish_reason(n, sampled.token, run.seq.length, run.request.stop_check)
        return StepOutput(run.index, sampled, reason)

    def _start(self, requests: list[GenerationRequest], running: list[_Running]) -> None:
        """Allocates each request's cache into `running` (so the caller frees it on failure)."""
        for i, req in enumerate(requests):
            if not req.prompt_ids:
                raise ValueError(f"request {i}: empty prompt")
            if len(req.prompt_ids) >= self.max_len:
                n = len(req.prompt_ids)
                raise ValueError(
                    f"request {i}: prompt of {n} tokens exceeds the context {self.max_len}"
                )
            capacity = min(len(req.prompt_ids) + req.params.max_tokens, self.max_len)
            seq = self.runner.new_sequence(capacity)
            running.append(_Running(i, req, Sampler(req.params), seq))

    def generate(self, requests: list[GenerationRequest]) -> Iterator[StepOutput]:
        """Yields one StepOutput per generated token, in step order."""
        running: list[_Running] = []
        try:
            self._start(requests, running)
            items = [PrefillItem(r.seq, r.request.prompt_ids) for r in running]
            logits = self.runner.prefill_chunked(items, self.prefill_chunk).logits
            outputs = [self._emit(r, logits[b]) for b, r in enumerate(running)]
            while outputs:
                yield from outputs
                live = [r for r, o in zip(running, outputs, strict=True) if o.finish_reason is None]
                for r, o in zip(running, outputs, strict=True):
                    if o.finish_reason is not None:
                        self.runner.release(r.seq)
                running = live
                if not running:
                    break
                logits = self.runner.decode(
                    [r.seq for r in running], [r.generated[-1] for r in running]
                )
                outputs = [self._emit(r, logits[b]) for b, r in enumerate(running)]
        finally:
            for r in running:
                self.runner.release(r.seq)
