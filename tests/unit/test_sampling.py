"""Sampling: greedy, seeds, top-k/top-p support, logprobs, bans."""

from __future__ import annotations

import pytest
import torch

from engine.sampling import Sampler, SamplingError, SamplingParams


def _logits(seed: int = 0, v: int = 50) -> torch.Tensor:
    return torch.randn(v, generator=torch.Generator().manual_seed(seed)) * 3


def test_greedy_is_argmax_with_logprobs() -> None:
    logits = _logits()
    out = Sampler(SamplingParams(temperature=0, logprobs=3)).sample(logits)
    lp = torch.log_softmax(logits, -1)
    assert out.token == int(logits.argmax())
    assert abs(out.logprob - float(lp.max())) < 1e-6
    assert [t for t, _ in out.top] == torch.topk(lp, 3).indices.tolist()


def test_seed_reproduces_and_differs() -> None:
    logits = _logits()

    def run(seed: int) -> list[int]:
        s = Sampler(SamplingParams(temperature=1.0, seed=seed))
        return [s.sample(logits).token for _ in range(30)]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_and_top_p_restrict_support() -> None:
    logits = _logits(1)
    top3 = set(torch.topk(logits, 3).indices.tolist())
    s = Sampler(SamplingParams(temperature=2.0, top_k=3, seed=0))
    assert {s.sample(logits).token for _ in range(200)} <= top3
    probs = torch.softmax(logits, -1)
    order = torch.argsort(probs, descending=True)
    nucleus = set(order[: int((probs[order].cumsum(0) < 0.5).sum()) + 1].tolist())
    s = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=0))
    assert {s.sample(logits).token for _ in range(200)} <= nucleus


def test_banned_tokens_are_never_chosen() -> None:
    logits = _logits(2)
    best = int(logits.argmax())
    out = Sampler(SamplingParams(temperature=0)).sample(logits, banned=(best,))
    assert out.token != best


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1},
        {"top_p": 0},
        {"top_p": 1.5},
        {"logprobs": 21},
        {"min_tokens": 99},
    ],
)
def test_bad_params_are_rejected(kwargs: dict) -> None:
    with pytest.raises(SamplingError):
        SamplingParams(**kwargs)
