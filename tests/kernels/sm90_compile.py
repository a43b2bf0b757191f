"""Compile every Triton kernel for sm_90 (H100/H20) at Ling-2.6-flash sizes, without a GPU.

Each wrapper runs with CPU tensors of real sizes while its launches are recorded instead of
executed; each recorded launch is compiled to a cubin with Triton's bundled ptxas, the way the
launcher would specialize it. Prints registers and spill bytes per kernel; exits 1 when a kernel
fails to compile. Needs TRITON_INTERPRET unset. Run: .venv/bin/python tests/kernels/sm90_compile.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

from kernels import (
    lightning_decode,
    lightning_prefill,
    mla_decode,
    mla_extend,
    moe,
    moe_route,
    norm_rope,
)
from kernels import triton_common as tc

BF16 = torch.bfloat16
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas")


def _source(kernel: Any, args: tuple, meta: dict) -> tuple[ASTSource, dict]:
    """ASTSource specialized like the launcher would for these arguments, and the options."""
    params = dict(zip(kernel.arg_names, args, strict=False))
    params.update({k: v for k, v in meta.items() if k not in LAUNCH_OPTIONS})
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list] = {}
    for i, (name, p) in enumerate(zip(kernel.arg_names, kernel.params, strict=True)):
        value = params[name]
        if p.is_constexpr:
            signature[name], constexprs[name] = "constexpr", value
            continue
        kind, key = native_specialize_impl(BaseBackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = value
        elif key == "D":
            attrs[(i,)] = BaseBackend.parse_attr("D")
    options = {k: v for k, v in meta.items() if k in LAUNCH_OPTIONS}
    return ASTSource(kernel, signature, constexprs, attrs), options


def _resources(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, spill bytes) from cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", text)
    stack = re.search(r"STACK:(\d+)", text)
    return int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1


H, D, R, P, E, HD, INTER = 32, 128, 512, 64, 256, 4096, 1024  # Ling-2.6-flash
F16, F32 = torch.float16, torch.float32
r = torch.randn


def prefill(dtype: torch.dtype) -> None:
    T = 4096
    q, k, v = (r(T, H, D, dtype=dtype) for _ in range(3))
    cu = torch.tensor([0, 1000, T], dtype=torch.int32)
    slots = torch.tensor([0, 1], dtype=torch.int32)
    lightning_prefill.lightning_prefill(q, k, v, -torch.rand(H), cu, torch.zeros(4, H, D, D),
                                        slots, slots, 64, torch.tensor([64, 1000, 1064]),
                                        torch.zeros(3, H, D, D))


def decode(dtype: torch.dtype) -> None:
    B = 64
    q, k, v = (r(B, H, D, dtype=dtype) for _ in range(3))
    lightning_decode.lightning_decode(q, k, v, -torch.rand(H), torch.zeros(B, H, D, D),
                                      torch.arange(B, dtype=torch.int32))


def mla_dec(dtype: torch.dtype) -> None:
    B, pages = 32, 16
    kv = r(B * pages, 64, R + P, dtype=dtype)
    tables = torch.arange(B * pages, dtype=torch.int32).view(B, pages)
    ctx = torch.full((B,), 1000, dtype=torch.int32)
    mla_decode.mla_decode(r(B, H, R, dtype=dtype), r(B, H, P, dtype=dtype), kv, tables, ctx,
                          0.07)


def mla_ext(dtype: torch.dtype) -> None:
    q = r(256, H, 192, dtype=dtype)
    k, v = r(1024, H, 192, dtype=dtype), r(1024, H, 128, dtype=dtype)
    cu_q = torch.tensor([0, 256], dtype=torch.int32)
    mla_extend.mla_extend(q, k, v, cu_q, torch.tensor([0, 1024], dtype=torch.int32), 0.07)


def route(dtype: torch.dtype) -> None:
    moe_route.moe_route(r(64, E, dtype=dtype), r(E), 8, 4, 8, True, 2.5)


def fused(dtype: torch.dtype, tokens: int) -> None:
    w13 = torch.empty(1, 2 * INTER, HD, dtype=dtype).expand(E, -1, -1)  # real shape, 1 copy
    w2 = torch.empty(1, HD, INTER, dtype=dtype).expand(E, -1, -1)
    ids = torch.stack([torch.randperm(E)[:8] for _ in range(tokens)])
    moe.fused_moe(r(tokens, HD, dtype=dtype), torch.rand(tokens, 8), ids, w13, w2)


def norms(dtype: torch.dtype) -> None:
    x = r(64, HD, dtype=dtype)
    norm_rope.rms_norm(x, torch.ones(HD, dtype=dtype), 1e-6)
    norm_rope.group_rms_norm_gate(r(64, H * D, dtype=dtype), torch.ones(H * D),
                                  r(64, H * D, dtype=dtype), 4, 1e-6)
    cs, pos = torch.zeros(4096, 64), torch.arange(64)
    norm_rope.qk_norm_rope(r(64, H, D, dtype=dtype), r(64, H, D, dtype=dtype),
                           torch.ones(D), torch.ones(D), pos, cs, 1e-6, D ** -0.5)
    norm_rope.rope_interleaved(r(64, H, P, dtype=dtype), pos, cs)
    norm_rope.write_latents(torch.zeros(8, 64, R + P, dtype=dtype), r(64, R + P, dtype=dtype),
                            pos)


CASES: list[tuple[str, Callable[..., None], tuple]] = [
    ("lightning_prefill bf16", prefill, (BF16,)), ("lightning_prefill fp16", prefill, (F16,)),
    ("lightning_prefill fp32", prefill, (F32,)), ("lightning_decode", decode, (BF16,)),
    ("mla_decode bf16", mla_dec, (BF16,)), ("mla_decode fp32", mla_dec, (F32,)),
    ("mla_extend bf16", mla_ext, (BF16,)), ("mla_extend fp32", mla_ext, (F32,)),
    ("moe_route", route, (F32,)), ("fused_moe T=1", fused, (BF16, 1)),
    ("fused_moe T=64", fused, (BF16, 64)), ("fused_moe T=1024", fused, (BF16, 1024)),
    ("fused_moe fp32", fused, (F32, 64)), ("norm_rope", norms, (BF16,)),
]


def _recorded_launches(run: Callable[..., None], args: tuple) -> list[tuple[Any, tuple, dict]]:
    """The (kernel, args, meta) of every launch the wrapper call run(*args) makes."""
    launches: list[tuple[Any, tuple, dict]] = []

    def record(kernel: Any, grid: tuple, *kernel_args: Any, **meta: Any) -> None:
        launches.append((kernel, kernel_args, meta))

    with tc.recording_launches(record):
        run(*args)
    return launches


def main() -> int:
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET to compile for sm_90")
        return 2
    target = GPUTarget("cuda", 90, 32)
    failures = 0
    for case, run, case_args in CASES:
        for kernel, args, meta in _recorded_launches(run, case_args):
            name = f"{case}: {kernel.fn.__name__}"
            try:
                src, options = _source(kernel, args, meta)
                compiled = triton.compile(src, target=target, options=options)
            except Exception as exc:  # report every kernel, then fail
                failures += 1
                print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:2000]}")
                continue
            regs, spill = _resources(compiled.asm["cubin"])
            smem = compiled.metadata.shared
            print(f"ok   {name:48s} regs={regs:3d} spill={spill:5d}B smem={smem}B {options}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
