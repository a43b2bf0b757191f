"""The one switch between Triton kernels and their plain-PyTorch twins.

The model engine calls only these names. For now every name is the reference twin; the
Triton dispatch (CUDA tensors, DUET_KERNELS=triton|ref) is added with the kernels.
"""

from kernels.lightning_ref import lightning_decode_ref as lightning_decode
from kernels.lightning_ref import lightning_prefill_ref as lightning_prefill
from kernels.mla_ref import mla_decode_ref as mla_decode
from kernels.mla_ref import mla_extend_ref as mla_extend
from kernels.moe_ref import fused_moe_ref as fused_moe
from kernels.moe_ref import moe_route_ref as moe_route
from kernels.moe_ref import swiglu_mlp_ref as swiglu_mlp
from kernels.norm_ref import group_rms_norm_gate_ref as group_rms_norm_gate
from kernels.norm_ref import qk_norm_rope_ref as qk_norm_rope
from kernels.norm_ref import rms_norm_ref as rms_norm
from kernels.norm_ref import rope_interleaved_ref as rope_interleaved
from kernels.norm_ref import write_latents_ref as write_latents

__all__ = [
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
