"""The checksum the device backends (cuda_ipc, nccl) compute where the bytes are, on the GPU.

Algorithm "pos64" (a position-weighted sum, Fletcher-like): the tensor's row-major bytes,
zero-padded to a multiple of 4, are read as little-endian int32 words w_0 .. w_{n-1}, and

    S1 = sum(w_k)            mod 2^64
    S2 = sum((k + 1) * w_k)  mod 2^64

written "pos64:" + 16 hex digits of S1 + 16 hex digits of S2. It is a pure function of the
bytes (the same on CPU and GPU, and for any split of the work), so sender and receiver agree
without sharing anything. Any change to one word changes S1 (the change is nonzero and below
2^32); any change to two words that keeps S1 changes S2 by delta * (distance between them),
which is nonzero mod 2^64 for tensors under 16 GiB; rows or pages written in the wrong order
move weight between positions, which S2 sees. It guards against accidental corruption, like
the tcp backend's CRC-32, and is not a MAC.

How it runs: the words are viewed (no copy for a contiguous, 4-byte aligned tensor) as a
[rows, 4096] int32 matrix; the GPU reduces it to row sums and column sums (int64, exact: a row
sum is below 4096 * 2^31 = 2^43), two passes over memory bandwidth; the host finishes with
S2 = 4096 * sum(i * row_i) + sum((j + 1) * col_j) in wrapping uint64 arithmetic, and adds the
few tail words past the last full row. The tcp backend keeps CRC-32 because it checks bytes on
the CPU as they come off the socket; a CRC has no cheap data-parallel form in plain torch.
"""

from __future__ import annotations

import numpy as np
import torch

CHECKSUM_PREFIX = "pos64:"
_COLS = 4096
_WORD = 4
_MASK = (1 << 64) - 1


def device_checksum(tensor: torch.Tensor) -> str:
    """The pos64 checksum of the tensor's values as row-major bytes, computed on its device."""
    flat = _flat_bytes(tensor)
    main_bytes = (flat.numel() // (_WORD * _COLS)) * _WORD * _COLS
    s1, s2 = _main_sums(flat[:main_bytes]) if main_bytes else (0, 0)
    t1, t2 = _tail_sums(flat[main_bytes:], first_word=main_bytes // _WORD)
    return f"{CHECKSUM_PREFIX}{(s1 + t1) & _MASK:016x}{(s2 + t2) & _MASK:016x}"


def _flat_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's row-major bytes as a 1-d uint8 tensor whose start is 4-byte aligned."""
    t = tensor.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    flat = t.reshape(-1).view(torch.uint8)
    if flat.storage_offset() % _WORD:
        flat = flat.clone()  # a fresh allocation starts aligned
    return flat


def _main_sums(main: torch.Tensor) -> tuple[int, int]:
    words = main.view(torch.int32).view(-1, _COLS)
    rows = words.sum(dim=1, dtype=torch.int64)
    cols = words.sum(dim=0, dtype=torch.int64)
    both = torch.cat([rows, cols]).cpu().numpy().astype(np.uint64)  # wraps negatives mod 2^64
    row_sums, col_sums = both[: rows.numel()], both[rows.numel() :]
    # uint64 array arithmetic wraps silently, which is exactly mod 2^64.
    row_index = np.arange(row_sums.size, dtype=np.uint64)
    col_weight = np.arange(1, _COLS + 1, dtype=np.uint64)
    s1 = int(row_sums.sum(dtype=np.uint64))
    weighted_rows = int((row_sums * row_index).sum(dtype=np.uint64))
    weighted_cols = int((col_sums * col_weight).sum(dtype=np.uint64))
    return s1, (_COLS * weighted_rows + weighted_cols) & _MASK


def _tail_sums(tail: torch.Tensor, first_word: int) -> tuple[int, int]:
    """Sums over the last partial row (under 16 KiB), zero-padded to whole words, on the host."""
    raw = tail.cpu().numpy().tobytes()
    if not raw:
        return 0, 0
    raw += bytes(-len(raw) % _WORD)
    words = np.frombuffer(raw, dtype="<i4").astype(np.int64).astype(np.uint64)
    weights = np.arange(first_word + 1, first_word + 1 + words.size, dtype=np.uint64)
    return int(words.sum(dtype=np.uint64)), int((words * weights).sum(dtype=np.uint64))
