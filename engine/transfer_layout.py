"""What a prefill-to-decode cache transfer holds, named the same on both sides.

Per MLA layer i: `latent.{i}` [prompt tokens, kv_lora_rank + qk_rope_head_dim] in the run dtype
(written into the decode worker's pages). Per Lightning layer i: `state.{i}` [H, D, D] fp32 (into
its state slot). And `hidden` [hidden_size]: the final-normed hidden state of the last prompt
token, from which the decode worker computes the first token's logits, so that every token of a
request, the first included, is sampled by one Sampler on the decode worker.
"""

from __future__ import annotations

import torch

from engine.config import ModelConfig
from engine.transfer.base import ExpectedTensor

HIDDEN = "hidden"


def latent_name(layer: int) -> str:
    return f"latent.{layer}"


def state_name(layer: int) -> str:
    return f"state.{layer}"


def layer_tensor_name(cfg: ModelConfig, layer: int) -> str:
    return latent_name(layer) if cfg.is_mla_layer(layer) else state_name(layer)


def expected_tensors(cfg: ModelConfig, num_tokens: int, dtype: torch.dtype) -> list[ExpectedTensor]:
    H, D = cfg.num_attention_heads, cfg.head_dim
    tensors = [
        ExpectedTensor(latent_name(i), (num_tokens, cfg.latent_dim), dtype)
        if cfg.is_mla_layer(i)
        else ExpectedTensor(state_name(i), (H, D, D), torch.float32)
        for i in range(cfg.num_hidden_layers)
    ]
    return [*tensors, ExpectedTensor(HIDDEN, (cfg.hidden_size,), dtype)]
