"""Helpers shared by the kernel tests: tolerances, strided inputs, poisoned outputs."""

from __future__ import annotations

import torch
from torch import Tensor

# Relative tolerance on max |a - b| / max |b| per input dtype (fp16/bf16 round inputs,
# intermediate dot operands and outputs).
REL_TOL = {torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Same shape, no NaN/inf where the expectation is finite, max error within tolerance."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    a, e = actual.float().cpu(), expected.float().cpu()
    assert torch.isfinite(a).all(), f"{what}: non-finite values (unwritten output?)"
    scale = e.abs().max().clamp_min(1e-6)
    err = (a - e).abs().max() / scale
    assert err <= REL_TOL[dtype], f"{what}: relative error {err:.3g} > {REL_TOL[dtype]}"


def strided(shape: tuple[int, ...], dtype: torch.dtype, device: str, scale: float = 1.0) -> Tensor:
    """Random tensor of `shape` that is not contiguous: every other element of a wider last dim
    for 1-2 dims; dims 0 and 1 swapped in memory for 3+ dims."""
    if len(shape) >= 3:
        swapped = (shape[1], shape[0], *shape[2:])
        base = torch.randn(swapped, device=device) * scale
        return base.to(dtype).transpose(0, 1)
    wide = (*shape[:-1], shape[-1] * 2)
    return (torch.randn(wide, device=device) * scale).to(dtype)[..., ::2]


def poisoned(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> Tensor:
    """An output buffer full of NaN (integers: -7), so unwritten elements are caught."""
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, -7, dtype=dtype, device=device)


def offsets(lengths: list[int], device: str) -> Tensor:
    """cu_seqlens int32 [B + 1] of the given lengths."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return cu.to(device)
