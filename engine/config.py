"""Ling-2.6 (`bailing_hybrid`) model configuration, read from a checkpoint's config.json.

Every field the engine uses is read here; a missing required field or an unsupported value is
a `ConfigError` naming the field. Layer kinds and decay rates are derived, never loaded.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("bailing_hybrid",)
SUPPORTED_ARCHITECTURES = ("BailingMoeV2_5ForCausalLM",)
SUPPORTED_ROPE_SCALING = ("yarn",)


class ConfigError(ValueError):
    """config.json is missing, malformed, or describes something the engine does not run."""


@dataclass(frozen=True)
class RopeScaling:
    kind: str
    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    layer_group_size: int
    first_k_dense_replace: int
    num_attention_heads: int
    head_dim: int
    partial_rotary_factor: float
    group_norm_size: int
    rope_theta: float
    max_position_embeddings: int
    rms_norm_eps: float
    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    num_experts: int
    num_experts_per_tok: int
    n_group: int
    topk_group: int
    moe_intermediate_size: int
    num_shared_experts: int
    shared_expert_intermediate_size: int
    norm_topk_prob: bool
    routed_scaling_factor: float
    num_nextn_predict_layers: int
    rope_scaling: RopeScaling | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # Derived layout -------------------------------------------------------------------------
    def is_mla_layer(self, layer_idx: int) -> bool:
        """Every layer_group_size-th layer; also the trailing layers past the last full group
        (as SGLang, vLLM and mlx-lm read the checkpoints) and the MTP layers."""
        group = self.layer_group_size
        return (layer_idx + 1) % group == 0 or layer_idx >= self.num_hidden_layers // group * group

    def is_moe_layer(self, layer_idx: int) -> bool:
        return layer_idx >= self.first_k_dense_replace

    @property
    def mla_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if self.is_mla_layer(i))

    @property
    def linear_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.num_hidden_layers) if not self.is_mla_layer(i))

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def latent_dim(self) -> int:
        """Values cached per token per MLA layer: normed c_kv + roped k_pe."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def has_mtp(self) -> bool:
        return self.num_nextn_predict_layers > 0

    def decay_slopes(self) -> list[float]:
        """ALiBi-style per-head slopes: 2^(-8 (h + 1) / H) for H a power of two."""
        return alibi_slopes(self.num_attention_heads)

    def lightning_log_decay(self, layer_idx: int) -> list[float]:
        """g_h = -slope_h * (1 - layer_idx / (L - 1) + 1e-5) (the `layer_idx` rule, not `- 1`)."""
        denom = max(1, self.num_hidden_layers - 1)
        factor = 1.0 - layer_idx / denom + 1e-5
        return [-s * factor for s in self.decay_slopes()]

    def mla_softmax_scale(self) -> float:
        scale = self.qk_head_dim**-0.5
        if self.rope_scaling is not None:
            m = yarn_mscale(self.rope_scaling.factor, self.rope_scaling.mscale_all_dim)
            scale *= m * m
        return scale


def alibi_slopes(n_heads: int) -> list[float]:
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_two(n_heads)
    p = 2 ** math.floor(math.log2(n_heads))
    return power_of_two(p) + power_of_two(2 * p)[0::2][: n_heads - p]


def yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1.0 else 0.1 * mscale * math.log(factor) + 1.0


def load_config(model_dir: str | Path) -> ModelConfig:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: config.json not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from exc
    from engine.config_parse import parse_config

    return parse_config(raw, source=str(path))
