"""Triton MLA decode (paged, split context) and extend against their PyTorch twins."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close, offsets, poisoned, strided

from kernels.mla_decode import mla_decode
from kernels.mla_extend import mla_extend
from kernels.mla_ref import mla_decode_ref, mla_extend_ref

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _paged_context(context: list[int], page_size: int, width: int, dtype: torch.dtype,
                   device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv_pages, block_tables): one layer's view of a 2-layer pool, pages shuffled, unused
    table entries -1, unused pages NaN (a kernel reading past a context would show it)."""
    need = [(n + page_size - 1) // page_size for n in context]
    max_blocks = max(1, *need) + 1
    num_pages = sum(need) + 3
    pool = torch.full((num_pages, page_size, 2, width), float("nan"), device=device)
    order = torch.randperm(num_pages, device=device)
    tables = torch.full((len(context), max_blocks), -1, dtype=torch.int32, device=device)
    used = 0
    for b, n in enumerate(need):
        tables[b, :n] = order[used:used + n].to(torch.int32)
        used += n
    for b, n in enumerate(context):
        for j in range(n):  # fill exactly the rows a context covers
            page, row = int(tables[b, j // page_size]), j % page_size
            pool[page, row, 1] = torch.randn(width, device=device)
    return pool.to(dtype)[:, :, 1], tables


DECODE_CASES = [
    # context lengths (0 = padding row), heads, latent R, rope P, page size, splits, dtype
    ([1], 1, 32, 16, 16, None, F32),
    ([0, 1, 23, 40], 3, 32, 16, 5, None, F32),
    ([17, 64, 2], 16, 64, 16, 16, 3, F16),
    ([50, 0], 2, 160, 8, 1, 4, F32),  # R over two combine blocks
    ([9, 31], 4, 32, 16, 8, 2, BF16),
]


@pytest.mark.parametrize(("context", "H", "R", "P", "page", "splits", "dtype"), DECODE_CASES)
def test_mla_decode_matches_ref(context: list[int], H: int, R: int, P: int, page: int,
                                splits: int | None, dtype: torch.dtype, device: str) -> None:
    B = len(context)
    kv, tables = _paged_context(context, page, R + P, dtype, device)
    q = strided((B, H, R + P), dtype, device)  # q_latent and q_pe: slices of one tensor
    q_latent, q_pe = q[..., :R], q[..., R:]
    ctx = torch.tensor(context, dtype=torch.int32, device=device)
    out = poisoned((B, H, R), dtype, device)
    o = mla_decode(q_latent, q_pe, kv, tables, ctx, 0.2, num_splits=splits, out=out)
    ref = mla_decode_ref(q_latent, q_pe, kv, tables, ctx, 0.2)
    assert_close(o, ref, dtype)
    assert (o[ctx == 0] == 0).all()


def test_mla_decode_rejects_bad_inputs(device: str) -> None:
    q = torch.randn(2, 2, 32, device=device)
    kv = torch.randn(4, 8, 48, device=device)
    tables = torch.zeros(2, 2, dtype=torch.int32, device=device)
    ctx = torch.ones(2, dtype=torch.int32, device=device)
    with pytest.raises(ValueError, match="kv_pages must have shape"):
        mla_decode(q, q[..., :8], kv, tables, ctx, 1.0)
    with pytest.raises(ValueError, match="share one dtype"):
        mla_decode(q, q[..., :16].half(), kv, tables, ctx, 1.0)
    with pytest.raises(ValueError, match="kv_pages must be one of"):
        mla_decode(q, q[..., :16], kv.int(), tables, ctx, 1.0)
    with pytest.raises(ValueError, match="context_lens must have shape"):
        mla_decode(q, q[..., :16], kv, tables, ctx[:1], 1.0)


EXTEND_CASES = [
    # new-token lengths, kv lengths (prefix + new), heads, Dqk, Dv, dtype
    ([1], [1], 1, 16, 16, F32),
    ([1, 5, 20, 17], [1, 12, 20, 40], 3, 24, 16, F32),
    ([33, 2], [70, 2], 2, 16, 32, F16),
    ([7], [19], 2, 32, 16, BF16),
]


@pytest.mark.parametrize(("q_lens", "kv_lens", "H", "Dqk", "Dv", "dtype"), EXTEND_CASES)
def test_mla_extend_matches_ref(q_lens: list[int], kv_lens: list[int], H: int, Dqk: int,
                                Dv: int, dtype: torch.dtype, device: str) -> None:
    Tq, Tkv = sum(q_lens), sum(kv_lens)
    q = strided((Tq, H, Dqk), dtype, device)
    kv = strided((Tkv, H, Dqk + Dv), dtype, device)  # k and v: slices of one projection
    k, v = kv[..., :Dqk], kv[..., Dqk:]
    cu_q, cu_kv = offsets(q_lens, device), offsets(kv_lens, device).long()
    out = poisoned((Tq, H, Dv), dtype, device)
    o = mla_extend(q, k, v, cu_q, cu_kv, Dqk ** -0.5, out=out)
    assert_close(o, mla_extend_ref(q, k, v, cu_q, cu_kv, Dqk ** -0.5), dtype)


def test_mla_extend_rejects_bad_inputs(device: str) -> None:
    q = torch.randn(4, 2, 16, device=device)
    cu = offsets([4], device)
    with pytest.raises(ValueError, match="v must have shape"):
        mla_extend(q, q, q[:3], cu, cu, 1.0)
    with pytest.raises(ValueError, match="cu_seqlens_kv must have shape"):
        mla_extend(q, q, q, cu, offsets([2, 2], device), 1.0)
