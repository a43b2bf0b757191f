"""`make bench-gpu`: the Triton kernels against the hardware ceilings and flash-linear-attention.

Measures the ceilings first in the same run (a large device-to-device copy, a large bf16
matmul), then prints one table and appends it to bench/RESULTS.md:
  Lightning decode GB/s (% of copy) at batch 1/16/64/256, 32 heads of 128;
  Lightning prefill TFLOP/s and time relative to fla's chunk_simple_gla at 4k and 32k tokens;
  MLA decode GB/s (% of copy) at context 1k/8k/32k x batch 1/32/128;
  fused MoE TFLOP/s (and weight GB/s) at 1/64/1024 tokens, 256 experts top-8, 4096 -> 1024;
  one decode step of an 8-layer flash-shaped model at batch 1/16/64 against its roofline
  (bench/decode_step.py).
Byte counts are the bytes a kernel must move at least (fp32 state read + write, latents read,
expert weights touched); FLOP counts are those of the chunked algorithm / the expert GEMMs.
Without CUDA it says so and exits 0; `--dry-run` runs the same table on tiny CPU sizes
through the PyTorch twins (numbers meaningless, the code path checked).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench.decode_step import decode_step_rows
from bench.results import append_results, markdown_table
from kernels import api


@dataclass(frozen=True)
class Sizes:
    heads: int = 32
    head_dim: int = 128
    decode_batches: tuple[int, ...] = (1, 16, 64, 256)
    prefill_tokens: tuple[int, ...] = (4096, 32768)
    chunk: int = 64
    mla_heads: int = 32
    kv_lora: int = 512
    rope: int = 64
    page_size: int = 64
    mla_contexts: tuple[int, ...] = (1024, 8192, 32768)
    mla_batches: tuple[int, ...] = (1, 32, 128)
    experts: int = 256
    top_k: int = 8
    hidden: int = 4096
    inter: int = 1024
    moe_tokens: tuple[int, ...] = (1, 64, 1024)
    copy_bytes: int = 1 << 30
    matmul: int = 8192


FULL = Sizes()
DRY = Sizes(heads=2, head_dim=16, decode_batches=(1, 3), prefill_tokens=(40,), chunk=16,
            mla_heads=2, kv_lora=32, rope=16, page_size=8, mla_contexts=(20,),
            mla_batches=(1, 2), experts=8, top_k=2, hidden=32, inter=16, moe_tokens=(1, 5),
            copy_bytes=1 << 20, matmul=64)


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Seconds per call: triton's do_bench (L2 flushed between calls) on CUDA, else a loop."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=10, rep=50) / 1e3

    def cpu_time(fn: Callable[[], object]) -> float:
        fn()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return cpu_time


def ceilings(s: Sizes, dev: str, t: Callable) -> tuple[float, float]:
    """(copy GB/s counting read + write, bf16 matmul TFLOP/s)."""
    src = torch.empty(s.copy_bytes // 2, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(src)
    copy_gbs = 2 * s.copy_bytes / t(lambda: dst.copy_(src)) / 1e9
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    a = torch.randn(s.matmul, s.matmul, device=dev, dtype=dtype)
    mm_tflops = 2 * s.matmul ** 3 / t(lambda: a @ a) / 1e12
    return copy_gbs, mm_tflops


def lightning_decode_rows(s: Sizes, dev: str, dt: torch.dtype, t: Callable,
                          copy_gbs: float) -> list[list[str]]:
    H, D, rows = s.heads, s.head_dim, []
    g = -torch.rand(H, device=dev) * 0.1
    for B in s.decode_batches:
        q, k, v = (torch.randn(B, H, D, device=dev, dtype=dt) for _ in range(3))
        states = torch.zeros(B, H, D, D, device=dev)
        slots = torch.arange(B, device=dev, dtype=torch.int32)
        sec = t(lambda q=q, k=k, v=v, states=states, slots=slots:
                api.lightning_decode(q, k, v, g, states, slots))
        moved = B * H * D * D * 4 * 2 + 4 * B * H * D * q.element_size()
        gbs = moved / sec / 1e9
        rows.append([f"Lightning decode B={B}", f"{sec * 1e6:.1f} us", f"{gbs:.0f} GB/s",
                     f"{100 * gbs / copy_gbs:.0f}% of copy", ""])
    return rows


def _fla_time(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor,
              t: Callable) -> float | None:
    """Seconds of fla's chunk_simple_gla on the same single sequence, or None without fla."""
    try:
        from fla.ops.simple_gla import chunk_simple_gla
    except ImportError:
        return None
    qb, kb, vb = q[None], k[None], v[None]
    try:  # newer fla: constant per-head decay g_gamma
        return t(lambda: chunk_simple_gla(qb, kb, vb, g_gamma=g, scale=1.0,
                                          output_final_state=True))
    except TypeError:  # older fla: per-token log decay
        g_tok = g.expand(1, q.shape[0], -1).contiguous()
        return t(lambda: chunk_simple_gla(qb, kb, vb, g=g_tok, scale=1.0,
                                          output_final_state=True))


