"""Every tensor a Ling-2.6 checkpoint must hold, with its [out, in] shape, derived from config."""

from __future__ import annotations

from engine.config import ModelConfig

Shapes = dict[str, tuple[int, ...]]


def _lightning(cfg: ModelConfig, p: str) -> Shapes:
    hd = cfg.num_attention_heads * cfg.head_dim
    return {
        f"{p}.attention.query_key_value.weight": (3 * hd, cfg.hidden_size),
        f"{p}.attention.query_layernorm.weight": (cfg.head_dim,),
        f"{p}.attention.key_layernorm.weight": (cfg.head_dim,),
        f"{p}.attention.g_proj.weight": (hd, cfg.hidden_size),
        f"{p}.attention.g_norm.weight": (hd,),
        f"{p}.attention.dense.weight": (cfg.hidden_size, hd),
    }


def _mla(cfg: ModelConfig, p: str) -> Shapes:
    h = cfg.num_attention_heads
    return {
        f"{p}.attention.q_a_proj.weight": (cfg.q_lora_rank, cfg.hidden_size),
        f"{p}.attention.q_a_layernorm.weight": (cfg.q_lora_rank,),
        f"{p}.attention.q_b_proj.weight": (h * cfg.qk_head_dim, cfg.q_lora_rank),
        f"{p}.attention.kv_a_proj_with_mqa.weight": (cfg.latent_dim, cfg.hidden_size),
        f"{p}.attention.kv_a_layernorm.weight": (cfg.kv_lora_rank,),
        f"{p}.attention.kv_b_proj.weight": (
            h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
            cfg.kv_lora_rank,
        ),
        f"{p}.attention.dense.weight": (cfg.hidden_size, h * cfg.v_head_dim),
    }


def _swiglu(p: str, hidden: int, inter: int) -> Shapes:
    return {
        f"{p}.gate_proj.weight": (inter, hidden),
        f"{p}.up_proj.weight": (inter, hidden),
        f"{p}.down_proj.weight": (hidden, inter),
    }


def _moe(cfg: ModelConfig, p: str) -> Shapes:
    shapes: Shapes = {
        f"{p}.mlp.gate.weight": (cfg.num_experts, cfg.hidden_size),
        f"{p}.mlp.gate.expert_bias": (cfg.num_experts,),
    }
    for e in range(cfg.num_experts):
        shapes |= _swiglu(f"{p}.mlp.experts.{e}", cfg.hidden_size, cfg.moe_intermediate_size)
    if cfg.num_shared_experts:
        shapes |= _swiglu(
            f"{p}.mlp.shared_experts", cfg.hidden_size, cfg.shared_expert_intermediate_size
        )
    return shapes


def layer_tensor_shapes(cfg: ModelConfig, i: int) -> Shapes:
    p = f"model.layers.{i}"
    shapes: Shapes = {
        f"{p}.input_layernorm.weight": (cfg.hidden_size,),
        f"{p}.post_attention_layernorm.weight": (cfg.hidden_size,),
    }
    shapes |= _mla(cfg, p) if cfg.is_mla_layer(i) else _lightning(cfg, p)
    if cfg.is_moe_layer(i):
        shapes |= _moe(cfg, p)
    else:
        shapes |= _swiglu(f"{p}.mlp", cfg.hidden_size, cfg.intermediate_size)
    return shapes


def mtp_tensor_shapes(cfg: ModelConfig, i: int) -> Shapes:
    p = f"model.layers.{i}"
    shapes = layer_tensor_shapes(cfg, i)
    shapes |= {
        f"{p}.enorm.weight": (cfg.hidden_size,),
        f"{p}.hnorm.weight": (cfg.hidden_size,),
        f"{p}.final_layernorm.weight": (cfg.hidden_size,),
        f"{p}.eh_proj.weight": (cfg.hidden_size, 2 * cfg.hidden_size),
    }
    return shapes


def expected_tensor_shapes(cfg: ModelConfig, include_mtp: bool = True) -> Shapes:
    shapes: Shapes = {
        "model.word_embeddings.weight": (cfg.vocab_size, cfg.hidden_size),
        "model.norm.weight": (cfg.hidden_size,),
        "lm_head.weight": (cfg.vocab_size, cfg.hidden_size),
    }
    for i in range(cfg.num_hidden_layers):
        shapes |= layer_tensor_shapes(cfg, i)
    if include_mtp:
        for j in range(cfg.num_nextn_predict_layers):
            shapes |= mtp_tensor_shapes(cfg, cfg.num_hidden_layers + j)
    return shapes


def alias_name(name: str) -> str:
    """Map alternative checkpoint spellings onto the canonical names above."""
    return name.replace(".mlp.gate.e_score_correction_bias", ".mlp.gate.expert_bias")


def is_ignored(name: str) -> bool:
    """Tensors present in some checkpoints that the engine derives instead of loading."""
    return name.endswith((".slope", ".attention.slope")) or "rotary_emb.inv_freq" in name
