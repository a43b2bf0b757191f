"""The one switch between the Triton kernels and their plain-PyTorch twins.

The model engine calls only these names. Each call runs the Triton kernel when its first
tensor argument is a CUDA tensor and DUET_KERNELS is `triton` (the default); otherwise (CPU
tensors, or DUET_KERNELS=ref) it runs the `*_ref` twin. DUET_KERNELS=interpret runs the Triton
kernels on any device, which on the CPU needs TRITON_INTERPRET=1 set before the kernel modules
are imported (a test mode: the whole engine through the interpreter). The environment is read
at every call.
Triton modules are imported on first use, so a CPU-only process never compiles or decorates a
kernel (and tests can set TRITON_INTERPRET before the kernel modules load).
Signatures and semantics: /tmp/prompts/kernels_api.md, restated in each twin's docstring.
"""

from __future__ import annotations

import os

from torch import Tensor

from kernels import lightning_ref, mla_ref, moe_ref, norm_ref

MODES = ("triton", "ref", "interpret")


def backend_for(x: Tensor) -> str:
    """'triton' or 'ref': which implementation a call whose first tensor is x runs."""
    mode = os.environ.get("DUET_KERNELS", "triton").strip().lower() or "triton"
    if mode not in MODES:
        raise ValueError(f"DUET_KERNELS must be one of {MODES}, got {mode!r}")
    if mode == "interpret":
        if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
            raise ValueError("DUET_KERNELS=interpret on the CPU needs TRITON_INTERPRET=1")
        return "triton"
    return "triton" if mode == "triton" and x.is_cuda else "ref"


def lightning_prefill(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, cu_seqlens: Tensor, states: Tensor,
    initial_slots: Tensor, final_slots: Tensor, chunk_size: int = 64,
    snapshot_ends: Tensor | None = None, snapshots: Tensor | None = None,
) -> Tensor:
    args = (q, k, v, g, cu_seqlens, states, initial_slots, final_slots, chunk_size,
            snapshot_ends, snapshots)
    if backend_for(q) == "triton":
        from kernels import lightning_prefill as impl

        return impl.lightning_prefill(*args)
    return lightning_ref.lightning_prefill_ref(*args)


def lightning_decode(q: Tensor, k: Tensor, v: Tensor, g: Tensor, states: Tensor,
                     slots: Tensor) -> Tensor:
    if backend_for(q) == "triton":
        from kernels import lightning_decode as impl

        return impl.lightning_decode(q, k, v, g, states, slots)
    return lightning_ref.lightning_decode_ref(q, k, v, g, states, slots)


def mla_decode(q_latent: Tensor, q_pe: Tensor, kv_pages: Tensor, block_tables: Tensor,
               context_lens: Tensor, scale: float) -> Tensor:
    args = (q_latent, q_pe, kv_pages, block_tables, context_lens, scale)
    if backend_for(q_latent) == "triton":
        from kernels import mla_decode as impl

        return impl.mla_decode(*args)
    return mla_ref.mla_decode_ref(*args)


def mla_extend(q: Tensor, k: Tensor, v: Tensor, cu_seqlens_q: Tensor, cu_seqlens_kv: Tensor,
               scale: float) -> Tensor:
    args = (q, k, v, cu_seqlens_q, cu_seqlens_kv, scale)
    if backend_for(q) == "triton":
        from kernels import mla_extend as impl

        return impl.mla_extend(*args)
    return mla_ref.mla_extend_ref(*args)


def moe_route(router_logits: Tensor, expert_bias: Tensor | None, n_group: int,
              topk_group: int, top_k: int, norm_topk_prob: bool,
              routed_scaling_factor: float) -> tuple[Tensor, Tensor]:
    args = (router_logits, expert_bias, n_group, topk_group, top_k, norm_topk_prob,
            routed_scaling_factor)
    if backend_for(router_logits) == "triton":
        from kernels import moe_route as impl

        return impl.moe_route(*args)
    return moe_ref.moe_route_ref(*args)


def fused_moe(x: Tensor, topk_weights: Tensor, topk_ids: Tensor, w13: Tensor,
              w2: Tensor) -> Tensor:
    if backend_for(x) == "triton":
        from kernels import moe as impl

        return impl.fused_moe(x, topk_weights, topk_ids, w13, w2)
    return moe_ref.fused_moe_ref(x, topk_weights, topk_ids, w13, w2)


def swiglu_mlp(x: Tensor, w13: Tensor, w2: Tensor) -> Tensor:
    if backend_for(x) == "triton":
        from kernels import moe as impl

        return impl.swiglu_mlp(x, w13, w2)
    return moe_ref.swiglu_mlp_ref(x, w13, w2)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    if backend_for(x) == "triton":
        from kernels import norm_rope as impl

        return impl.rms_norm(x, weight, eps)
    return norm_ref.rms_norm_ref(x, weight, eps)


def group_rms_norm_gate(x: Tensor, weight: Tensor, gate: Tensor, groups: int,
                        eps: float) -> Tensor:
    if backend_for(x) == "triton":
        from kernels import norm_rope as impl

        return impl.group_rms_norm_gate(x, weight, gate, groups, eps)
    return norm_ref.group_rms_norm_gate_ref(x, weight, gate, groups, eps)


def qk_norm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, positions: Tensor,
                 cos_sin: Tensor, eps: float, q_scale: float) -> tuple[Tensor, Tensor]:
    args = (q, k, q_weight, k_weight, positions, cos_sin, eps, q_scale)
    if backend_for(q) == "triton":
        from kernels import norm_rope as impl

        return impl.qk_norm_rope(*args)
    return norm_ref.qk_norm_rope_ref(*args)


def rope_interleaved(x: Tensor, positions: Tensor, cos_sin: Tensor) -> Tensor:
    if backend_for(x) == "triton":
        from kernels import norm_rope as impl

        return impl.rope_interleaved(x, positions, cos_sin)
    return norm_ref.rope_interleaved_ref(x, positions, cos_sin)


def write_latents(kv_pages: Tensor, latents: Tensor, slot_mapping: Tensor) -> None:
    if backend_for(kv_pages) == "triton":
        from kernels import norm_rope as impl

        impl.write_latents(kv_pages, latents, slot_mapping)
        return
    norm_ref.write_latents_ref(kv_pages, latents, slot_mapping)


__all__ = [
    "MODES",
    "backend_for",
    "fused_moe",
    "group_rms_norm_gate",
    "lightning_decode",
    "lightning_prefill",
    "mla_decode",
    "mla_extend",
    "moe_route",
    "qk_norm_rope",
    "rms_norm",
    "rope_interleaved",
    "swiglu_mlp",
    "write_latents",
]
