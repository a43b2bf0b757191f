"""Triton norms, rotary embeddings and the latent page write against their PyTorch twins."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, poisoned, strided

from kernels import norm_ref as ref
from kernels import norm_rope

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize(("shape", "dtype"), [((1, 16), F32), ((3, 5, 48), F16),
                                              ((7, 33), BF16), ((4, 100), F32)])
def test_rms_norm_matches_ref(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> None:
    x = strided(shape, dtype, device, 3.0)
    weight = torch.randn(shape[-1], device=device).to(dtype)
    out = poisoned(shape, dtype, device)
    y = norm_rope.rms_norm(x, weight, 1e-6, out=out)
    assert_close(y, ref.rms_norm_ref(x, weight, 1e-6), dtype)


@pytest.mark.parametrize(("T", "C", "groups", "dtype"), [(1, 16, 1, F32), (5, 24, 3, F16),
                                                         (4, 64, 4, BF16)])
def test_group_rms_norm_gate_matches_ref(T: int, C: int, groups: int, dtype: torch.dtype,
                                         device: str) -> None:
    x, gate = strided((T, C), dtype, device), strided((T, C), dtype, device, 2.0)
    weight = torch.randn(C, device=device)
    out = poisoned((T, C), dtype, device)
    y = norm_rope.group_rms_norm_gate(x, weight, gate, groups, 1e-6, out=out)
    assert_close(y, ref.group_rms_norm_gate_ref(x, weight, gate, groups, 1e-6), dtype)


@pytest.mark.parametrize(("T", "H", "D", "rot", "dtype"), [(1, 1, 16, 16, F32),
                                                          (5, 3, 20, 8, F32),
                                                          (6, 2, 32, 16, F16),
                                                          (3, 4, 24, 12, BF16),
                                                          (2, 20, 16, 8, F32)])
def test_qk_norm_rope_matches_ref(T: int, H: int, D: int, rot: int, dtype: torch.dtype,
                                  device: str) -> None:
    qkv = strided((T, H, 3 * D), dtype, device)  # q, k: slices of one projection
    q, k = qkv[..., :D], qkv[..., D:2 * D]
    q_w, k_w = torch.randn(D, device=device), torch.randn(D, device=device)
    cos_sin = ref.rope_cos_sin(rot, 64, 10000.0, device)
    positions = torch.randint(0, 64, (T,), device=device)
    got_q, got_k = norm_rope.qk_norm_rope(q, k, q_w, k_w, positions, cos_sin, 1e-6, D ** -0.5)
    want_q, want_k = ref.qk_norm_rope_ref(q, k, q_w, k_w, positions, cos_sin, 1e-6, D ** -0.5)
    assert_close(got_q, want_q, dtype, "q")
    assert_close(got_k, want_k, dtype, "k")


@pytest.mark.parametrize(("T", "H", "P", "dtype"), [(1, 1, 8, F32), (5, 3, 16, F16),
                                                    (4, 2, 64, BF16), (2, 40, 8, F32)])
def test_rope_interleaved_matches_ref(T: int, H: int, P: int, dtype: torch.dtype,
                                      device: str) -> None:
    q = strided((T, H, 2 * P), dtype, device)
    x = q[..., P:]  # q_pe: the rope part of q
    cos_sin = ref.rope_cos_sin(P, 100, 10000.0, device)
    positions = torch.randint(0, 100, (T,), device=device, dtype=torch.int32)
    got = norm_rope.rope_interleaved(x, positions, cos_sin)
    assert_close(got, ref.rope_interleaved_ref(x, positions, cos_sin), dtype)


# The interpreter truncates fp32 -> bf16 (a GPU rounds to nearest), so the converting case
# is fp32 -> fp16, where both round to nearest and the comparison can be exact.
@pytest.mark.parametrize(("T", "W", "page", "dtype", "src_dtype"),
                         [(1, 16, 4, F32, F32), (9, 40, 3, F16, F32), (6, 24, 1, BF16, BF16)])
def test_write_latents_matches_ref(T: int, W: int, page: int, dtype: torch.dtype,
                                   src_dtype: torch.dtype, device: str) -> None:
    pool = poisoned((8, page, 2, W), dtype, device)[:, :, 0]  # one layer of a 2-layer pool
    latents = strided((T, W), src_dtype, device)
    slots = torch.randperm(8 * page, device=device)[:T]
    slots[::3] = -1
    want = pool.clone()
    norm_rope.write_latents(pool, latents, slots)
    ref.write_latents_ref(want, latents, slots)
    assert torch.equal(pool.nan_to_num(7.0), want.nan_to_num(7.0))
    assert torch.isfinite(pool).sum() == (slots >= 0).sum() * W


def test_norm_rope_reject_bad_inputs(device: str) -> None:
    x = torch.randn(2, 8, device=device)
    with pytest.raises(ValueError, match="weight must have shape"):
        norm_rope.rms_norm(x, torch.ones(4, device=device), 1e-6)
    with pytest.raises(ValueError, match="groups=3"):
        norm_rope.group_rms_norm_gate(x, torch.ones(8, device=device), x, 3, 1e-6)
    cos_sin = ref.rope_cos_sin(8, 4, 10000.0, device)
    with pytest.raises(ValueError, match="positions must have shape"):
        norm_rope.rope_interleaved(x.view(2, 1, 8), torch.zeros(3, dtype=torch.int64,
                                                                device=device), cos_sin)
    with pytest.raises(ValueError, match="latents must have shape"):
        norm_rope.write_latents(torch.zeros(2, 2, 8, device=device), x[:, :4],
                                torch.zeros(2, dtype=torch.int64, device=device))
