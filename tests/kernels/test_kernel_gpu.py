"""The Triton kernels at Ling-2.6-flash sizes in bf16 on a GPU, against the twins.

32 heads of 128 (Lightning), kv_lora 512 + rope 64 (MLA), 256 experts top-8 4096 -> 1024.
Marked `gpu`; skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, offsets, poisoned

from kernels import lightning_ref, mla_ref, moe_ref, norm_ref

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

BF16, H, D = torch.bfloat16, 32, 128


def _bf16(*shape: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device="cuda") * scale).to(BF16)


def test_lightning_prefill_real_sizes() -> None:
    from kernels.lightning_prefill import lightning_prefill

    lengths = [1, 100, 4096, 700]
    T, B = sum(lengths), len(lengths)
    q, k, v = (_bf16(T, H, D, scale=0.1) for _ in range(3))
    g = -torch.rand(H, device="cuda") * 0.1
    states = torch.randn(B + 1, H, D, D, device="cuda") * 0.01
    slots = torch.tensor([0, -1, 2, 3], device="cuda")
    ends = torch.tensor([1, 101 + 64, 101 + 4096, T], device="cuda")
    snaps, ref_snaps = poisoned((4, H, D, D), torch.float32, "cuda"), torch.zeros(4, H, D, D,
                                                                                 device="cuda")
    ref_states = states.clone()
    cu = offsets(lengths, "cuda")
    o = lightning_prefill(q, k, v, g, cu, states, slots, slots, 64, ends, snaps)
    ref = lightning_ref.lightning_prefill_ref(q, k, v, g, cu, ref_states, slots, slots, 64,
                                              ends, ref_snaps)
    assert_close(o, ref, BF16, "output")
    assert_close(states, ref_states, BF16, "states")
    assert_close(snaps, ref_snaps, BF16, "snapshots")


def test_lightning_decode_real_sizes() -> None:
    from kernels.lightning_decode import lightning_decode

    B = 64
    q, k, v = (_bf16(B, H, D) for _ in range(3))
    g = -torch.rand(H, device="cuda") * 0.1
    states = torch.randn(B + 8, H, D, D, device="cuda")
    slots = torch.randperm(B + 8, device="cuda")[:B]
    slots[::7] = -1
    ref_states = states.clone()
    o = lightning_decode(q, k, v, g, states, slots)
    assert_close(o, lightning_ref.lightning_decode_ref(q, k, v, g, ref_states, slots), BF16)
    assert_close(states, ref_states, torch.float32, "states")


def test_mla_decode_real_sizes() -> None:
    from kernels.mla_decode import mla_decode

    R, P, page = 512, 64, 64
    context = [0, 1, 8000, 300, 64, 2049] * 4
    B, blocks = len(context), 8000 // page + 1
    kv = _bf16(B * blocks, page, R + P)
    tables = torch.randperm(B * blocks, device="cuda").to(torch.int32).view(B, blocks)
    ctx = torch.tensor(context, device="cuda", dtype=torch.int32)
    ql, qp = _bf16(B, H, R), _bf16(B, H, P)
    o = mla_decode(ql, qp, kv, tables, ctx, 192 ** -0.5)
    assert_close(o, mla_ref.mla_decode_ref(ql, qp, kv, tables, ctx, 192 ** -0.5), BF16)


def test_mla_extend_real_sizes() -> None:
    from kernels.mla_extend import mla_extend

    q_lens, kv_lens = [1, 300, 77], [1000, 300, 2000]
    q = _bf16(sum(q_lens), H, 192)
    k, v = _bf16(sum(kv_lens), H, 192), _bf16(sum(kv_lens), H, 128)
    cu_q, cu_kv = offsets(q_lens, "cuda"), offsets(kv_lens, "cuda")
    o = mla_extend(q, k, v, cu_q, cu_kv, 192 ** -0.5)
    assert_close(o, mla_ref.mla_extend_ref(q, k, v, cu_q, cu_kv, 192 ** -0.5), BF16)


@pytest.mark.parametrize("T", [1, 64, 300])
def test_moe_real_sizes(T: int) -> None:
    from kernels.moe import fused_moe
    from kernels.moe_route import moe_route

    E, Hd, inter = 256, 4096, 1024
    logits, bias = torch.randn(T, E, device="cuda"), torch.randn(E, device="cuda") * 0.1
    w, ids = moe_route(logits, bias, 8, 4, 8, True, 2.5)
    ref_w, ref_ids = moe_ref.moe_route_ref(logits, bias, 8, 4, 8, True, 2.5)
    assert torch.equal(ids, ref_ids)
    assert_close(w, ref_w, torch.float32)
    x = _bf16(T, Hd)
    w13, w2 = _bf16(E, 2 * inter, Hd, scale=Hd ** -0.5), _bf16(E, Hd, inter, scale=inter ** -0.5)
    assert_close(fused_moe(x, w, ids, w13, w2), moe_ref.fused_moe_ref(x, w, ids, w13, w2), BF16)


def test_norms_and_rope_real_sizes() -> None:
    from kernels import norm_rope

    T = 257
    x, w = _bf16(T, 4096), _bf16(4096)
    assert_close(norm_rope.rms_norm(x, w, 1e-6), norm_ref.rms_norm_ref(x, w, 1e-6), BF16)
    gate = _bf16(T, H * D)
    assert_close(norm_rope.group_rms_norm_gate(x, w, gate, 4, 1e-6),
                 norm_ref.group_rms_norm_gate_ref(x, w, gate, 4, 1e-6), BF16)
    q, k = _bf16(T, H, D), _bf16(T, H, D)
    pos = torch.randint(0, 4096, (T,), device="cuda")
    cs64 = norm_ref.rope_cos_sin(64, 4096, 600000.0, "cuda")
    qw, kw = _bf16(D), _bf16(D)
    got = norm_rope.qk_norm_rope(q, k, qw, kw, pos, cs64, 1e-6, D ** -0.5)
    want = norm_ref.qk_norm_rope_ref(q, k, qw, kw, pos, cs64, 1e-6, D ** -0.5)
    assert_close(got[0], want[0], BF16, "q")
    assert_close(got[1], want[1], BF16, "k")
    pe = _bf16(T, H, 192)[..., 128:]
    assert_close(norm_rope.rope_interleaved(pe, pos, cs64),
                 norm_ref.rope_interleaved_ref(pe, pos, cs64), BF16)
    pages = poisoned((16, 64, 576), BF16, "cuda")
    want_pages = pages.clone()
    lat, slots = _bf16(T, 576), torch.randperm(16 * 64, device="cuda")[:T]
    norm_rope.write_latents(pages, lat, slots)
    norm_ref.write_latents_ref(want_pages, lat, slots)
    assert torch.equal(pages.nan_to_num(7.0), want_pages.nan_to_num(7.0))
