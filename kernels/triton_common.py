"""Shared pieces of the Triton kernel wrappers: argument checks, dtype mapping, launch hook.

Every wrapper validates its inputs with these helpers before launching, so a wrong shape, dtype
or device fails with a ValueError naming the argument instead of a kernel fault.

Interpreter rules (TRITON_INTERPRET=1, Triton 3.9): bf16 dots and bf16 arithmetic give wrong
numbers, so kernels upcast right after tl.load and, under the interpreter, run every dot in
fp32 (`dot_dtype`). Kernels never use autotune, so the interpreter path has one config.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)
_TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tl_dtype(dtype: torch.dtype) -> Any:
    """The Triton dtype of a torch floating dtype."""
    return _TL_DTYPES[dtype]


def dot_dtype(dtype: torch.dtype) -> Any:
    """Operand dtype for tl.dot given the input dtype: the input dtype on a GPU (tensor cores),
    fp32 for bf16 under the interpreter (its bf16 dots are wrong)."""
    if dtype == torch.bfloat16 and interpreting():
        return tl.float32
    return _TL_DTYPES[dtype]


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input_precision: exact fp32 products for fp32 inputs, tensor-core default else."""
    return "ieee" if dtype == torch.float32 else "tf32"


def next_pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum) (tl.dot needs blocks of 16 or more)."""
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; a small stand-in under the interpreter."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def check_device(tensors: dict[str, Tensor | None]) -> torch.device:
    """All given tensors on one device, and that device can run Triton (CUDA, or any device
    under the interpreter). Returns the device."""
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) != 1:
        where = ", ".join(f"{name}={t.device}" for name, t in present.items())
        raise ValueError(f"tensors must share one device, got {where}")
    device = devices.pop()
    if device.type != "cuda" and not interpreting() and _launcher is _launch_now:
        raise ValueError(
            f"Triton kernels need CUDA tensors (got {device}); use the *_ref twin or "
            "set TRITON_INTERPRET=1 before importing the kernel module"
        )
    return device


def check_shape(t: Tensor, name: str, shape: Sequence[int | None]) -> None:
    """t has len(shape) dims; each int entry must match (None = any size)."""
    ok = t.dim() == len(shape) and all(
        want is None or have == want for have, want in zip(t.shape, shape, strict=True)
    )
    if not ok:
        want_txt = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want_txt}, got {list(t.shape)}")


def check_dtype(t: Tensor, name: str, allowed: Sequence[torch.dtype]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise ValueError(f"{name} must be one of ({names}), got {t.dtype}")


def check_same_dtype(tensors: dict[str, Tensor]) -> None:
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        where = ", ".join(f"{name}={t.dtype}" for name, t in tensors.items())
        raise ValueError(f"tensors must share one dtype, got {where}")


def check_writable(t: Tensor, name: str) -> None:
    """An output written in place must not alias itself (no zero strides on dims > 1)."""
    if any(st == 0 and sz > 1 for st, sz in zip(t.stride(), t.shape, strict=True)):
        raise ValueError(f"{name} is written in place and must not be an expanded view")


def check_out(out: Tensor | None, name: str, shape: Sequence[int], dtype: torch.dtype,
              device: torch.device) -> Tensor:
    """The given output buffer after checks, or a new contiguous one."""
    if out is None:
        return torch.empty(tuple(shape), dtype=dtype, device=device)
    check_shape(out, name, list(shape))
    check_dtype(out, name, [dtype])
    if out.device != device:
        raise ValueError(f"{name} must be on {device}, got {out.device}")
    check_writable(out, name)
    return out


Launcher = Callable[..., None]


def _launch_now(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    kernel[grid](*args, **meta)


_launcher: Launcher = _launch_now


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """Launch kernel[grid](*args, **meta) (one place, so tools can record launches)."""
    _launcher(kernel, grid, *args, **meta)


@contextmanager
def recording_launches(fn: Launcher) -> Iterator[None]:
    """Within the block, launches go to fn(kernel, grid, *args, **meta) instead of the device,
    and CPU tensors pass the device check (to compile kernels for a GPU on a machine without
    one). Block sizes are still chosen as for a GPU unless TRITON_INTERPRET=1."""
    global _launcher
    _launcher = fn
    try:
        yield
    finally:
        _launcher = _launch_now