def lightning_prefill_rows(s: Sizes, dev: str, dt: torch.dtype, t: Callable) -> list[list[str]]:
    H, D, C, rows = s.heads, s.head_dim, s.chunk, []
    g = -torch.rand(H, device=dev) * 0.1
    for T in s.prefill_tokens:
        q, k, v = (torch.randn(T, H, D, device=dev, dtype=dt) * 0.1 for _ in range(3))
        cu = torch.tensor([0, T], device=dev, dtype=torch.int32)
        states = torch.zeros(1, H, D, D, device=dev)
        slot = torch.zeros(1, device=dev, dtype=torch.int32)
        sec = t(lambda q=q, k=k, v=v, cu=cu, states=states, slot=slot:
                api.lightning_prefill(q, k, v, g, cu, states, slot, slot, C))
        # Chunked form per token and head: q S and k^T v (D x D), Q K^T and A V (C x D).
        flops = T * H * (4 * D * D + 4 * C * D)
        if dev != "cuda":
            versus = "n/a (dry run)"
        else:
            fla = _fla_time(q, k, v, g, t)
            versus = "n/a (fla not installed)" if fla is None else f"{sec / fla:.2f}x fla time"
        rows.append([f"Lightning prefill T={T}", f"{sec * 1e3:.2f} ms",
                     f"{flops / sec / 1e12:.1f} TFLOP/s", "", versus])
    return rows


def mla_decode_rows(s: Sizes, dev: str, dt: torch.dtype, t: Callable,
                    copy_gbs: float) -> list[list[str]]:
    H, R, P, ps, rows = s.mla_heads, s.kv_lora, s.rope, s.page_size, []
    for ctx in s.mla_contexts:
        for B in s.mla_batches:
            blocks = -(-ctx // ps)
            kv = torch.randn(B * blocks, ps, R + P, device=dev, dtype=dt)
            tables = torch.randperm(B * blocks, device=dev).to(torch.int32).view(B, blocks)
            lens = torch.full((B,), ctx, device=dev, dtype=torch.int32)
            ql = torch.randn(B, H, R, device=dev, dtype=dt)
            qp = torch.randn(B, H, P, device=dev, dtype=dt)
            sec = t(lambda kv=kv, tables=tables, lens=lens, ql=ql, qp=qp:
                    api.mla_decode(ql, qp, kv, tables, lens, 0.07))
            moved = (B * ctx * (R + P) + B * H * (2 * R + P)) * kv.element_size()
            gbs = moved / sec / 1e9
            rows.append([f"MLA decode ctx={ctx} B={B}", f"{sec * 1e6:.1f} us",
                         f"{gbs:.0f} GB/s", f"{100 * gbs / copy_gbs:.0f}% of copy", ""])
            del kv
    return rows


def moe_rows(s: Sizes, dev: str, dt: torch.dtype, t: Callable) -> list[list[str]]:
    E, K, Hd, inter, rows = s.experts, s.top_k, s.hidden, s.inter, []
    w13 = torch.randn(E, 2 * inter, Hd, device=dev, dtype=dt) * Hd ** -0.5
    w2 = torch.randn(E, Hd, inter, device=dev, dtype=dt) * inter ** -0.5
    bias = torch.zeros(E, device=dev)
    for T in s.moe_tokens:
        x = torch.randn(T, Hd, device=dev, dtype=dt)
        logits = torch.randn(T, E, device=dev)
        weights, ids = api.moe_route(logits, bias, min(8, E), min(4, E), K, True, 2.5)
        sec = t(lambda x=x, weights=weights, ids=ids: api.fused_moe(x, weights, ids, w13, w2))
        flops = T * K * 3 * 2 * Hd * inter
        touched = int(torch.unique(ids).numel()) * 3 * Hd * inter * w13.element_size()
        rows.append([f"fused MoE T={T}", f"{sec * 1e6:.1f} us",
                     f"{flops / sec / 1e12:.2f} TFLOP/s", f"weights {touched / sec / 1e9:.0f} GB/s",
                     ""])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny CPU sizes through the PyTorch twins; nothing is appended")
    parser.add_argument("--no-append", action="store_true", help="do not write RESULTS.md")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("bench-gpu needs a CUDA GPU (none found); nothing measured. "
              "Use --dry-run to check the code path on the CPU.")
        return 0
    dev = "cpu" if args.dry_run else "cuda"
    s, dt = (DRY, torch.float32) if args.dry_run else (FULL, torch.bfloat16)
    t = timer(dev)
    copy_gbs, mm_tflops = ceilings(s, dev, t)
    rows = [["ceiling: device copy", "", f"{copy_gbs:.0f} GB/s", "", ""],
            ["ceiling: bf16 matmul", "", f"{mm_tflops:.0f} TFLOP/s", "", ""]]
    rows += lightning_decode_rows(s, dev, dt, t, copy_gbs)
    rows += lightning_prefill_rows(s, dev, dt, t)
    rows += mla_decode_rows(s, dev, dt, t, copy_gbs)
    rows += moe_rows(s, dev, dt, t)
    rows += decode_step_rows(args.dry_run, dev, dt, t, copy_gbs)
    table = markdown_table(["kernel", "time", "rate", "vs ceiling", "vs fla"], rows)
    gpu = torch.cuda.get_device_name() if dev == "cuda" else "CPU dry run"
    print(f"GPU kernels on {gpu} (backend: {api.backend_for(torch.empty(0, device=dev))})")
    print(table)
    if not args.dry_run and not args.no_append:
        append_results(f"GPU kernels ({gpu})", table,
                       "Bytes: minimum moved (fp32 state read+write, latents read, weights "
                       "touched). Prefill FLOPs: chunked form, 4 D^2 + 4 C D per token-head.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
