"""MoE routing equals a direct per-token evaluation of the rule in the model spec."""

from __future__ import annotations

import math

import torch

from kernels.moe_ref import fused_moe_ref, moe_route_ref, swiglu_mlp_ref


def _route_one_token(
    logits: list[float], bias: list[float], n_group: int, topk_group: int, top_k: int, scale: float
) -> dict[int, float]:
    """The spec's rule, written out with Python lists for one token."""
    s = [1 / (1 + math.exp(-x)) for x in logits]
    sel = [a + b for a, b in zip(s, bias, strict=True)]
    size = len(s) // n_group
    group_score = []
    for grp in range(n_group):
        members = sorted(sel[grp * size : (grp + 1) * size], reverse=True)
        group_score.append(sum(members[:2]))
    kept = sorted(range(n_group), key=lambda grp: group_score[grp], reverse=True)[:topk_group]
    eligible = [e for e in range(len(s)) if e // size in kept]
    chosen = sorted(eligible, key=lambda e: sel[e], reverse=True)[:top_k]
    total = sum(s[e] for e in chosen)
    return {e: s[e] / total * scale for e in chosen}


def test_route_matches_rule_per_token() -> None:
    gen = torch.Generator().manual_seed(0)
    T, E = 64, 16
    logits = torch.randn(T, E, generator=gen) * 2
    bias = torch.randn(E, generator=gen) * 0.3
    weights, ids = moe_route_ref(logits, bias, 4, 2, 4, True, 2.5)
    for t in range(T):
        want = _route_one_token(logits[t].tolist(), bias.tolist(), 4, 2, 4, 2.5)
        got = {int(e): float(w) for e, w in zip(ids[t], weights[t], strict=True)}
        assert got.keys() == want.keys()
        for e in want:
            assert abs(got[e] - want[e]) < 1e-5


def test_bias_changes_selection_but_not_weights_rule() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0, -4.0]])
    no_bias = torch.zeros(8)
    _, ids_plain = moe_route_ref(logits, no_bias, 1, 1, 2, True, 1.0)
    assert set(ids_plain[0].tolist()) == {0, 1}
    bias = torch.zeros(8)
    bias[7] = 5.0  # steers selection to expert 7 although its score is the lowest
    weights, ids = moe_route_ref(logits, bias, 1, 1, 2, True, 1.0)
    assert set(ids[0].tolist()) == {0, 7}
    s = torch.sigmoid(logits[0])
    expected = {0: float(s[0] / (s[0] + s[7])), 7: float(s[7] / (s[0] + s[7]))}
    for e, w in zip(ids[0].tolist(), weights[0].tolist(), strict=True):
        assert abs(w - expected[e]) < 1e-6  # weights use the unbiased score


def test_group_limit_excludes_experts_of_dropped_groups() -> None:
    # Group 0 holds the single best expert but a weak second; groups 1 and 2 have two good ones.
    logits = torch.tensor([[5.0, -5.0, 2.0, 2.0, 1.9, 1.9, -5.0, -5.0]])
    _, ids = moe_route_ref(logits, None, 4, 2, 2, True, 1.0)
    assert set(ids[0].tolist()) <= {2, 3, 4, 5}


def test_fused_moe_equals_per_token_expert_sum() -> None:
    gen = torch.Generator().manual_seed(1)
    T, Hd, inter, E = 9, 12, 6, 5
    x = torch.randn(T, Hd, generator=gen)
    w13, w2 = torch.randn(E, 2 * inter, Hd, generator=gen), torch.randn(E, Hd, inter, generator=gen)
    ids = torch.randint(0, E, (T, 2), generator=gen)
    weights = torch.rand(T, 2, generator=gen)
    y = fused_moe_ref(x, weights, ids, w13, w2)
    for t in range(T):
        want = sum(
            weights[t, k] * swiglu_mlp_ref(x[t], w13[ids[t, k]], w2[ids[t, k]]) for k in range(2)
        )
        assert torch.allclose(y[t], want, atol=1e-4)
