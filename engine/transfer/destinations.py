"""Turning what the owner's destination callback returns into checked dim-0 segments."""

from __future__ import annotations

import torch

from engine.transfer.base import Destination, ExpectedTensor, TransferError


def as_segments(dest: Destination, expected: ExpectedTensor) -> list[torch.Tensor]:
    """CPU tensors that, concatenated along dim 0 in order, have exactly the expected shape
    and dtype; TransferError otherwise. A single tensor must match the shape itself."""
    segments = [dest] if isinstance(dest, torch.Tensor) else list(dest)
    where = f"destination for {expected.name!r}"
    for seg in segments:
        if not isinstance(seg, torch.Tensor):
            raise TransferError(f"{where}: {type(seg).__name__} is not a tensor")
        if seg.device.type != "cpu" or seg.dtype != expected.dtype:
            raise TransferError(
                f"{where}: {seg.dtype} on {seg.device}, expected {expected.dtype} on cpu"
            )
    if isinstance(dest, torch.Tensor):
        if tuple(dest.shape) != expected.shape:
            raise TransferError(f"{where}: shape {tuple(dest.shape)}, expected {expected.shape}")
        return segments
    if not expected.shape:
        raise TransferError(f"{where}: a 0-d tensor cannot be split into segments")
    rows, tail = expected.shape[0], expected.shape[1:]
    if any(tuple(s.shape[1:]) != tail or s.dim() != len(expected.shape) for s in segments):
        raise TransferError(f"{where}: every segment must be [rows, *{tail}]")
    got_rows = sum(s.shape[0] for s in segments)
    if got_rows != rows:
        raise TransferError(f"{where}: segments hold {got_rows} rows, expected {rows}")
    return segments
