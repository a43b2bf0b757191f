"""Finding prompts whose greedy continuation has no numerical near-tie.

A near-tie (two top logits, two MoE group scores or two expert scores closer than ~1e-5) can
flip under any change of float summation order, for example another batch composition, in any
engine. Token-for-token comparisons use prompts without one, so a mismatch is a real bug."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from engine.model.layers.mlp import MoEBlock
from engine.model.ling import LingModel

# Paths differ by ~1e-6 in fp32 (see tests/unit/test_model_paths.py); these leave 10x room.
LOGIT_MARGIN = 1e-4
ROUTING_MARGIN = 1e-5


def _routing_gaps(block: MoEBlock, x: torch.Tensor) -> torch.Tensor:
    """Per token, the smaller of the group-selection gap and the expert-selection gap."""
    c = block.cfg
    sel = torch.sigmoid(F.linear(x.float(), block.router)) + block.expert_bias
    groups = sel.view(-1, c.n_group, c.num_experts // c.n_group).topk(2, dim=-1).values.sum(-1)
    g = groups.sort(dim=-1, descending=True).values
    group_gap = (
        g[:, c.topk_group - 1] - g[:, c.topk_group]
        if c.topk_group < c.n_group
        else torch.full_like(g[:, 0], 1.0)
    )
    keep = groups.topk(c.topk_group, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    eligible = sel.masked_fill(
        ~mask.repeat_interleave(c.num_experts // c.n_group, dim=1), float("-inf")
    )
    e = eligible.sort(dim=-1, descending=True).values
    k = c.num_experts_per_tok
    expert_gap = e[:, k - 1] - e[:, k]
    return torch.minimum(group_gap, expert_gap)


@contextmanager
def _record_routing(gaps: list[torch.Tensor]) -> Iterator[None]:
    original = MoEBlock.route

    def recording(self: MoEBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gaps.append(_routing_gaps(self, x))
        return original(self, x)

    MoEBlock.route = recording  # type: ignore[method-assign]
    try:
        yield
    finally:
        MoEBlock.route = original  # type: ignore[method-assign]


def greedy_without_ties(model: LingModel, prompt: list[int], steps: int) -> list[int] | None:
    """The greedy continuation by the full forward, or None if any step has a near-tie."""
    seq = list(prompt)
    for _ in range(steps):
        gaps: list[torch.Tensor] = []
        with _record_routing(gaps):
            logits = model.forward_full(seq)[0][-1]
        top2 = logits.topk(2).values
        close_logits = float(top2[0] - top2[1]) < LOGIT_MARGIN
        if close_logits or min(float(g.min()) for g in gaps) < ROUTING_MARGIN:
            return None
        seq.append(int(logits.argmax()))
    return seq[len(prompt) :]


def tie_free_prompts(
    model: LingModel, lengths: list[int], steps: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    """(prompt, greedy continuation) pairs, one per requested length, skipping drawn prompts
    whose continuation has a near-tie."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        for _ in range(50):
            prompt = torch.randint(0, model.cfg.vocab_size - 20, (n,), generator=gen).tolist()
            cont = greedy_without_ties(model, prompt, steps)
            if cont is not None:
                out.append((prompt, cont))
                break
        else:
            raise RuntimeError(f"no tie-free prompt of length {n} in 50 draws")
    return out
