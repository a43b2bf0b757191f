"""FP8 checkpoints: weights stored as float8 (e4m3 or e5m2) with a scale tensor each,
dequantized once at load into the run dtype (no FP8 matmuls yet: memory is that of the run
dtype).

`config.json` declares them with `quantization_config = {"quant_method": "fp8", ...}`, and
optionally `weight_block_size: [bm, bn]`. Each FP8 weight `X.weight` comes with `X.weight_scale`
(or `X.weight_scale_inv`, the same multiplier under DeepSeek's name), whose shape says the
granularity: one value (per tensor), one per output row (per channel), or one per
bm x bn block. The stored value times its scale is the weight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALE_SUFFIXES = (".weight_scale_inv", ".weight_scale")
DEFAULT_BLOCK = 128


class Fp8Error(ValueError):
    """An FP8 weight or its scale cannot be read as described."""


@dataclass(frozen=True)
class Fp8Scheme:
    """What config.json says about the checkpoint's FP8 weights."""

    block: tuple[int, int] | None = None  # weight_block_size, when given

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> Fp8Scheme | None:
        """None for an unquantized checkpoint; Fp8Error for one duet cannot read."""
        quant = raw.get("quantization_config")
        if quant is None:
            return None
        method = quant.get("quant_method") if isinstance(quant, dict) else None
        if method != "fp8":
            raise Fp8Error(f"quantization_config uses {method!r}; duet reads 'fp8' checkpoints")
        block = quant.get("weight_block_size")
        if block is None:
            return cls()
        if not (isinstance(block, list) and len(block) == 2 and all(_pos_int(b) for b in block)):
            raise Fp8Error(f"quantization_config.weight_block_size must be [m, n], got {block!r}")
        return cls((int(block[0]), int(block[1])))


def _pos_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def scale_target(name: str) -> str | None:
    """The weight a scale tensor belongs to, or None when `name` is not a scale."""
    for suffix in SCALE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)] + ".weight"
    return None


def _block_shape(
    weight: tuple[int, int], grid: tuple[int, int], block: tuple[int, int] | None
) -> tuple[int, int]:
    """The bm x bn block of a scale grid: the configured one, else 128 x 128 when that tiles
    the weight into exactly this grid (any other block size must be configured: a grid alone
    is ambiguous)."""
    shape = block or (DEFAULT_BLOCK, DEFAULT_BLOCK)
    if (math.ceil(weight[0] / shape[0]), math.ceil(weight[1] / shape[1])) != grid:
        hint = "" if block else " (set quantization_config.weight_block_size)"
        raise Fp8Error(
            f"scale grid {list(grid)} does not tile a {list(weight)} weight by {list(shape)}{hint}"
        )
    return shape


def dequantize(
    name: str, weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int] | None
) -> torch.Tensor:
    """The fp32 weight: stored values times their per-tensor, per-row or per-block scale."""
    if weight.dtype not in FP8_DTYPES:
        raise Fp8Error(f"{name}: has a scale but dtype {weight.dtype}, not float8")
    if weight.dim() != 2:
        raise Fp8Error(f"{name}: FP8 weights must be 2-D, got shape {list(weight.shape)}")
    values, s = weight.to(torch.float32), scale.to(torch.float32)
    rows, cols = values.shape
    if s.numel() == 1:
        return values * s.reshape(())
    if s.numel() == rows and s.dim() <= 2 and (s.dim() == 1 or s.shape[1] == 1):
        return values * s.reshape(rows, 1)
    if s.dim() != 2:
        raise Fp8Error(f"{name}: scale shape {list(s.shape)} fits no FP8 granularity")
    bm, bn = _block_shape((rows, cols), (int(s.shape[0]), int(s.shape[1])), block)
    grid = s.repeat_interleave(bm, dim=0)[:rows].repeat_interleave(bn, dim=1)[:, :cols]
    return values * grid


def quantize_blockwise(
    weight: torch.Tensor, block: tuple[int, int], dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 values, per-block scales) with each block's absmax mapped to the format's max;
    for building FP8 test checkpoints."""
    rows, cols = weight.shape
    bm, bn = block
    grid = (math.ceil(rows / bm), math.ceil(cols / bn))
    padded = torch.zeros(grid[0] * bm, grid[1] * bn, dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    blocks = padded.reshape(grid[0], bm, grid[1], bn)
    absmax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = absmax / torch.finfo(dtype).max
    expanded = scale.repeat_interleave(bm, 0).repeat_interleave(bn, 1)[:rows, :cols]
    return (weight.float() / expanded).to(dtype), scale
