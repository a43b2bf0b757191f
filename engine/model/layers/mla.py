"""Multi-head latent attention layer (every layer_group_size-th layer, and the MTP layer).

Per token the cache holds [normed c_kv (kv_lora_rank) | roped k_pe (qk_rope_head_dim)].
Prefill expands kv_b_proj per head (k = [k_nope | k_pe], v); decode absorbs it:
q_latent = q_nope W_UK, o = (softmax-weighted c_kv) W_UV^T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engine.config import ModelConfig
from engine.model.batch import ForwardBatch
from kernels import api
from kernels.mla_ref import gather_context

Weights = dict[str, Tensor]


class MLAttention:
    def __init__(
        self, cfg: ModelConfig, w: Weights, prefix: str, cos_sin: Tensor, world: int = 1
    ) -> None:
        """With tensor parallelism this rank holds H/world heads (q_b, kv_b rows; dense
        columns) while every rank computes and caches the whole latent."""
        self.cfg = cfg
        self.heads = cfg.num_attention_heads // world
        self.nope, self.rope = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim
        self.rank, self.v_dim = cfg.kv_lora_rank, cfg.v_head_dim
        self.w_q_a = w[f"{prefix}.q_a_proj.weight"]
        self.w_q_a_norm = w[f"{prefix}.q_a_layernorm.weight"]
        self.w_q_b = w[f"{prefix}.q_b_proj.weight"]
        self.w_kv_a = w[f"{prefix}.kv_a_proj_with_mqa.weight"]
        self.w_kv_a_norm = w[f"{prefix}.kv_a_layernorm.weight"]
        self.w_kv_b = w[f"{prefix}.kv_b_proj.weight"]
        self.w_dense = w[f"{prefix}.dense.weight"]
        per_head = self.w_kv_b.view(self.heads, self.nope + self.v_dim, self.rank)
        self.w_uk = per_head[:, : self.nope].contiguous()  # [H, nope, rank]
        self.w_uv = per_head[:, self.nope :].contiguous()  # [H, v, rank]
        self.cos_sin = cos_sin
        self.scale = cfg.mla_softmax_scale()

    def project(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q_nope [T, H, nope], roped q_pe [T, H, rope], latent [T, rank + rope]."""
        eps = self.cfg.rms_norm_eps
        q = F.linear(api.rms_norm(F.linear(x, self.w_q_a), self.w_q_a_norm, eps), self.w_q_b)
        q = q.view(x.shape[0], self.heads, self.nope + self.rope)
        q_nope, q_pe = q[..., : self.nope], q[..., self.nope :]
        kv = F.linear(x, self.w_kv_a)
        c_kv = api.rms_norm(kv[:, : self.rank], self.w_kv_a_norm, eps)
        k_pe = api.rope_interleaved(kv[:, None, self.rank :], positions, self.cos_sin)[:, 0]
        q_pe = api.rope_interleaved(q_pe, positions, self.cos_sin)
        return q_nope, q_pe, torch.cat([c_kv, k_pe], dim=-1)

    def expand(self, latent: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head k [T, H, nope + rope] and v [T, H, v] from cached latents [T, rank + rope]."""
        kv = F.linear(latent[:, : self.rank], self.w_kv_b).view(
            -1, self.heads, self.nope + self.v_dim
        )
        k_pe = latent[:, None, self.rank :].expand(-1, self.heads, self.rope)
        return torch.cat([kv[..., : self.nope], k_pe], dim=-1), kv[..., self.nope :]

    def output(self, o: Tensor) -> Tensor:
        return F.linear(o.reshape(o.shape[0], self.heads * self.v_dim), self.w_dense)

    def forward_full(self, x: Tensor, positions: Tensor) -> Tensor:
        """One whole sequence, plain causal softmax attention (the reference)."""
        q_nope, q_pe, latent = self.project(x, positions)
        k, v = self.expand(latent)
        q = torch.cat([q_nope, q_pe], dim=-1).float().transpose(0, 1)
        logits = torch.matmul(q, k.float().transpose(0, 1).transpose(1, 2)) * self.scale
        n = x.shape[0]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
        o = torch.matmul(probs, v.float().transpose(0, 1)).transpose(0, 1)
        return self.output(o.to(x.dtype))

    def forward_cached(self, x: Tensor, batch: ForwardBatch, kv_pages: Tensor) -> Tensor:
        """Write the new tokens' latents into the pages, then attend over the whole context."""
        q_nope, q_pe, latent = self.project(x, batch.positions)
        api.write_latents(kv_pages, latent, batch.slot_mapping)
        if batch.is_decode:
            return self._decode(q_nope, q_pe, batch, kv_pages)
        return self._extend(q_nope, q_pe, batch, kv_pages)

    def _decode(self, q_nope: Tensor, q_pe: Tensor, batch: ForwardBatch, pages: Tensor) -> Tensor:
        q_latent = torch.einsum("bhn,hnr->bhr", q_nope, self.w_uk)
        o_latent = api.mla_decode(
            q_latent, q_pe, pages, batch.block_tables, batch.context_lens, self.scale
        )
        o = torch.einsum("bhr,hvr->bhv", o_latent, self.w_uv)
        return self.output(o)

    def _extend(self, q_nope: Tensor, q_pe: Tensor, batch: ForwardBatch, pages: Tensor) -> Tensor:
        lens = batch.context_lens.tolist()
        context = torch.cat(
            [gather_context(pages, batch.block_tables[b], n) for b, n in enumerate(lens)]
        )
        k, v = self.expand(context.to(q_nope.dtype))
        cu_kv = torch.zeros(len(lens) + 1, dtype=torch.int64, device=q_nope.device)
        cu_kv[1:] = torch.tensor(lens, device=q_nope.device).cumsum(0)
        q = torch.cat([q_nope, q_pe], dim=-1)
        o = api.mla_extend(q, k, v, batch.cu_seqlens, cu_kv, self.scale)
        return self.output(o)
